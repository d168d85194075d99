#!/usr/bin/env bash
# Runs chorus's whole test suite, from a fresh machine: installs the pinned tools (broker, ONNX Runtime, sample audio,
# Python packages, the stand-in model, Prometheus' promtool, Chromium, stunnel), starts an empty broker of the tests'
# own (port 9192, data in var/test, so the demo's broker and its data are left alone and no run inherits another's
# topics), then runs every unit, integration and doc test. Idempotent; extra arguments go to `cargo test` (e.g.
# scripts/test.sh r2_).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/tools.sh" all promtool chromium stunnel
export CHORUS_STATE=${CHORUS_TEST_STATE:-$ROOT/var/test}
export CHORUS_BROKER_PORT=${CHORUS_TEST_BROKER_PORT:-9192}
export CHORUS_BROKERS=127.0.0.1:$CHORUS_BROKER_PORT
CHORUS_QUIET=1 "$ROOT/scripts/broker.sh" fresh
cd "$ROOT"
exec cargo test --workspace --locked "$@"
