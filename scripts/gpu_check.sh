#!/usr/bin/env bash
# The GPU checks of the training, evaluation and speed issues, in one device call (the device
# tool allows 600 s per call). Not yet run on a GPU, so its duration there is unknown; the steps
# come in order of need, so a call cut short loses the least needed ones.
#
# Prepare once on the development machine (../shared/README.md), then carry .device/:
#   mkdir -p .device && cp ../shared/data/cifar10-jpeg.tar.gz .device/
#   bash ../shared/tools/slim_pyautoattack.sh .device/site
#   python -m pip install -q --target .device/site pytest exceptiongroup tomli   # no pytest there
#
# Each check runs under its own time limit, and a failed check does not stop the next ones.
# If the CUDA-graph benchmark fails, the training checks fall back to --no-cuda_graph. After
# every check the small results (text, JSON, logs, figures; no checkpoints) are copied to $OUT
# when it is set (the device tool's return folder), so a run cut short keeps what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/gpu_check
DATA=/tmp/c10
export PYTHONPATH="$PWD/.device/site:${PYTHONPATH:-}"
rm -rf "$RUNS" && mkdir -p "$RUNS" "$DATA"
exec > >(tee "$RUNS/gpu_check.log") 2>&1
failed=()

save() {
    [ -n "${OUT:-}" ] || return 0
    (cd "$RUNS" && find . -type f \( -name "*.txt" -o -name "*.json" -o -name "*.jsonl" \
        -o -name "*.log" -o -name "*.png" -o -name "*.md" \) -print0 | xargs -0 -r cp --parents -t "$OUT")
}

check() {  # check NAME SECONDS COMMAND...: output to $RUNS/NAME.txt, its tail shown
    local name=$1 limit=$2 start rc
    shift 2
    echo; echo "== $name ($(date +%T), limit $limit s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$RUNS/$name.txt" 2>&1
    rc=$?
    tail -n 25 "$RUNS/$name.txt"
    echo "== $name: exit $rc after $(( $(date +%s) - start )) s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
    save
    return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RUNS/gpu.txt"
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$RUNS/gpu.txt"
[ -d "$DATA/train" ] || tar -xzf .device/cifar10-jpeg.tar.gz -C "$DATA"

check 0-cuda-tests 150 python -m pytest -q -rs tests/test_cuda.py tests/test_data.py -k 'cuda or loader'

# ResNet-18, batch 128, TRADES K=10: steady-state ms per iteration, eager and graph apart so a
# failing capture cannot hide the eager numbers.
check 1-bench-eager 120 python bench.py --configs eager-fp32 eager-bf16 --json "$RUNS/bench-eager.json"
graph=()
check 1-bench-graph 120 python bench.py --configs graph-fp32 graph-bf16 --json "$RUNS/bench-graph.json" \
    || graph=(--no-cuda_graph)

# The launcher end to end on the JPEG copy: epoch 1 warm-up (records S), epoch 2 DAFA, then
# the PGD-20 test evaluation. Its lr is 0.001 throughout: bag_of_tricks decays at epochs-10.
check 2-trades-dafa-2-epochs 180 bash scripts/trades_dafa.sh --dataset folder --data_dir "$DATA" \
    --num_workers 8 --epochs 2 --dafa_warmup 1 --eval_freq 2 --model_dir "$RUNS/trades_dafa" \
    --overwrite "${graph[@]}"

# The speed path against plain fp32 eager: same seed, 10 epochs on 10,000 images, lr 0.1.
short=(python train.py --dataset folder --data_dir "$DATA" --n_train 10000 --epochs 10
       --lr_schedule trades --eval_freq 10 --overwrite)
check 3-short-fast 150 "${short[@]}" --model_dir "$RUNS/short_fast" "${graph[@]}"
check 3-short-fp32 240 "${short[@]}" --model_dir "$RUNS/short_fp32" --amp none --no-cuda_graph \
    --no-channels_last

# AutoAttack (standard) and PGD-20 on 1,000 class-stratified test images, timed per attack.
check 4-eval-all 180 python eval.py --checkpoint "$RUNS/trades_dafa/checkpoint-latest.pt" \
    --attack all --n_eval 1000 --out "$RUNS/eval"

# Last, as the least needed: where the time goes (top kernels, GPU-busy ms per iteration).
check 5-profile 120 python bench.py --iters 5 --json "$RUNS/bench-profiled.json" \
    --profile "$RUNS/profile.txt"

echo
echo "== done ($(date +%T)); failed: ${failed[*]:-none}"
save
