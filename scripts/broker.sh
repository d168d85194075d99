#!/usr/bin/env bash
# Runs the local Kafka-protocol broker chorus uses: tansu with its sqlite storage engine, on 127.0.0.1.
#
#   scripts/broker.sh start [CONFIG]   start it (if it is not answering already), wait until it answers, and create the
#                                      topics named in CONFIG (default: config/balanced.toml)
#   scripts/broker.sh stop             stop it (SIGTERM, then SIGKILL after 10 s); its data stays
#   scripts/broker.sh fresh [CONFIG]   stop it, delete its data, start it empty (what the test suite does)
#   scripts/broker.sh status           exit 0 if it answers
#   scripts/broker.sh topics CONFIG    create CONFIG's topics on the running broker
#   scripts/broker.sh index DATABASE   give a tansu database the index its fetches need (see index_headers)
#
# State (database, log, pid) lives in $CHORUS_STATE/broker (default <repo>/var/broker). Port: $CHORUS_BROKER_PORT
# (default 9092). Never use Snappy compression with this broker, nor its memory:// engine (see README).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CHORUS_STATE:-$ROOT/var}/broker
PORT=${CHORUS_BROKER_PORT:-9092}
URL="tcp://127.0.0.1:$PORT"
TANSU=$("$ROOT/scripts/tools.sh" paths | sed -n 's/^TANSU=//p')

say() { [ -n "${CHORUS_QUIET:-}" ] || printf 'chorus-broker: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

answers() { [ -x "$TANSU" ] && timeout 5 "$TANSU" topic list --broker "$URL" >/dev/null 2>&1; }

pid_alive() { [ -f "$STATE/broker.pid" ] && kill -0 "$(cat "$STATE/broker.pid")" 2>/dev/null; }

# Prints "name partitions" for each topic in a chorus config, using Python's tomllib.
topics_of() {
  python3 - "$1" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    kafka = tomllib.load(f).get("kafka", {})
partitions = kafka.get("partitions", 4)
for key, default in (("audio_topic", "chorus.audio"), ("segments_topic", "chorus.segments"),
                     ("dead_letter_topic", "chorus.dead-letter")):
    print(kafka.get(key, default), partitions if key == "audio_topic" else 1)
PY
}

create_topics() {
  local config=$1 existing name partitions
  [ -f "$config" ] || die "config $config not found"
  existing=$("$TANSU" topic list --broker "$URL" 2>/dev/null || true)
  while read -r name partitions; do
    if ! grep -qF -- "\"name\":\"$name\"" <<<"$existing"; then
      "$TANSU" topic create "$name" --partitions "$partitions" --broker "$URL" >/dev/null 2>&1 \
        || answers_topic "$name" || die "could not create topic $name"
      say "created topic $name ($partitions partitions)"
    fi
  done < <(topics_of "$config")
}

answers_topic() { "$TANSU" topic list --broker "$URL" 2>/dev/null | grep -qF -- "\"name\":\"$1\""; }

start() {
  local config=${1:-$ROOT/config/balanced.toml}
  if ! answers; then
    "$ROOT/scripts/tools.sh" tansu
    if pid_alive; then
      say "broker process $(cat "$STATE/broker.pid") does not answer; restarting it"
      stop
    fi
    mkdir -p "$STATE"
    (
      cd "$STATE"
      # Its own empty working directory: tansu reads a .env there and resolves the database path against it.
      setsid nohup "$TANSU" broker --listener-url "$URL" --advertised-listener-url "$URL" \
        --storage-engine sqlite://tansu.db >>broker.log 2>&1 </dev/null &
      echo $! >broker.pid
    )
    local waited=0
    until answers; do
      pid_alive || { tail -n 20 "$STATE/broker.log" >&2; die "tansu exited during start-up (log: $STATE/broker.log)"; }
      sleep 0.2
      waited=$((waited + 1))
      [ "$waited" -lt 150 ] || die "tansu did not answer on $URL within 30 s (log: $STATE/broker.log)"
    done
    say "broker answering on $URL (pid $(cat "$STATE/broker.pid"), data in $STATE)"
    # tansu has created its tables by now, and nothing else has connected yet.
    index_headers "$STATE/tansu.db"
  fi
  create_topics "$config"
}

# tansu 0.6.0's sqlite schema has no index on its header table, and a fetch looks up each record's headers: every
# record fetched scans every header the broker ever stored, so a broker slows down with its age (on the soak bench
# it used 0.1 of a core after a minute and 0.4 after five, at a lower rate). An index on (topition, offset_id)
# makes that lookup a search. tansu creates its tables with "if not exists" and leaves other indexes alone.
index_headers() {
  python3 - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("create index if not exists chorus_header_record on header (topition, offset_id)")
db.commit()
PY
}

stop() {
  pid_alive || { rm -f "$STATE/broker.pid"; return 0; }
  local pid; pid=$(cat "$STATE/broker.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$STATE/broker.pid"
  say "broker stopped"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop ;;
  restart) stop; start "${2:-}" ;;
  fresh) stop; rm -f "$STATE"/tansu.db "$STATE"/tansu.db-shm "$STATE"/tansu.db-wal "$STATE"/broker.log; start "${2:-}" ;;
  status) answers ;;
  index) [ $# -ge 2 ] || die "usage: broker.sh index DATABASE"; index_headers "$2" ;;
  topics) [ $# -ge 2 ] || die "usage: broker.sh topics CONFIG"; answers || die "broker not answering on $URL"; create_topics "$2" ;;
  *) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
