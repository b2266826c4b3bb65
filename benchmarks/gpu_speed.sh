#!/usr/bin/env bash
# Real-size training and evaluation speed on one GPU, in one run: sized for at most 8 minutes on an H200
# (about 5 for Qwen2-VL-2B; Qwen3-VL-2B and Qwen2.5-VL-3B follow only while the run has time left).
#   1. benchmarks/train_throughput.py --family qwen2_vl: (a) the cookbook's QLoRA recipe, (b) ours, and (b)+liger
#      where liger_kernel imports, 2 warm-up + 10 timed steps of 4 real-size images each: samples/s, tokens/s,
#      peak GPU memory, MFU and the ratios to (a); the token shares and FLOPs per sample first.
#   2. benchmarks/eval_throughput.py --real-size --family qwen2_vl: 16 images, batched 8 per call against one by one.
# The goals it checks (docs/speed.md): on one H200, (b) at >= 2x (a)'s samples/s with <= 0.6x its peak
# memory on Qwen2-VL-2B; batched evaluation >= 5x one-by-one.
#
# On a CUDA machine with the project installed (make test sets up the pinned stack in .venv/; or
# pip install -r requirements.txt), run it as it is: benchmarks/gpu_speed.sh
# On a CUDA machine without network access, fill .whl/ on a machine with PyPI access:
#   .ci/gpu_wheels     # fills .whl/: transformers, trl, peft, bitsandbytes (its CUDA 13.0 library only), datasets,
#                      # pycocotools, jupytext and the notebook stack, at the versions of this repository's .venv/
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl liger-kernel==0.8.5
# then copy .whl/ (with .whl/site/, the trimmed bitsandbytes) into the root of the checkout on the CUDA machine and
# run the script there; when .whl/ is present it installs from it. torch, torchvision, triton, accelerate, tokenizers,
# safetensors, huggingface-hub, pyarrow and pandas must come from that machine's python3. flash-attn is not in .whl/;
# without it (b) trains on length-grouped padded batches instead of packed ones.
# Figures and the log land under $OUT (default outputs/gpu_speed/): speed.log and one JSON per benchmark and family.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu_speed}"  # the log and the figures land here
mkdir -p "$OUT"
LOG="$OUT/speed.log"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  [ -d .whl/site ] && cp -r .whl/site/. /tmp/site/  # packages shipped unpacked (bitsandbytes, trimmed)
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHON=python3  # the machine's own Python, with the wheels from .whl/ on its path
if [ ! -d .whl ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi  # a machine set up with make test
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LATER_FAMILIES_BEFORE_S=270  # start another family's training only this early in the run (each takes about 2 minutes)

"$PYTHON" - <<'PY' 2>&1 | tee "$LOG"
import importlib.metadata as metadata
import importlib.util
import torch
from transformers.utils import is_flash_attn_2_available

names = ["torch", "torchvision", "transformers", "peft", "accelerate", "bitsandbytes", "triton", "liger-kernel"]
print({name: metadata.version(name) if importlib.util.find_spec(name.replace("-", "_")) else None for name in names})
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| flash-attn:", is_flash_attn_2_available())
PY
status=0
timeout 240 "$PYTHON" benchmarks/train_throughput.py --family qwen2_vl --json "$OUT/train_qwen2_vl.json" 2>&1 | tee -a "$LOG"
status=$(( status | PIPESTATUS[0] ))
timeout 150 "$PYTHON" benchmarks/eval_throughput.py --real-size --family qwen2_vl --images 16 --batch-size 8 --max-new-tokens 128 \
  --json "$OUT/eval_qwen2_vl.json" 2>&1 | tee -a "$LOG"
status=$(( status | PIPESTATUS[0] ))
for family in qwen3_vl qwen2_5_vl; do
  if (( SECONDS < LATER_FAMILIES_BEFORE_S )); then
    timeout 150 "$PYTHON" benchmarks/train_throughput.py --family "$family" --steps 6 --json "$OUT/train_$family.json" 2>&1 | tee -a "$LOG"
    status=$(( status | PIPESTATUS[0] ))
  else
    echo "skipped $family: $SECONDS s of the run used" | tee -a "$LOG"
  fi
done
exit "$status"
