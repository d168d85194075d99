#!/usr/bin/env bash
# Runs chorus's whole test suite, from a fresh machine: installs the pinned tools (broker, ONNX Runtime, sample audio,
# Python packages, the stand-in model), starts the broker, then runs every unit, integration and doc test.
# Idempotent; extra arguments go to `cargo test` (e.g. scripts/test.sh r2_ to run one issue's tests).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/tools.sh" all
"$ROOT/scripts/broker.sh" start
cd "$ROOT"
exec cargo test --workspace --locked "$@"
