"""The paper's settings, in one place (Lee et al., ICLR 2024, and the official DAFA code).

train.py, eval.py and bench.py read their defaults from here; the packages take every value as
an explicit argument. Epsilons and step sizes are L-inf radii for pixels in [0, 1].
"""

# Optimisation (ResNet-18 on CIFAR-10, as in the paper's Table 1).
EPOCHS = 110
BATCH_SIZE = 128
TEST_BATCH_SIZE = 200
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LR_SCHEDULE = 'bag_of_tricks'  # x0.1 from epoch EPOCHS-10, x0.01 from EPOCHS-5

# Training attack (TRADES / PGD-AT inner maximisation).
EPSILON = 0.031          # L-inf radius, ~8/255
PGD_NUM_STEPS = 10
PGD_STEP_SIZE = 0.007    # L-inf step, ~2/255
BETA = 6.0               # TRADES trade-off between clean CE and robust KL

# Radii above this need train.py --allow_large_epsilon: a larger one is most likely a /255 slip.
MAX_EPSILON = 16 / 255

# Test-time PGD-20 (the official evaluation).
TEST_EPSILON = 0.031
TEST_PGD_NUM_STEPS = 20
TEST_PGD_STEP_SIZE = 0.003
PGD_RULE = 'final'       # robust if correct at the last iterate (official eval_classwise)
TEST_CW_NUM_STEPS = 30   # CW-30: PGD on the CW margin loss, as robust-fairness papers report
L2_EPSILON = 0.5         # eval.py --norm L2: RobustBench's CIFAR L2 radius

# DAFA.
DAFA_WARMUP = 70         # tau: epochs of plain training; similarity recorded during epoch tau
DAFA_LAMBDA = {'cifar10': 1.0, 'cifar100': 1.5, 'stl10': 1.5}
DAFA_LAMBDA_DEFAULT = 1.0

# Bookkeeping.
EVAL_FREQ = 10
SAVE_FREQ = 10
SEED = 1

# Arithmetic on CUDA. False: the paper's (fp32 without TF32, eager, the default memory layout);
# True: what --fast turns on (bf16 autocast, the CUDA graph, channels_last, TF32). Flip it only
# on the figure `bash scripts/gpu_check.sh verify` prints (the fast path within 1.5 points of
# fp32 on worst-class and average PGD-20), and record that figure in BENCHMARKS.md.
FAST_ON_CUDA = False
