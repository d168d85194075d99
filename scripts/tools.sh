#!/usr/bin/env bash
# Installs the pinned tools chorus needs into a git-ignored folder; every step is skipped when its result is present.
#
#   scripts/tools.sh [all|system|tansu|onnxruntime|sample|python|model|hnswlib|faiss|promtool|chromium|stunnel|paths]...
#
# `all` is what the job needs; the tests also need `promtool` and `chromium`; `hnswlib` and `faiss` (the index benchmark's
# points of comparison) are installed on request.
#
# Where: $CHORUS_TOOLS (default: <repo>/.tools). CI may cache that folder; nothing in it is ever rebuilt when present.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${CHORUS_TOOLS:-$ROOT/.tools}

TANSU_VERSION=0.6.0
ORT_VERSION=1.32.0
OPENSOUNDSCAPE_VERSION=0.13.2
HNSWLIB_VERSION=0.8.0
FAISS_VERSION=1.15.1
PACKAGING_VERSION=25.0
SAMPLE_SHA256=90e70f9ceb33392a948c10465db50fbf4bf252ae412c2e9f18d0bf9a1e7f31a7
PY_REQUIREMENTS="$ROOT/scripts/requirements.txt"

say() { printf 'chorus-setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Verifies a file against a pinned checksum prefix or full digest; removes it and fails on mismatch.
verify() {
  local file=$1 want=$2 got
  got=$(sha256_of "$file")
  case "$got" in
    "$want"*) ;;
    *) rm -f "$file"; die "checksum mismatch for $file: got $got, want $want" ;;
  esac
}

# Prints a heartbeat while a long build runs, so a 20-minute step never looks hung.
with_heartbeat() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  local pid=$! start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null || break
    local done_crates
    done_crates=$(grep -c '^ *Compiling ' "$log" 2>/dev/null || true)
    say "  ... $(( (SECONDS - start) / 60 )) min, ${done_crates} crates compiled (log: $log)"
  done
  wait "$pid"
}

# Debian packages the build needs: a C/C++ toolchain, zlib and OpenSSL headers for the vendored librdkafka, the
# openssl CLI, Python's venv.
ensure_system() {
  command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs) first"
  local missing=()
  command -v gcc >/dev/null || missing+=(gcc)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
  # TLS and SASL/SCRAM in librdkafka link the system's OpenSSL; the tests make their certificates with its CLI.
  [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  command -v openssl >/dev/null || missing+=(openssl)
  python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}"
}

