#!/usr/bin/env bash
# The GPU program, one device call per stage:
#   bash scripts/gpu_check.sh verify       # CUDA tests, benchmark, real epochs, fast vs fp32, AutoAttack time
#   bash scripts/gpu_check.sh reproduce    # scripts/reproduce.py --protocol short on the CIFAR-10 JPEG copy
#   bash scripts/gpu_check.sh --dry-run verify|reproduce   # the same on the CPU at tiny sizes
#
# Each stage ends by its deadline (STAGE_SECONDS, default 540 s, under the device tool's 600 s per
# call): every step gets at most what is left, and a step cut short is recorded as such. Results
# go to $OUT (default runs/gpu_check/out; GPU_CHECK_RUNS moves runs/gpu_check) as at most 3 files, rewritten after every step so a
# call cut short keeps what it finished: gpu_check_<stage>.tar.gz (logs, JSON, tables, figures;
# no checkpoints), summary.md and log.txt.
#
# Prepare once on the development machine (../shared/README.md), then carry .device/:
#   mkdir -p .device && echo /.device/ >> .git/info/exclude
#   cp ../shared/data/cifar10-jpeg.tar.gz .device/
#   bash ../shared/tools/slim_pyautoattack.sh .device/site
# The device machine has torch, pytest and the rest, and `python3` (not `python`).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; fi
STAGE=${1:-}
case "$STAGE" in
    verify|reproduce) ;;
    *) echo "error: usage: bash scripts/gpu_check.sh [--dry-run] verify|reproduce" >&2; exit 2 ;;
