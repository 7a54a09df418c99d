# Sourced by the training launchers: the paper's settings per dataset.
#   DATASET=cifar10 (default) | cifar100 | stl10; extra args pass through.
#   PYTHON: the interpreter; default the project's .venv/bin/python when it exists, else python3.
#   NPROC=N: N processes on this node through torchrun (e.g. one per GPU); TORCHRUN_ARGS: more
#   torchrun flags, e.g. "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint HOST:29500".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATASET="${DATASET:-cifar10}"
if [ -n "${PYTHON:-}" ]; then PYTHON_BIN="$PYTHON"
elif [ -x .venv/bin/python ]; then PYTHON_BIN=.venv/bin/python
else PYTHON_BIN=python3
fi
case "$DATASET" in
    cifar10) LAMBDA=1.0 ;;
    cifar100|stl10) LAMBDA=1.5 ;;
    *) echo "DATASET must be cifar10, cifar100 or stl10 (got '$DATASET')" >&2; exit 2 ;;
esac
# ResNet-18, 110 epochs, batch 128, lr 0.1 (x0.1 at 100, x0.01 at 105), eps 8/255, 10 steps of 2/255.
train() {  # train LOSS ALGORITHM NAME [extra args]
    local loss=$1 algo=$2 name=$3; shift 3
    local launch=("$PYTHON_BIN")
    if [ -n "${NPROC:-}" ]; then
        # shellcheck disable=SC2206  # TORCHRUN_ARGS is a list of flags
        launch+=(-m torch.distributed.run --nproc_per_node "$NPROC" ${TORCHRUN_ARGS:-})
        [ -n "${TORCHRUN_ARGS:-}" ] || launch+=(--standalone)
    fi
    exec "${launch[@]}" train.py --dataset "$DATASET" --model resnet --loss "$loss" \
        --rob_fairness_algorithm "$algo" --dafa_warmup 70 --dafa_lambda "$LAMBDA" \
        --epochs 110 --batch_size 128 --lr 0.1 --lr_schedule bag_of_tricks \
        --epsilon 0.031 --pgd_num_steps 10 --pgd_step_size 0.007 --beta 6.0 \
        --model_dir "runs/${DATASET}_${name}" "$@"
}
