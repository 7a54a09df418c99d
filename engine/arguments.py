"""train.py's command line: its argument groups, then the checks once they are parsed
(engine.start.resolve_and_check). A package module, so the benchmark (benchmark/plan.py) resolves
a run's arguments exactly as train.py will without importing an entry point."""
import argparse

import defaults as D
import fairness
import models
from data import DATASETS, add_synthetic_arguments
from engine import start
from engine.best import CRITERIA
from engine.cli import ArgumentParser, UserError, channel_statistics
from engine.schedule import SCHEDULES
from evaluation import PGD_RULES
from fairness import METHODS
from losses import LOSSES

DESCRIPTION = ('Adversarial training (TRADES or PGD-AT), optionally with a robust-fairness '
               'method (DAFA, WAT, FRL, CFA, BAT), on one device or several (torchrun).')


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except None: such a flag's help says what fills it."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = ArgumentParser(description=DESCRIPTION, formatter_class=_DefaultsHelp)
    _run_arguments(p)
    _data_arguments(p)
    _optimisation_arguments(p)
    _attack_arguments(p)
    _fairness_arguments(p)
    _speed_arguments(p)
    fairness.add_arguments(p)
    args = p.parse_args(argv)
    try:
        start.resolve_and_check(args)
    except UserError as err:
        p.error(str(err))
    return args


def _run_arguments(p) -> None:
    g = p.add_argument_group('run')
    g.add_argument('--model_dir', default='runs/default', help='run folder (logs, checkpoints)')
    g.add_argument('--resume', metavar='PATH', help='checkpoint to continue from; with '
                   '--rob_fairness_algorithm dafa, a warm-up checkpoint of a plain run '
                   '(checkpoint-epochTAU.pt) branches a DAFA run off it')
    g.add_argument('--overwrite', action='store_true',
                   help="replace a run already in --model_dir (its files are deleted once this "
                        'run has checked its arguments, data and model)')
    g.add_argument('--trust_checkpoint', action='store_true',
                   help='load --resume with the unsafe loader, which can run code in the file; '
                        'only for a file from a source you trust')
    g.add_argument('--seed', type=int, default=D.SEED, help='seeds the model, the attack noise '
                   'and the data order')
    g.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto',
                   help='auto = cuda when visible')
    g.add_argument('--eval_freq', type=int, default=D.EVAL_FREQ,
                   help='epochs between clean + PGD-20 test evaluations (and the last epoch)')
    g.add_argument('--save_freq', type=int, default=D.SAVE_FREQ,
                   help='epochs between kept checkpoints (also kept: epoch tau, last 10 epochs)')
    g.add_argument('--log_interval', type=int, default=100,
                   help='batches between loss reports (the only host syncs of an epoch)')
    g.add_argument('--keep_best', choices=('none', 'val', 'test'), default='none',
                   help='also keep checkpoint-best.pt, the epoch that scores highest under the '
                        'test PGD: val = on the validation split after every epoch (needs one: '
                        '--val_per_class); test = at the test evaluations (--eval_freq), only '
                        'to compare with papers that selected on the test set, and labelled '
                        'so. The final model is what a run reports either way.')
    g.add_argument('--best_criterion', choices=tuple(CRITERIA), default='avg',
                   help='what --keep_best maximises: the PGD accuracy averaged over classes, or '
                        'that plus the worst class (ties keep the earlier epoch)')


def _data_arguments(p) -> None:
    g = p.add_argument_group('data')
    g.add_argument('--dataset', choices=DATASETS, default='cifar10',
                   help='folder: DIR/train/<class>/*, DIR/test/<class>/*; synthetic: made by code')
    g.add_argument('--data_dir', default='datasets',
                   help='download/cache root; for --dataset folder, the folder with train/ test/')
    g.add_argument('--n_train', type=int, help='train on the first N samples, class-stratified')
    g.add_argument('--imbalance_ratio', type=float, metavar='RHO',
                   help='long-tailed training set (LDAM-DRW\'s generator, as the long-tailed AT '
                        'codes): class c keeps int(n * RHO^(c/(K-1))) of its n images, numpy '
                        'seed 0; 0.02 = CIFAR-10-LT (5,000 ... 100). The test set stays whole; '
                        'a validation split comes from the images left out')
    g.add_argument('--num_workers', type=int, default=0,
                   help='processes decoding a --dataset folder once (batches come from memory)')
    g.add_argument('--padding_mode', choices=('constant', 'reflect'), default='constant',
                   help="the training random crop's padding, as torchvision RandomCrop's: "
                        "constant (zeros; the DAFA and TRADES codes) or reflect (CFA's code)")
    add_synthetic_arguments(p)


