"""What a protocol trains and evaluates: its model, epochs, training and test subsets and extra
train.py arguments (PROTOCOLS); the --methods names of the registered methods (variants) and which
run of the same seed each starts from (parent_of); the arguments each takes under --recipe
official, and the validation split that --select best_val holds out."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from engine.start import NETWORK_ARGS
from fairness import METHODS as FAIRNESS
from losses import LOSSES

# The demo's synthetic data (docs/demo.md): ten classes of 8 x 8 images, a star group of five.
TINY_DATA = ['--dataset', 'synthetic', '--synthetic_num_classes', '10',
             '--synthetic_close_groups', '0,1,2,3,4', '--synthetic_group_layout', 'star',
             '--synthetic_close_distance', '1.1', '--synthetic_far_distance', '2.0',
             '--synthetic_image_size', '8', '--synthetic_noise', '0.2',
             '--synthetic_n_train_per_class', '500', '--synthetic_n_test_per_class', '500']


@dataclass(frozen=True)
class Protocol:
    model: str
    epochs: int
    n_train: Optional[int]     # class-stratified training subset (None: the whole set)
    n_eval: Optional[int]      # class-stratified evaluation subset (None: the whole test set)
    train_args: tuple = ()     # further train.py arguments (e.g. DAFA's tau, its lambda)
    note: str = ''
    n_autoattack: Optional[int] = None  # AutoAttack on a class-stratified subset of n_eval
    data_dir: bool = False     # the data is a class folder: --data_dir is required
    # Under --recipe shared, a method's epoch counts scaled to this schedule as DAFA's tau is:
    # {--rob_fairness_algorithm: train.py arguments}.
    shared_args: Dict[str, tuple] = field(default_factory=dict)


# The baselines' epoch counts on the CPU tracks' schedule, scaled as tau is (first lr drop at 10
# of 20 epochs against the paper's 100 of 110: x0.1): CFA calibrates from epoch begin + 1 (10 ->
# 1; at 10 it would be plain TRADES for half the run) and FRL halves its rates every 40 epochs
# (-> 4; at 40 it would never halve). The paper-scale tracks keep the official counts.
SHORT_CPU_EPOCHS = {'cfa': ('--cfa_begin', '1'), 'frl': ('--frl_halving_epochs', '4')}

# Validation splits are each method's share of the training images (Method.validation_fraction:
# 300 / 300 / 100 of 5,000 per class for WAT / FRL / CFA, scaled with the training set).
PROTOCOLS = {
    # ResNet-18, 110 epochs, bag_of_tricks (x0.1 at 100, x0.01 at 105), tau 70, lambda per
    # dataset (defaults.py), AutoAttack on the whole test set.
    'paper': Protocol('resnet', 110, None, None,
                      note="the paper's recipe (ResNet-18, 110 epochs, tau 70, whole test set)"),
    # The paper's recipe scaled to fit a device session: 10,000 training images (1,000 per class)
    # and 40 epochs, bag_of_tricks (x0.1 at 30, x0.01 at 35); tau 21 keeps the paper's
    # tau / first-drop ratio (70 / 100); 1,000 test images (100 per class).
    'short': Protocol('resnet', 40, 10000, 1000, ('--dafa_warmup', '21', '--eval_freq', '40'),
                      note='scaled: 10,000 training images, 40 epochs (lr drops at 30 and 35), '
                           'tau 21, 1,000 test images (100 per class)'),
    # Real images on a 2-core CPU in about 75 minutes for TRADES + DAFA over 3 seeds (measured:
    # docs/reproduce.md): CIFAR-10 from a class folder, small-cnn, the paper's TRADES settings.
    # 12,000 training images (1,200 per class) and 20 epochs, the fewest epochs that leave
    # bag_of_tricks a first phase of 10 (x0.1 at 10, x0.01 at 15); tau 7 keeps the paper's tau /
    # first-drop ratio (70 / 100); lambda 1.0 (the paper's CIFAR-10 value). PGD-20 on the whole
    # test set; AutoAttack on 500 images (50 per class), ~2-4 minutes per model.
    'cpu': Protocol('small-cnn', 20, 12000, None,
                    ('--dafa_warmup', '7', '--dafa_lambda', '1.0', '--eval_freq', '20',
                     '--channels_last'),
                    note='small-cnn on CIFAR-10 from a class folder, 12,000 training images, '
                         '20 epochs (lr drops at 10 and 15), tau 7, lambda 1.0; PGD-20 on the '
                         'whole test set, AutoAttack on 500 images (50 per class)',
                    n_autoattack=500, data_dir=True, shared_args=SHORT_CPU_EPOCHS),
    # The long-tailed tracks: CIFAR-10-LT (LDAM-DRW's generator, rho 0.02: 5,000 ... 100
    # training images per class, 13,996) cut from the whole training set, the whole balanced test
    # set; otherwise as 'cpu' and 'paper'. The validation split of --select best_val comes from
    # the images the cut leaves out (data.Dataset.hold_out_validation), so it costs the tail
    # nothing; only the head class, which keeps all its images, gives its own. DAFA's lambda is
    # 0.5: at the paper's 1.0 the head class's weight went negative (seed 1 of cpu-lt: -0.38,
    # positive only below lambda 0.72), which DAFA refuses (dafa/method.py).
    'cpu-lt': Protocol('small-cnn', 20, None, None,
                       ('--imbalance_ratio', '0.02', '--dafa_warmup', '7', '--dafa_lambda', '0.5',
                        '--eval_freq', '20', '--channels_last'),
                       note='as cpu on CIFAR-10-LT (rho 0.02: 13,996 training images, 5,000 to '
                            '100 per class) cut from the class folder, lambda 0.5; the whole '
                            'test set',
                       n_autoattack=500, data_dir=True, shared_args=SHORT_CPU_EPOCHS),
    'paper-lt': Protocol('resnet', 110, None, None,
                         ('--imbalance_ratio', '0.02', '--dafa_lambda', '0.5'),
                         note="the paper's recipe on CIFAR-10-LT (rho 0.02, 13,996 training "
                              'images), lambda 0.5 as cpu-lt'),
    # CPU minutes: the demo's synthetic data and schedule (docs/demo.md).
    'tiny': Protocol('small-cnn', 20, None, 300,
                     tuple(TINY_DATA) + ('--dafa_warmup', '10', '--dafa_lambda', '0.5',
                                         '--eval_freq', '20'),
                     note="small-cnn on the demo's synthetic data, 20 epochs, tau 10, lambda 0.5, "
                          '300 test images (30 per class)'),
}


def variants() -> dict:
    """The --methods names -> (train.py --loss, --rob_fairness_algorithm): each loss plain
    ('trades', 'pgd'), then each registered method on each loss it runs on (its name on its
    first loss, '<loss>_<name>' on another: 'dafa', 'pgd_dafa', 'wat', 'ham' on PGD-AT ...)."""
    out = {loss: (loss, 'none') for loss in LOSSES}
    for name, cls in FAIRNESS.items():
        if name != 'none':
            for loss in cls.losses:
                out[name if loss == cls.losses[0] else f'{loss}_{name}'] = (loss, name)
    return out


def parent_of(method: str, recipe: str = 'shared') -> Optional[str]:
    """The --methods name whose run of the same seed this one starts from, if any: the run it
    branches off (Method.branches_from), under --recipe official the run whose final model it
    fine-tunes (Method.fine_tunes), or the run whose final model teaches it (Method.teacher_of,
    under either recipe)."""
    methods = variants()
    loss, algorithm = methods[method]
    method_cls = FAIRNESS[algorithm]
    for parent, (parent_loss, parent_algorithm) in methods.items():
        if parent_loss == loss and (
                parent_algorithm in method_cls.branches_from
                or parent_algorithm == method_cls.teacher_of
                or (recipe == 'official' and parent_algorithm == method_cls.fine_tunes)):
            return parent
    return None


# Training images per class and classes of the whole datasets (a 'folder' is the CIFAR-10 copy).
WHOLE = {'cifar10': (5000, 10), 'cifar100': (500, 100), 'stl10': (500, 10), 'folder': (5000, 10)}


def selection_split(parsed) -> int:
    """--select best_val's --val_per_class for a run whose method holds out no validation
    split: the smallest the baselines hold out on this data (CFA's: 100 of CIFAR-10's 5,000 per
    class, 2% of a subset's)."""
    if parsed.dataset == 'synthetic':
        per_class, classes = parsed.synthetic_n_train_per_class, parsed.synthetic_num_classes
    else:
        per_class, classes = WHOLE[parsed.dataset]
    whole = parsed.n_train is None
    if not whole:
        per_class = min(per_class, parsed.n_train // classes)
    return min(cls.validation_per_class(parsed.dataset, per_class, whole)
               for cls in FAIRNESS.values() if cls.validation_fraction)


def official_args(a, method: str) -> List[str]:
    """The train.py arguments --recipe official adds to a --methods name's run (none under the
    shared recipe)."""
    if a.recipe != 'official':
        return []
    return FAIRNESS[variants()[method][1]].official_args(a.epochs, PROTOCOLS[a.protocol].model)


def recipe_args(a, method: str) -> List[str]:
    """The train.py arguments the recipe adds to a --methods name's run: its official recipe's,
    or under the shared recipe its epoch counts scaled to the protocol (Protocol.shared_args)."""
    if a.recipe == 'official':
        return official_args(a, method)
    return list(PROTOCOLS[a.protocol].shared_args.get(variants()[method][1], ()))


NETWORK_FLAGS = tuple(f'--{name}' for name in NETWORK_ARGS)  # a fine-tuned run's parent's too


def network_args(a, method: str) -> List[str]:
    """The network flags (and values) among the arguments --recipe official adds to a method's
    run: FRL's PreAct ResNet-18 under the ResNet protocols. Empty: the protocol's network."""
    extra = official_args(a, method)
    return [arg for i, flag in enumerate(extra) if flag in NETWORK_FLAGS
            for arg in extra[i:i + 2]]


def describe(args) -> str:
    """The recipe actually run (the protocol, with any override)."""
    proto = PROTOCOLS[args.protocol]
    train = (f'{proto.n_train:,} training images' if proto.n_train else
             'the long-tailed subset' if '--imbalance_ratio' in proto.train_args else
             'all training images')
    test = f'{args.n_eval:,} test images' if args.n_eval else 'the whole test set'
    if args.n_autoattack and args.attack == 'all':
        test += f' (AutoAttack on {args.n_autoattack:,} of them)'
    extra = f"; train.py {' '.join(args.train_args)}" if args.train_args else ''
    return (f'{proto.model}, {args.epochs} epochs, {train}; evaluated on '
            f'{test}{extra}')