esac
DEADLINE=$(( $(date +%s) + ${STAGE_SECONDS:-540} ))
RUNS=${GPU_CHECK_RUNS:-runs/gpu_check}/$STAGE
OUT=${OUT:-${GPU_CHECK_RUNS:-runs/gpu_check}/out}
PY=python3
[ -x .venv/bin/python ] && [ "$DRY" = 1 ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/.device/site:${PYTHONPATH:-}"
# verify starts clean; reproduce keeps its runs, so a second call resumes them.
[ "$STAGE" = verify ] && rm -rf "$RUNS"
mkdir -p "$RUNS" "$OUT"
# Only what this script writes: $OUT may be a folder of the user's.
rm -f "$RUNS"/*.txt "$RUNS"/summary-*.md "$OUT/gpu_check_$STAGE.tar.gz" "$OUT/summary.md" \
    "$OUT/log.txt"
LOG="$RUNS/log.txt"
exec > >(tee "$LOG") 2>&1

if [ "$DRY" = 1 ]; then
    # CPU, tiny: small-cnn on 8 px synthetic data, what the test suite uses.
    DEV=(--device cpu)
    DATA=(--dataset synthetic --model small-cnn --synthetic_num_classes 4
          --synthetic_close_groups 0,1 --synthetic_image_size 8
          --synthetic_n_train_per_class 24 --synthetic_n_test_per_class 10 --pgd_num_steps 2
          --batch_size 32)
    BENCH=(--device cpu --iters 1 --warmup 1)
    EPOCH=("$PY" train.py "${DATA[@]}" "${DEV[@]}" --epochs 2 --dafa_warmup 1
           --rob_fairness_algorithm dafa --test_pgd_num_steps 2)
    SHORT=("$PY" train.py "${DATA[@]}" "${DEV[@]}" --epochs 2 --lr_schedule trades --eval_freq 1)
    FAST=()  # the CPU has no fast path: both runs are fp32 (the plumbing is what is checked)
    FP32=(--amp none)
    # The steps' plumbing, not AutoAttack's (the tests check that): its first attack only, and
    # PGD alone in the reproduce stage.
    AA=(--n_eval 8 --aa_attacks apgd-ce)
    # GPU_CHECK_DRY_EPOCHS: how long the dry reproduce trains (a test makes it outlast its stage).
    REPRO=(--protocol tiny --epochs "${GPU_CHECK_DRY_EPOCHS:-2}" --dafa_warmup 1 --n_eval 20 --attack pgd --seeds 1
           --device cpu --synthetic_n_train_per_class 24 --synthetic_n_test_per_class 4
           --pgd_num_steps 2 --batch_size 32)
else
    C10=/tmp/c10
    [ -d "$C10/train" ] || { mkdir -p "$C10" && tar -xzf .device/cifar10-jpeg.tar.gz -C "$C10"; }
    DEV=()
    BENCH=()
    # The launcher end to end on the JPEG copy, on the fast path (strict fp32 would not fit the
    # step): epoch 1 records S, epoch 2 trains with DAFA, then the PGD-20 test evaluation (10,000
    # images). lr 0.001: bag_of_tricks at 2 epochs.
    EPOCH=(env PYTHON="$PY" bash scripts/trades_dafa.sh --dataset folder --data_dir "$C10"
           --num_workers 8 --epochs 2 --dafa_warmup 1 --fast)
    # --fast against the default (the paper's arithmetic: fp32, no TF32, eager): 10,000 images,
    # 6 epochs, same seed.
    SHORT=("$PY" train.py --dataset folder --data_dir "$C10" --n_train 10000 --epochs 6
           --lr_schedule trades --eval_freq 3)
    FAST=(--fast)
    FP32=(--no-fast)
    AA=(--n_eval 250)
    # --fast: the short protocol was sized for it (an fp32 run of it would not fit one call); its
    # numbers count only once verify has shown --fast within 1.5 points of fp32.
    REPRO=(--protocol short --dataset folder --data_dir "$C10" --paper_dataset cifar10
           --data_label "CIFAR-10 (JPEG copy)" --seeds 1,2 --num_workers 8 --n_autoattack 200
           --fast)
fi

declare -a STEPS=()
left() { echo $(( DEADLINE - $(date +%s) )); }

pack() {  # the 3 files of $OUT: archive (small files only), summary, log
    (cd "$RUNS" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \
        -o -name '*.txt' -o -name '*.md' -o -name '*.png' \) ! -name log.txt -print0 \
        | tar --null -czf - -T -) > "$OUT/gpu_check_$STAGE.tar.gz"
    {
        echo "# gpu_check $STAGE$([ "$DRY" = 1 ] && echo ' (dry run, CPU)') $(date -u +%FT%TZ)"
        echo
        cat "$RUNS/machine.txt" 2>/dev/null
        echo
        echo '| step | status | seconds | limit | estimate (s) |'
        echo '|---|---|---:|---:|---|'
        printf '%s\n' "${STEPS[@]}"
        for f in "$RUNS"/summary-*.md; do [ -f "$f" ] && { echo; cat "$f"; }; done
    } > "$OUT/summary.md"
    cp "$LOG" "$OUT/log.txt"
}

# step NAME SECONDS ESTIMATE COMMAND...: at most SECONDS and what is left of the stage. ESTIMATE
# (text) is the expected time on an H200, from ../shared/README.md's reference timings: printed
# beside the limit, so the first real run calibrates both.
step() {
    local name=$1 limit=$2 estimate=$3 start rc status
    shift 3
    (( limit > $(left) )) && limit=$(left)
    if (( limit < 10 )); then
        STEPS+=("| $name | skipped: stage deadline | 0 | $limit | $estimate |"); pack; return 1
    fi
    echo; echo "== $name ($(date +%T), limit $limit s, estimate $estimate s): $*"
    start=$(date +%s)
    # SIGINT first: python stops cleanly (reproduce.py stops its runs); SIGKILL 15 s later.
    timeout -s INT -k 15 "$limit" "$@" > "$RUNS/$name.txt" 2>&1
    rc=$?
    tail -n 30 "$RUNS/$name.txt"
    case $rc in 0) status=ok ;; 124) status="cut at $limit s" ;; *) status="failed (exit $rc)" ;; esac
    echo "== $name: $status after $(( $(date +%s) - start )) s"
    STEPS+=("| $name | $status | $(( $(date +%s) - start )) | $limit | $estimate |")
    pack
    return "$rc"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        || echo 'no GPU (nvidia-smi not found)'
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} > "$RUNS/machine.txt" 2>&1
cat "$RUNS/machine.txt"

# Estimates (s, H200), from ../shared/README.md: our iteration as a CUDA-graph bf16 prototype 12 s
# per epoch of 50,000 images (24 allowed: not yet measured with this code), TF32 eager 24-40 s;
# PGD-20 on 10,000 test images in strict fp32 16-25 s; a process's start (torch, CUDA, data)
# 10-15 s; two processes side by side on one GPU ~1.95x the throughput of one. Upper ends: verify
# 455, reproduce 420, under 540 s less 15%.
if [ "$STAGE" = verify ]; then
    # 8 tests, two of them train.py runs on CUDA (a start each, graph captures, short epochs).
    step cuda-tests 120 60-90 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
        tests/test_data.py -k 'cuda or loader'
    # ResNet-18, batch 128, TRADES K=10 (tiny on the dry run): steady-state ms per iteration.
    # 3 configurations x 55 iterations at 31-102 ms, cuDNN autotuning and a capture, one start.
    graph=()
    step bench 70 25-50 "$PY" bench.py "${BENCH[@]}" --json "$RUNS/bench.json" \
        --configs eager-fp32 $([ "$DRY" = 1 ] || echo eager-tf32) eager-bf16 \
        $([ "$DRY" = 1 ] || echo graph-bf16) || graph=(--no-cuda_graph)
    # 2 epochs of 50,000 at 12-24 s, PGD-20 on the test set, a start and the JPEG decode.
    step epochs 110 50-90 "${EPOCH[@]}" --model_dir "$RUNS/epochs" --overwrite "${graph[@]}"
    # The fast path's correctness check, both runs side by side on the GPU: 6 epochs of 10,000
    # images (fp32 eager, the longer: 29-48 s at TF32's speed; without TF32 not yet measured,
    # allowed up to 3x), PGD-20 at epochs 3 and 6 (32-50 s), a start. The halfway evaluation
    # keeps a number to compare if the step is cut.
    step short 180 90-150 bash scripts/side_by_side.sh \
        "${SHORT[@]}" "${DEV[@]}" --model_dir "$RUNS/short_fast" --overwrite "${FAST[@]}" "${graph[@]}" -- \
        "${SHORT[@]}" "${DEV[@]}" --model_dir "$RUNS/short_fp32" --overwrite "${FP32[@]}"
    # AutoAttack (standard, strict fp32) on AA_N images of the 2-epoch model, and a start.
    step autoattack 60 20-45 "$PY" eval.py --checkpoint "$RUNS/epochs/checkpoint-latest.pt" --attack aa \
        "${AA[@]}" --no_progress --out "$RUNS/eval" "${DEV[@]}"
    "$PY" scripts/gpu_summary.py verify "$RUNS" > "$RUNS/summary-verify.md" 2>&1
    # Last, with what is left: where the time goes (top kernels, GPU-busy ms per iteration).
    # One configuration in its own process: profiling CUDA graphs after other profiler sessions
    # in one process can crash in CUPTI's teardown (pytorch/pytorch#75504).
    step profile 45 15-30 "$PY" bench.py "${BENCH[@]}" --iters 5 \
        --configs "$([ "$DRY" = 1 ] && echo eager-fp32 || echo graph-bf16)" \
        --json "$RUNS/bench-profiled.json" --profile "$RUNS/profile.txt"
else
    # Training 2 x (40 + 19) epochs of 10,000 images at 2.4-4.8 s, two at a time (1.95x):
    # 145-290 s, and two waves of starts, 30-50 s; then each model's PGD-20 on 1,000 images and
    # AutoAttack on 200 with its start, 20-40 s, two at a time: 40-80 s.
    step reproduce $(( $(left) - 5 )) 215-420 "$PY" scripts/reproduce.py "${REPRO[@]}" \
        --methods trades,dafa --jobs 2 --out "$RUNS/short"
    [ -f "$RUNS/short/table.md" ] && cp "$RUNS/short/table.md" "$RUNS/summary-reproduce.md"
fi
pack
echo "== $STAGE done ($(date +%T)); $OUT: $(ls "$OUT" | tr '\n' ' ')"
