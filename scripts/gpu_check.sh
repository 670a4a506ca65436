#!/usr/bin/env bash
# The GPU check of docs/reproducing.md, for a machine with one CUDA GPU and PyTorch, transformers,
# peft, accelerate and safetensors installed (no model download: random-init models). About 3-5
# minutes on one H100/H200. Writes runs/gpu-check/gpu_check.json and prints the table for
# docs/benchmarks.md. Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
python3 -m memvp.cli gpu-check --output-dir "${1:-runs/gpu-check}" --device cuda --size 1b --steps 100