def _optimisation_arguments(p) -> None:
    g = p.add_argument_group('model and optimisation')
    g.add_argument('--model', choices=tuple(models.MODELS), default='resnet',
                   help='resnet = ResNet-18; pre-resnet = PreAct ResNet-18 (CFA\'s), '
                        'pre-resnet-frl = the same without the final BatchNorm (FRL\'s); '
                        'small-cnn is a tiny net for tests and the CPU demo')
    g.add_argument('--normalize', metavar='M1,M2,M3,S1,S2,S3', type=channel_statistics,
                   help='(x - mean) / std per channel as the model\'s first step (CFA\'s code '
                        'normalises with CIFAR-10\'s); inputs and eps stay in pixels [0, 1]')
    g.add_argument('--epochs', type=int, default=D.EPOCHS, help='training epochs')
    g.add_argument('--batch_size', type=int, default=D.BATCH_SIZE, help='training images per step')
    g.add_argument('--test_batch_size', type=int, default=D.TEST_BATCH_SIZE,
                   help='images per evaluation batch')
    g.add_argument('--lr', type=float, default=D.LR, help='initial SGD learning rate')
    g.add_argument('--momentum', type=float, default=D.MOMENTUM, help='SGD momentum')
    g.add_argument('--nesterov', action=argparse.BooleanOptionalAction, default=True,
                   help='Nesterov momentum')
    g.add_argument('--weight_decay', type=float, default=D.WEIGHT_DECAY, help='L2 penalty')
    g.add_argument('--lr_schedule', choices=SCHEDULES, default=D.LR_SCHEDULE,
                   help='bag_of_tricks: x0.1 from epoch epochs-10, x0.01 from epochs-5')


def _attack_arguments(p) -> None:
    g = p.add_argument_group('adversarial training (L-inf, pixels in [0,1])')
    g.add_argument('--loss', choices=tuple(LOSSES), default='trades',
                   help='trades (Zhang et al. 2019) or pgd (PGD-AT, Madry et al. 2018)')
    g.add_argument('--epsilon', type=float, default=D.EPSILON,
                   help='training radius in pixel units, 0-1 (0.031 ~ 8/255)')
    g.add_argument('--pgd_num_steps', type=int, default=D.PGD_NUM_STEPS,
                   help='training attack steps K')
    g.add_argument('--pgd_step_size', type=float, default=D.PGD_STEP_SIZE,
                   help='training attack step (~2/255)')
    g.add_argument('--beta', type=float, default=D.BETA, help='TRADES weight of the robust KL')
    g.add_argument('--test_epsilon', type=float, default=D.TEST_EPSILON,
                   help='evaluation PGD radius (8/255)')
    g.add_argument('--test_pgd_num_steps', type=int, default=D.TEST_PGD_NUM_STEPS,
                   help='evaluation PGD steps')
    g.add_argument('--test_pgd_step_size', type=float, default=D.TEST_PGD_STEP_SIZE,
                   help='evaluation PGD step')
    g.add_argument('--pgd_rule', choices=PGD_RULES, default=D.PGD_RULE,
                   help='final: robust if correct at the last iterate (the official per-class '
                        'evaluation); every: correct at the clean input and every iterate')
    g.add_argument('--allow_large_epsilon', action='store_true',
                   help=f'accept --epsilon / --test_epsilon above {D.MAX_EPSILON:.4f} '
                        '(16/255); without it, a larger value is taken for a slip (8 for 8/255)')


def _fairness_arguments(p) -> None:
    g = p.add_argument_group('robust fairness (fairness/: one file per method)')
    g.add_argument('--rob_fairness_algorithm', choices=tuple(METHODS), default='none',
                   help='the method (docs/methods.md); its own flags are in its group below')
    g.add_argument('--val_per_class', type=int,
                   help='hold out the last N training images of each class for validation, '
                        "never trained on (default: the method's official count on the dataset "
                        "it was published on, e.g. 300 of CIFAR-10's 5,000 for wat and frl, 100 "
                        'for cfa, else its share of the smallest class; 0 for methods without '
                        'validation; docs/methods.md)')
    g.add_argument('--init_weights', metavar='PATH',
                   help="start from this checkpoint's model weights (ours or an official "
                        'state_dict) with a new optimizer, e.g. FRL fine-tuning a TRADES model')


def _speed_arguments(p) -> None:
    g = p.add_argument_group(
        'arithmetic and speed (CUDA; evaluation is always fp32 eager). Default: the paper\'s '
        'arithmetic, fp32 without TF32, eager, the default memory layout (docs/speed.md)')
    g.add_argument('--fast', action=argparse.BooleanOptionalAction,
                   help='CUDA only: bf16 autocast, the CUDA graph, channels_last and TF32 '
                        '(each flag below overrides it). Not yet measured on a GPU against fp32: '
                        'scripts/gpu_check.sh verify does (default: defaults.FAST_ON_CUDA, '
                        f'{D.FAST_ON_CUDA})')
    g.add_argument('--amp', choices=('auto', 'bf16', 'none'), default='auto',
                   help='autocast for training passes; auto = bf16 under --fast, else none')
    g.add_argument('--tf32', action=argparse.BooleanOptionalAction,
                   help='TF32 in cuDNN convolutions and CUDA matmuls of the training passes '
                        '(default: under --fast; PyTorch alone would let cuDNN use it)')
    g.add_argument('--cuda_graph', action=argparse.BooleanOptionalAction,
                   help='capture the training iteration in a CUDA graph (default: under --fast)')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction,
                   help='channels-last memory format (default: under --fast on CUDA; off on the '
                        'CPU, where the cpu protocol passes it)')
    g.add_argument('--sync_bn', action='store_true',
                   help='under torchrun: BatchNorm statistics over the global batch '
                        '(SyncBatchNorm); default: per process, as DataParallel')
