#!/usr/bin/env bash
# Runs chorus on the embedded default, from a fresh machine: installs what it needs, starts the broker, produces the
# sample recording (as two sensors), runs the job until the topic is drained, and prints the archived segments that
# sound most like each window of the sample, and what to try next. Idempotent: a second run produces nothing and
# archives nothing new.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/tools.sh all
scripts/broker.sh start
cargo build --locked --quiet --bin chorus
chorus() { "${CARGO_TARGET_DIR:-$ROOT/target}/debug/chorus" "$@"; }
SAMPLE=$(scripts/tools.sh paths | sed -n 's/^SAMPLE_WAV=//p')
# The sample is produced once: sending the same recording again would be a repeated delivery, not new audio.
PRODUCED=${CHORUS_STATE:-$ROOT/var}/demo-produced
if [ ! -f "$PRODUCED" ]; then
  chorus -q produce --sensor pole-1 --start 2026-05-01T05:00:00Z --chunk-seconds 1.3 "$SAMPLE"
  chorus -q produce --sensor pole-2 --start 2026-05-01T05:00:02.5Z "$SAMPLE"
  touch "$PRODUCED"
fi
chorus -q run --until-idle 2
echo
echo "Segments nearest to each 5 s window of $(basename "$SAMPLE"):"
chorus -q query --audio "$SAMPLE" -k 5
echo
echo "Next: target/debug/chorus serve, then open http://127.0.0.1:9464/ to search, listen and label in a browser;"
echo "      target/debug/chorus archive --format csv; target/debug/chorus spectrogram --segment <id> -o call.png"
