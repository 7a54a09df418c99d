#!/usr/bin/env bash
# The GPU checks of the training, evaluation and speed issues, in one device call (~6-8 min on
# an H100/H200; the tool allows 10). Runs go to runs/gpu_check; the small results (text, JSON,
# logs, figures; no checkpoints) are copied to $OUT when it is set (the device tool's return
# folder).
# Needs what ../shared/README.md describes, carried as .device/:
#   .device/cifar10-jpeg.tar.gz   and   .device/site/pyautoattack   (slim_pyautoattack.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/gpu_check
DATA=/tmp/c10
export PYTHONPATH="$PWD/.device/site:${PYTHONPATH:-}"
mkdir -p "$RUNS" "$DATA"
exec > >(tee "$RUNS/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RUNS/gpu.txt"
python -c 'import torch; print("torch", torch.__version__)' | tee -a "$RUNS/gpu.txt"
[ -d "$DATA/train" ] || tar -xzf .device/cifar10-jpeg.tar.gz -C "$DATA"

step() { echo; echo "== $1 ($(date +%T))"; }

step "1. benchmark: steady-state training iteration, ResNet-18, batch 128, TRADES K=10"
python bench.py --json "$RUNS/bench.json" | tee "$RUNS/bench.txt"

step "2. scripts/trades_dafa.sh on the CIFAR-10 JPEG copy: epoch 1 (warm-up, records S), epoch 2 (DAFA)"
start=$(date +%s)
bash scripts/trades_dafa.sh --dataset folder --data_dir "$DATA" --num_workers 8 \
    --epochs 2 --dafa_warmup 1 --eval_freq 2 --model_dir "$RUNS/trades_dafa" --overwrite \
    2>&1 | { grep -v '^epoch .*it/s' || true; } | tail -n 20
echo "wall time of the two epochs with load, evaluation and saving: $(( $(date +%s) - start )) s"

step "3. fp32 eager vs bf16 + CUDA graph: 10 epochs, n_train 10000, same seed"
for mode in fast plain; do
    flags=()
    [ "$mode" = plain ] && flags=(--amp none --no-cuda_graph --no-channels_last)
    python train.py --dataset folder --data_dir "$DATA" --n_train 10000 --epochs 10 \
        --lr_schedule trades --eval_freq 10 --model_dir "$RUNS/short_$mode" --overwrite \
        "${flags[@]}" 2>&1 | { grep -E 'test:|lr ' || true; } | tail -n 3
done

step "4. eval.py --attack all --n_eval 1000 on the 2-epoch DAFA checkpoint"
python eval.py --checkpoint "$RUNS/trades_dafa/checkpoint-latest.pt" --attack all --n_eval 1000 \
    --out "$RUNS/eval" 2>&1 | tail -n 40
step "done"
if [ -n "${OUT:-}" ]; then
    (cd "$RUNS" && find . -type f \( -name "*.txt" -o -name "*.json" -o -name "*.jsonl" -o -name "*.log" -o -name "*.png" \) -print0 | xargs -0 cp --parents -t "$OUT")
fi