# Installs Debian packages (with sudo unless root), or names them when there is no apt-get.
apt_install() {
  command -v apt-get >/dev/null || die "missing: $* (install them with your package manager)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "Installing system packages: $*."
  $sudo apt-get update -qq >&2 &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Prometheus' own promtool, with which the tests check the job's /metrics (Debian package prometheus; its server is
# not started).
ensure_promtool() {
  command -v promtool >/dev/null || apt_install prometheus
}

# stunnel, which the tests put in front of the bundled broker to serve TLS: tansu 0.6.0's own TLS cannot be started
# (its --cert and --key refuse each other), see README "Connecting to a production Kafka".
ensure_stunnel() {
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || apt_install stunnel4
}

# Chromium, in which the tests use the search page headless (Debian package chromium, driven by Playwright from the
# Python environment).
ensure_chromium() {
  [ -x /usr/bin/chromium ] || apt_install chromium
}

# With CHORUS_TOOLS elsewhere (a CI cache), <repo>/.tools points there so the paths in config/ keep working.
link_tools() {
  [ "$TOOLS" = "$ROOT/.tools" ] && return 0
  mkdir -p "$TOOLS"
  if [ -L "$ROOT/.tools" ] || [ ! -e "$ROOT/.tools" ]; then
    ln -sfn "$TOOLS" "$ROOT/.tools"
  else
    die "$ROOT/.tools exists and is not a link to CHORUS_TOOLS=$TOOLS; move it away"
  fi
}

tansu_bin() { echo "$TOOLS/tansu-$TANSU_VERSION/bin/tansu"; }

ensure_tansu() {
  local bin; bin=$(tansu_bin)
  [ -x "$bin" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build the tansu broker"
  mkdir -p "$TOOLS"
  local stage="$TOOLS/tansu-$TANSU_VERSION.partial" target="$TOOLS/tansu-build"
  rm -rf "$stage"
  say "Building the Kafka-protocol broker tansu $TANSU_VERSION (once; 15-35 min on 2 cores)."
  if ! with_heartbeat "$TOOLS/tansu-build.log" \
      cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
        --root "$stage" --target-dir "$target"; then
    tail -n 30 "$TOOLS/tansu-build.log" >&2
    die "building tansu failed (full log: $TOOLS/tansu-build.log)"
  fi
  rm -rf "$target" "$TOOLS/tansu-$TANSU_VERSION"
  mv "$stage" "$TOOLS/tansu-$TANSU_VERSION"
  say "tansu installed at $bin (build folder removed)."
}

ort_lib() { echo "$TOOLS/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION"; }

ensure_onnxruntime() {
  local lib; lib=$(ort_lib)
  [ -f "$lib" ] && return 0
  local dir="$TOOLS/onnxruntime-$ORT_VERSION" dl="$TOOLS/downloads"
  mkdir -p "$dl" "$dir"
  say "Fetching ONNX Runtime $ORT_VERSION (PyPI wheel)."
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.11 "onnxruntime==$ORT_VERSION" -d "$dl" >&2
  local wheel; wheel=$(ls "$dl"/onnxruntime-"$ORT_VERSION"-*.whl | head -n1)
  verify "$wheel" "$(pinned_sha onnxruntime)"
  python3 - "$wheel" "$dir" "$ORT_VERSION" <<'PY'
import sys, zipfile, shutil, os
wheel, out, ver = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(wheel) as z, z.open(name) as src, open(os.path.join(out, os.path.basename(name)) + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$lib.part" "$lib"
}

sample_wav() { echo "$TOOLS/sample/birds_10s.wav"; }

ensure_sample() {
  local wav; wav=$(sample_wav)
  [ -f "$wav" ] && return 0
  local dl="$TOOLS/downloads"
  mkdir -p "$dl" "$(dirname "$wav")"
  say "Fetching the sample bird recording (opensoundscape $OPENSOUNDSCAPE_VERSION wheel, MIT)."
  python3 -m pip download -q --no-deps --only-binary=:all: "opensoundscape==$OPENSOUNDSCAPE_VERSION" -d "$dl" >&2
  local wheel; wheel=$(ls "$dl"/opensoundscape-"$OPENSOUNDSCAPE_VERSION"-*.whl | head -n1)
  verify "$wheel" "$(pinned_sha opensoundscape)"
  python3 - "$wheel" "$wav" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("sample_data/birds_10s.wav"))
    with z.open(name) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  verify "$wav.part" "$SAMPLE_SHA256"
  mv "$wav.part" "$wav"
}

# Full sha256 of the pinned wheels, recorded in scripts/pins.txt.
pinned_sha() { awk -v k="$1" '$1 == k { print $2 }' "$ROOT/scripts/pins.txt"; }

venv_python() { echo "$TOOLS/venv/bin/python"; }

ensure_python() {
  local py; py=$(venv_python)
  local stamp="$TOOLS/venv/.requirements.sha256" want
  want=$(sha256_of "$PY_REQUIREMENTS")
  [ -x "$py" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  say "Installing the pinned Python packages of scripts/requirements.txt into $TOOLS/venv."
  python3 -m venv "$TOOLS/venv"
  "$py" -m pip install -q --disable-pip-version-check --only-binary=:all: -r "$PY_REQUIREMENTS" >&2
  echo "$want" >"$stamp"
}

# hnswlib ships as source only: its pinned sdist is verified, then compiled (-O3 -march=native) into the venv.
ensure_hnswlib() {
  ensure_python
  local py; py=$(venv_python)
  "$py" -c "import hnswlib" 2>/dev/null && return 0
  say "Building hnswlib $HNSWLIB_VERSION from its pinned source into $TOOLS/venv (about a minute)."
  local dl="$TOOLS/downloads"
  mkdir -p "$dl"
  local sdist="$dl/hnswlib-$HNSWLIB_VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary hnswlib "hnswlib==$HNSWLIB_VERSION" \
      -d "$dl" >&2
  fi
  verify "$sdist" "$(pinned_sha hnswlib)"
  "$py" -m pip install -q --disable-pip-version-check --no-binary hnswlib "$sdist" >&2
}

# faiss (faiss-cpu, MIT) installs from its pinned, verified wheel, with the one package it needs beside numpy.
ensure_faiss() {
  ensure_python
  local py; py=$(venv_python)
  "$py" -c "import faiss" 2>/dev/null && return 0
  say "Installing faiss-cpu $FAISS_VERSION from its pinned wheel into $TOOLS/venv."
  local dl="$TOOLS/downloads"
  mkdir -p "$dl"
  local faiss="$dl/faiss_cpu-$FAISS_VERSION-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
  local packaging="$dl/packaging-$PACKAGING_VERSION-py3-none-any.whl"
  if [ ! -f "$faiss" ] || [ ! -f "$packaging" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      "faiss-cpu==$FAISS_VERSION" "packaging==$PACKAGING_VERSION" -d "$dl" >&2
  fi
  verify "$faiss" "$(pinned_sha faiss-cpu)"
  verify "$packaging" "$(pinned_sha packaging)"
  "$py" -m pip install -q --disable-pip-version-check --no-deps "$faiss" "$packaging" >&2
}

model_path() { echo "$TOOLS/models/chorus-standin-v1.onnx"; }

ensure_model() {
  local out; out=$(model_path)
  [ -f "$out" ] && return 0
  ensure_python
  mkdir -p "$(dirname "$out")"
  say "Generating the default embedding model."
  "$(venv_python)" "$ROOT/scripts/gen_model.py" --out "$out" >&2
}

main() {
  [ $# -eq 0 ] && set -- all
  for what in "$@"; do
    case "$what" in
      all) link_tools; ensure_system; ensure_onnxruntime; ensure_sample; ensure_python; ensure_model; ensure_tansu ;;
      system) ensure_system ;;
      tansu) ensure_tansu ;;
      onnxruntime) ensure_onnxruntime ;;
      sample) ensure_sample ;;
      python) ensure_python ;;
      model) ensure_model ;;
      hnswlib) ensure_hnswlib ;;
      faiss) ensure_faiss ;;
      promtool) ensure_promtool ;;
      chromium) ensure_chromium ;;
      stunnel) ensure_stunnel ;;
      paths)
        printf 'TANSU=%s\nORT_DYLIB=%s\nSAMPLE_WAV=%s\nPYTHON=%s\nMODEL=%s\n' \
          "$(tansu_bin)" "$(ort_lib)" "$(sample_wav)" "$(venv_python)" "$(model_path)" ;;
      *) die "unknown tool '$what' (expected all, system, tansu, onnxruntime, sample, python, model, hnswlib, faiss, promtool, chromium, stunnel, paths)" ;;
    esac
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
