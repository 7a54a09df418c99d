"""Reproduce the paper's Table 1: train every method and seed, evaluate each final checkpoint per
class (clean, PGD-20, AutoAttack), and write the table with the paper's numbers beside ours.

    python scripts/reproduce.py --protocol paper --dataset cifar10 --methods trades,dafa \
        --seeds 1,2,3 --jobs 2 --out results/cifar10
    python scripts/reproduce.py --protocol tiny --methods trades,dafa --seeds 1,2 --out runs/tiny

Every run is a train.py process and every evaluation an eval.py process, --jobs of them at a time
(one CPU thread each on the CPU). A method that branches off another run (fairness.Method.
branches_from: DAFA off the plain run at its epoch tau) starts from the same seed's run of its
parent, so the shared epochs are trained once per seed. Which methods exist, their losses and
their validation splits come from the method registry (fairness.METHODS). Rerunning the same
command skips what is finished, resumes unfinished runs from their latest checkpoints and retries
failed ones; a failure is reported at the end (with its log), and what depends on it is reported
as blocked.
Options it does not know go to every train.py run (e.g. --data_dir, --amp none).

Outputs in --out: runs/<method>/seed<N>/ (train.py's run folder, eval.py's results, the logs of
both), table.md, results.json and per_class.png.
"""
import argparse
import ctypes
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import eval as eval_cli  # noqa: E402  (after the path set-up)
import train  # noqa: E402
from engine import checkpoint, identity, run  # noqa: E402
from engine import start as run_start  # noqa: E402
from engine.best import BEST  # noqa: E402
from engine.cli import ArgumentParser, UserError  # noqa: E402
from evaluation import report  # noqa: E402
from evaluation.figures import compare_figure, sweep_figure  # noqa: E402
from fairness import METHODS as FAIRNESS  # noqa: E402
from losses import LOSSES  # noqa: E402

PAPER_TABLE = os.path.join(ROOT, 'evaluation', 'paper_table1.json')

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
                    n_autoattack=500, data_dir=True),
    # CPU minutes: the demo's synthetic data and schedule (docs/demo.md).
    'tiny': Protocol('small-cnn', 20, None, 300,
                     tuple(TINY_DATA) + ('--dafa_warmup', '10', '--dafa_lambda', '0.5',
                                         '--eval_freq', '20'),
                     note="small-cnn on the demo's synthetic data, 20 epochs, tau 10, lambda 0.5, "
                          '300 test images (30 per class)'),
}


def variants() -> dict:
    """The --methods names -> (train.py --loss, --rob_fairness_algorithm): each loss plain
    ('trades', 'pgd'), then each registered method on each loss it runs on (its name on TRADES,
    '<loss>_<name>' on another: 'dafa', 'pgd_dafa', 'wat', ...)."""
    out = {loss: (loss, 'none') for loss in LOSSES}
    for name, cls in FAIRNESS.items():
        if name != 'none':
            for loss in cls.losses:
                out[name if loss == 'trades' else f'{loss}_{name}'] = (loss, name)
    return out


def parent_of(method: str, recipe: str = 'shared') -> Optional[str]:
    """The --methods name whose run of the same seed this one starts from, if any: the run it
    branches off (Method.branches_from), or under --recipe official the run whose final model
    it fine-tunes (Method.fine_tunes)."""
    methods = variants()
    loss, algorithm = methods[method]
    method_cls = FAIRNESS[algorithm]
    for parent, (parent_loss, parent_algorithm) in methods.items():
        if parent_loss == loss and (parent_algorithm in method_cls.branches_from or (
                recipe == 'official' and parent_algorithm == method_cls.fine_tunes)):
            return parent
    return None


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--protocol', choices=tuple(PROTOCOLS), default='paper')
    p.add_argument('--dataset', choices=('cifar10', 'cifar100', 'stl10', 'folder'),
                   default='cifar10', help='ignored by --protocol tiny (synthetic data); '
                   'folder: --data_dir DIR with train/<class>/ and test/<class>/')
    p.add_argument('--paper_dataset', choices=('cifar10', 'cifar100', 'stl10'),
                   help="whose paper numbers to show beside ours (default: --dataset; for "
                        "'folder', cifar10)")
    p.add_argument('--data_label', help='how the table names the data, e.g. "CIFAR-10 (JPEG '
                   'copy)" (default: the dataset name)')
    p.add_argument('--methods', default='trades,dafa',
                   help=f"comma-separated, from {', '.join(variants())}; a branched method "
                        'adds the method it branches off')
    p.add_argument('--seeds', default='1,2,3', help='comma-separated integers')
    p.add_argument('--recipe', choices=('shared', 'official'), default='shared',
                   help="shared: every method on the protocol's TRADES recipe (the DAFA "
                        "paper's comparison); official: each baseline on its own published "
                        'recipe (epochs scaled with the protocol, schedule, weight decay, beta, '
                        'attack, model, FRL fine-tuning the TRADES run; fairness.Method.'
                        'official_args), DAFA and the plain runs on the shared one')
    p.add_argument('--jobs', type=int, default=2, help='runs and evaluations at a time (two '
                   'training processes share one GPU at ~1.95x the throughput of one)')
    p.add_argument('--out', required=True, help='results folder')
    p.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto')
    p.add_argument('--attack', choices=('pgd', 'all'), default='all',
                   help='evaluation: all = clean, PGD-20 and AutoAttack (the table); pgd = '
                        'without AutoAttack')
    p.add_argument('--select', choices=('final', 'best_val'), default='final',
                   help="which checkpoint of each run the table reports: its final model, or "
                        'its best epoch on a validation split (train.py --keep_best val, by '
                        'PGD average unless --best_criterion is passed on); a method without '
                        "its own split then holds out the smallest of the baselines' (CFA's)")
    p.add_argument('--reuse_other_code', action='store_true',
                   help='reuse runs and results in --out made by another version of the code '
                        '(another code fingerprint: engine/identity.py); the table lists which '
                        'code made which run. Default: such a run is refused, by name')
    p.add_argument('--epochs', type=int, help="override the protocol's epochs")
    p.add_argument('--n_eval', type=int, help="override the protocol's evaluation subset")
    p.add_argument('--n_autoattack', type=int,
                   help="override the protocol's AutoAttack subset (of the evaluated images)")
    p.add_argument('--sweep', metavar='FLAG=V1,V2,...',
                   help='a sensitivity study: every run whose recipe has train.py --FLAG is made '
                        'once per value (runs/<method>/FLAG=V/seed<N>); runs without it, e.g. '
                        "a DAFA sweep's TRADES warm-ups, are shared. The table has a row per "
                        'value and sweep.png plots average and worst class against it')
    args, train_args = p.parse_known_args(argv)
    try:
        args.methods = [m for m in args.methods.split(',') if m]
        args.seeds = [int(s) for s in args.seeds.split(',') if s]
    except ValueError:
        p.error(f'--seeds must be comma-separated integers, got {args.seeds!r}.')
    methods = variants()
    unknown = [m for m in args.methods if m not in methods]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown or 'none given'}; choose from {', '.join(methods)}.")
    if not args.seeds or args.jobs < 1:
        p.error('need at least one seed and --jobs >= 1.')
    # A branched method needs its parent's run of the same seed: add it, first.
    wanted = []
    for m in args.methods:
        parent = parent_of(m, args.recipe)
        for name in ([parent] if parent else []) + [m]:
            if name not in wanted:
                wanted.append(name)
    args.methods = sorted(wanted, key=list(methods).index)
    for flag in ('epochs', 'n_eval', 'n_autoattack'):  # checked before anything is trained
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f'--{flag} must be >= 1, got {getattr(args, flag)}.')
    if args.n_autoattack is not None and args.attack != 'all':
        p.error(f'--n_autoattack sizes the AutoAttack subset, and --attack {args.attack} runs no '
                'AutoAttack: drop it, or pass --attack all.')
    proto = PROTOCOLS[args.protocol]
    args.epochs = args.epochs or proto.epochs
    args.n_eval = args.n_eval or proto.n_eval
    args.n_autoattack = args.n_autoattack or proto.n_autoattack
    args.train_args = train_args
    if proto.data_dir and not any(a.startswith('--data_dir') for a in train_args):
        p.error(f'--protocol {args.protocol} reads the images from a class folder: pass '
                '--data_dir DIR (DIR/train/<class>/, DIR/test/<class>/), e.g. the CIFAR-10 JPEG '
                'copy unpacked from ../shared/data/cifar10-jpeg.tar.gz.')
    if proto.data_dir and args.dataset == 'cifar10':
        args.dataset = 'folder'
    if args.protocol == 'tiny':
        args.dataset = 'synthetic'
    args.paper_dataset = args.paper_dataset or (
        args.dataset if args.dataset in ('cifar10', 'cifar100', 'stl10') else 'cifar10')
    args.data_label = args.data_label or args.dataset
    args.out = os.path.abspath(args.out)  # the caller's directory, whatever the children's
    if args.sweep is not None:
        key, _, values = args.sweep.partition('=')
        values = [v for v in values.split(',') if v]
        if not key or not values or len({_number(v) for v in values}) != len(values):
            p.error(f'--sweep {args.sweep!r}: write FLAG=V1,V2,... (distinct values), e.g. '
                    'dafa_lambda=0.25,0.5,1.0.')
        args.sweep = (key.lstrip('-'), values)
    return args


# ----- the plan: one training run and one evaluation per (method, sweep value, seed) -------------

@dataclass(eq=False)  # identity: tasks are dictionary keys
class Task:
    kind: str                  # 'train' or 'eval'
    method: str
    seed: int
    folder: str                # the run folder
    setting: tuple = ()        # the swept flag's (key, value), if this run depends on it
    depends: List['Task'] = field(default_factory=list)
    epochs: int = 0            # a train task's epochs (its recipe's)
    fine_tunes: bool = False   # starts from its dependency's final model (--init_weights)
    status: str = 'pending'    # pending, running, done, failed, blocked, interrupted
    reused: bool = False       # done before this command started it: made by an earlier one
    why: str = ''              # why it is blocked, and the command that repairs it
    log: str = ''

    @property
    def name(self) -> str:
        what = f' {self.setting[0]}={self.setting[1]}' if self.setting else ''
        return f'{self.kind} {self.method}{what} seed {self.seed}'


def _number(text: str):
    """A sweep value as train.py will read it: 0.5 and 0.50 are one value."""
    try:
        return float(text)
    except ValueError:
        return text


_SHA256 = {}  # path -> ((mtime_ns, size), sha256): finished() is asked every 0.2 s


def _sha256(path: str) -> Optional[str]:
    """A file's sha256, None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    if _SHA256.get(path, (None,))[0] != key:
        _SHA256[path] = (key, identity.file_sha256(path))
    return _SHA256[path][1]


def _normal(value):
    """As JSON has it (tuples become lists): how results store recipes."""
    return json.loads(json.dumps(value))


class Plan:
    def __init__(self, args):
        self.args = args
        self.tasks: List[Task] = []
        self.run_args = {}  # train task -> train.py's resolved arguments
        self._data = {}  # the data arguments -> the fingerprints of that data
        trains = {}
        key, values = args.sweep or (None, [None])
        for seed in args.seeds:
            for method in args.methods:
                parent = parent_of(method, args.recipe)
                for value in values:
                    task = self._train_task(method, seed, key, value, trains.get(
                        (parent, seed, value)) or trains.get((parent, seed, None)))
                    slot = (method, seed, value if task.setting else None)
                    if slot in trains:  # its recipe has no swept flag: one run for all values
                        continue
                    trains[slot] = task
                    self.tasks += [task, Task('eval', method, seed, task.folder, task.setting,
                                              [task], log=os.path.join(task.folder,
                                                                       'eval_stdout.log'))]

    def _train_task(self, method, seed, key, value, parent) -> Task:
        setting = (key, value) if key else ()
        task = Task('train', method, seed, '', setting, [parent] if parent else [])
        parsed = train.parse_args(self.train_command(task))
        if key and key not in run_start.recipe_args(parsed):
            task.setting = ()  # the run does not depend on the swept flag: one for all values
            parsed = train.parse_args(self.train_command(task))
        variant = method + (f'/{key}={value}' if task.setting else '')
        task.folder = os.path.join(self.args.out, 'runs', variant, f'seed{seed}')
        task.epochs = parsed.epochs
        task.fine_tunes = (parent is not None
                           and FAIRNESS[parsed.rob_fairness_algorithm].fine_tunes is not None
                           and self.args.recipe == 'official')
        task.log = os.path.join(task.folder, 'train_stdout.log')
        parsed.model_dir = task.folder
        self.run_args[task] = parsed
        return task

    def recipe_args(self, task: Task) -> dict:
        """The recipe arguments the plan asks of a train task's run."""
        return _normal(run_start.recipe_args(self.run_args[task]))

    def branch_epoch(self, task: Task) -> Optional[int]:
        """The epoch of the parent's checkpoint a branched run starts from."""
        run_args = self.run_args[task]
        return FAIRNESS[run_args.rob_fairness_algorithm].branch_epoch(run_args)

    def evaluated(self, task: Task) -> str:
        """The checkpoint an evaluation reports (--select): the final or the best one."""
        if self.args.select == 'best_val':
            return os.path.join(task.folder, BEST)
        return run.checkpoint_path(task.folder)

    def eval_settings(self, task: Task) -> dict:
        """What the plan asks of an evaluation (eval.evaluation_settings of its command)."""
        return eval_cli.evaluation_settings(eval_cli.parse_args(self.command(task)[1:]),
                                            self.args.attack)

    def result_of(self, task: Task):
        """(path, result) of an evaluation: the eval_*.json in its run folder whose identity
        (engine/identity.py) is the one the plan asks for, whatever its file name: of the
        checkpoint the plan reports as it is on disk now (its sha256 fixes run, epoch and
        selection), with the plan's evaluation settings, by this code (or any, under
        --reuse_other_code). None when there is none."""
        sha = _sha256(self.evaluated(task))
        if sha is None:
            return None
        wanted = {'checkpoint_sha256': sha, 'evaluation': self.eval_settings(task),
                  'code': identity.code_fingerprint()}
        ignore = ('code',) if self.args.reuse_other_code else ()
        for path in sorted(glob.glob(os.path.join(glob.escape(task.folder), 'eval_*.json'))):
            try:
                with open(path) as f:
                    result = json.load(f)
                found = identity.result_identity(result)
            except (OSError, ValueError, AttributeError, TypeError):
                continue  # torn by a failure, or not a result: evaluate again
            if not identity.differences({k: found[k] for k in wanted}, wanted, ignore):
                return path, result
        return None

    def finished(self, task: Task) -> bool:
        """A run: its last epoch's metrics row and checkpoint exist (and, under --select
        best_val, its checkpoint-best.pt). An evaluation: its run finished, and a result of the
        identity the plan asks for exists (result_of)."""
        if task.kind == 'train':
            return run.finished(task.folder, task.epochs) and (
                self.args.select != 'best_val' or os.path.isfile(os.path.join(task.folder, BEST)))
        return self.finished(task.depends[0]) and self.result_of(task) is not None

    def blocked_by(self, task: Task) -> str:
        """Why a task can never start, and what repairs it."""
        if task.kind == 'train' and task.depends and not task.fine_tunes:
            parent = task.depends[0]
            point = run.checkpoint_path(parent.folder, self.branch_epoch(task))
            if not os.path.isfile(point):
                return (f'it branches off {point}, which its finished parent run no longer '
                        f'holds; delete {parent.folder} and rerun to train the parent again')
        return 'what it needs did not finish'

    def ready(self, task: Task) -> bool:
        """Whether the task can start now: an evaluation after its run, a branched run as soon
        as its parent has written the checkpoint it branches off."""
        if task.kind == 'eval' or not task.depends or task.fine_tunes:
            return all(self.finished(d) for d in task.depends)
        own = run.resume_point(task.folder) is not None
        return own or os.path.isfile(run.checkpoint_path(task.depends[0].folder,
                                                         self.branch_epoch(task)))

    def planned_identity(self, task: Task) -> dict:
        """The run identity (engine/identity.py) the plan asks of a train task: its recipe
        arguments, the fingerprints of the data it would train on now and, for a branch or a
        fine-tuned run, of its parent's checkpoint as it is on disk, and this code."""
        parsed = self.run_args[task]
        key = json.dumps([os.path.abspath(parsed.data_dir or '.'), {
            k: v for k, v in sorted(vars(parsed).items())
            if k in ('dataset', 'n_train', 'seed', 'val_per_class', 'rob_fairness_algorithm')
            or k.startswith('synthetic')}], default=str)
        if key not in self._data:  # the fingerprints only: a dataset per task would not fit
            data = run_start.load_data(parsed)
            self._data[key] = run_start.run_recipe(parsed, data)['data']
        data = dict(self._data[key])
        if task.depends:
            parent = task.depends[0].folder
            if task.fine_tunes:
                data['init_weights_sha256'] = _sha256(run.checkpoint_path(parent))
            else:
                data['parent_sha256'] = _sha256(run.checkpoint_path(parent,
                                                                    self.branch_epoch(task)))
        return {'args': self.recipe_args(task), 'data': data,
                'code': identity.code_fingerprint()}

    def stale_runs(self) -> List[str]:
        """The run folders already holding a run of another identity, each with what differs
        and the command that repairs it."""
        stale = []
        for task in (t for t in self.tasks if t.kind == 'train'):
            point = run.resume_point(task.folder)
            if point is None:
                continue
            try:
                ckpt = checkpoint.load(point)
            except Exception as err:  # torn, or not a checkpoint
                stale.append(f'{task.folder}: its checkpoint {point} cannot be read ({err}); '
                             f'delete {task.folder} to train that run again')
                continue
            saved = ckpt.get('recipe')
            if saved is None:
                stale.append(f'{task.folder}: no recipe (written by an older version); delete '
                             f'{task.folder} to train that run again')
                continue
            found = identity.run_identity(dict(saved, args=_normal(saved['args'])))
            # A run continued by other code ran each version in turn (its code history).
            codes = {v.get('fingerprint') for v in ckpt.get('code_history', [])} | {
                found['code']}
            found['code'] = found['code'] if len(codes) == 1 else sorted(codes, key=str)
            planned = self.planned_identity(task)
            ignore = {'code'} if self.args.reuse_other_code else set()
            diff = identity.differences(found, planned, ignore)
            if diff:
                fix = (' (or pass --reuse_other_code to reuse it)'
                       if set(diff) == {'code'} else '')
                stale.append(f'{task.folder} ({identity.describe(diff)}): delete '
                             f'{task.folder} to train that run again{fix}')
            elif self.args.select == 'best_val' and not self._keeps_best(task, point):
                stale.append(f'{task.folder} (trained without --keep_best val, so it has no '
                             f'best checkpoint on validation): delete {task.folder} to train '
                             'that run again')
        return stale

    def _keeps_best(self, task: Task, point: str) -> bool:
        """Whether a run's checkpoint keeps the best epoch the way the plan asks."""
        kept = checkpoint.load(point).get('best')
        return bool(kept) and kept['split'] == 'val' and (
            kept['criterion'] == self.run_args[task].best_criterion)

    def train_command(self, task: Task) -> List[str]:
        """train.py's arguments for a run, without --resume."""
        a = self.args
        proto = PROTOCOLS[a.protocol]
        loss, algorithm = variants()[task.method]
        cmd = ['--model', proto.model, '--loss', loss, '--rob_fairness_algorithm', algorithm,
               '--epochs', str(a.epochs), '--seed', str(task.seed), '--device', a.device,
               '--model_dir', task.folder or a.out, *proto.train_args]
        if a.protocol != 'tiny':
            cmd += ['--dataset', a.dataset]
        if proto.n_train:
            cmd += ['--n_train', str(proto.n_train)]
        cmd += official_args(a, task.method)
        if a.select == 'best_val':
            cmd += ['--keep_best', 'val']
            if not FAIRNESS[algorithm].validation_fraction and not any(
                    arg.split('=')[0] == '--val_per_class' for arg in a.train_args):
                cmd += ['--val_per_class',
                        str(selection_split(train.parse_args(cmd + a.train_args)))]
        cmd += a.train_args
        if task.setting:
            cmd += [f'--{task.setting[0]}', task.setting[1]]
        return cmd

    def command(self, task: Task) -> List[str]:
        a = self.args
        if task.kind == 'eval':
            cmd = [os.path.join(ROOT, 'eval.py'), '--checkpoint', self.evaluated(task),
                   '--attack', a.attack, '--device', a.device, '--no_progress', '--out',
                   task.folder]
            cmd += ['--n_eval', str(a.n_eval)] if a.n_eval else []
            aa = a.n_autoattack and a.attack == 'all'
            return cmd + (['--n_autoattack', str(a.n_autoattack)] if aa else [])
        cmd = [os.path.join(ROOT, 'train.py')] + self.train_command(task)
        point = run.resume_point(task.folder)
        if point:  # resume where it stopped
            cmd += ['--resume', point]
        elif task.fine_tunes:  # start from the parent run's final model
            cmd += ['--init_weights', run.checkpoint_path(task.depends[0].folder)]
        elif task.depends:  # branch off the parent run
            cmd += ['--resume', run.checkpoint_path(task.depends[0].folder,
                                                    self.branch_epoch(task))]
        return cmd


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


def _say(message: str) -> None:
    print(message, flush=True)  # a redirected log shows progress as it happens


def run_plan(plan: Plan, jobs: int, on_cpu: bool, say=_say) -> None:
    """Run the plan's tasks, jobs at a time, in plan order as their dependencies allow."""
    env = dict(os.environ)
    if on_cpu:  # jobs share the cores: one thread each
        env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    running = {}
    # Training first: a branched run can start once its parent's checkpoint exists, and it should
    # not wait behind evaluations.
    pending = sorted(plan.tasks, key=lambda task: task.kind != 'train')
    try:
        while pending or running:
            for task in list(pending):
                if plan.finished(task):
                    task.status, task.reused = 'done', True
                    pending.remove(task)
                elif any(d.status in ('failed', 'blocked') for d in task.depends):
                    task.status = 'blocked'
                    task.why = f"{' and '.join(d.name for d in task.depends)} did not finish"
                    pending.remove(task)
                elif len(running) < jobs and plan.ready(task):
                    os.makedirs(task.folder, exist_ok=True)
                    cmd = [sys.executable] + plan.command(task)
                    say(f'start {task.name}: {" ".join(cmd[1:])}')
                    with open(task.log, 'a') as log:
                        log.write(f'\n$ {" ".join(cmd)}\n')
                        log.flush()
                        running[task] = (subprocess.Popen(
                            cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent), time.time())
                    task.status = 'running'
                    pending.remove(task)
            for task, (proc, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[task]
                ok = proc.returncode == 0 and plan.finished(task)
                task.status = 'done' if ok else 'failed'
                say(f"{'done' if ok else 'FAILED'} {task.name} ({time.time() - start:.0f} s)"
                    + ('' if ok else f': exit status {proc.returncode}, see {task.log}'))
            if pending and not running and not any(plan.ready(t) for t in pending):
                for task in pending:  # waiting on something that will never come
                    task.status, task.why = 'blocked', plan.blocked_by(task)
                break
            time.sleep(0.2)
    finally:  # Ctrl-C, SIGTERM or a failure here: no run is left training without us
        for proc, _ in running.values():
            proc.terminate()  # checkpoints are atomic: a rerun resumes
        for proc, _ in running.values():
            proc.wait()


def _die_with_parent() -> None:
    """In a child, before it runs: SIGTERM when reproduce.py dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG; elsewhere the finally of run_plan covers every exit but SIGKILL)."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


# ----- the table ----------------------------------------------------------------------------------

def train_seconds(folder: str, upto: Optional[int] = None) -> float:
    """Training time of a run folder's epochs (up to epoch `upto`), from metrics.jsonl: the
    epochs and the method's work between them (e.g. WAT's and FRL's validation attacks)."""
    return sum(r['train_time_s'] + r.get('method_time_s', 0) for r in run.metrics_rows(folder)
               if upto is None or r['epoch'] <= upto)


def _mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.1f}'
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f'{mean:.1f} ± {std:.1f}'


def describe(args) -> str:
    """The recipe actually run (the protocol, with any override)."""
    proto = PROTOCOLS[args.protocol]
    train = f'{proto.n_train:,} training images' if proto.n_train else 'all training images'
    test = f'{args.n_eval:,} test images' if args.n_eval else 'the whole test set'
    if args.n_autoattack and args.attack == 'all':
        test += f' (AutoAttack on {args.n_autoattack:,} of them)'
    extra = f"; train.py {' '.join(args.train_args)}" if args.train_args else ''
    return (f'{proto.model}, {args.epochs} epochs, {train}; evaluated on '
            f'{test}{extra}')


def paper_rows(dataset: str, labels: List[str]):
    """Markdown rows of the paper's Table 1 for those of our methods it has (robust accuracy
    under AutoAttack), rho against its TRADES row; and the source of the numbers."""
    with open(PAPER_TABLE) as f:
        paper = json.load(f)
    table = paper['results'][dataset]
    base = table['TRADES']
    rows = []
    # A sweep's rows ('TRADES + DAFA (dafa_lambda 0.5)') are the paper's method at other values;
    # '[best on val, ...]' marks another checkpoint of it.
    for label in (label for label in dict.fromkeys(re.split(r' [(\[]', x)[0] for x in labels)
                  if label in table):
        r = table[label]
        cells = []
        for kind in ('clean', 'robust'):
            avg, worst = r[f'{kind}_avg'], r[f'{kind}_worst']
            score = '-' if label == 'TRADES' else format(report.rho(
                avg[0], worst[0], base[f'{kind}_avg'][0], base[f'{kind}_worst'][0]), '.2f')
            cells += [f'{avg[0]:.2f} ± {avg[1]:.2f}', f'{worst[0]:.2f} ± {worst[1]:.2f}', score]
        rows.append(f'| {label} (paper) | ' + ' | '.join(cells) + ' |')
    return rows, paper['source']


def time_lines(runs: List[dict], labels: List[str], branch_epochs: dict) -> List[str]:
    """The table of training times per row label."""
    branched = ', '.join(f'{method} from epoch {epoch + 1}'
                         for method, epoch in branch_epochs.items())
    lines = ['Training time per run (s; mean ± std over seeds; a method\'s work between '
             'epochs included). A branched run trains only the epochs after its branch '
             f'point ({branched or "none here"}) and shares the ones before with its '
             'parent run:', '',
             '| method | own epochs | with the shared warm-up | s per epoch | '
             'per epoch, relative to the first row |', '|---|---:|---:|---:|---:|']
    per_epoch = {label: [r['epoch_time_s'] for r in runs if r['label'] == label]
                 for label in labels}
    base = sum(per_epoch[labels[0]]) / len(per_epoch[labels[0]])
    for label in labels:
        own = [r['train_time_s'] for r in runs if r['label'] == label]
        total = [r['train_time_s'] + r['warmup_time_s_shared'] for r in runs
                 if r['label'] == label]
        ratio = sum(per_epoch[label]) / len(per_epoch[label]) / base
        lines.append(f'| {label} | {_mean_std(own)} | {_mean_std(total)} | '
                     f'{_mean_std(per_epoch[label])} | {ratio:.2f} |')
    return lines + ['']


def code_lines(runs: List[dict]) -> List[str]:
    """Which runs this command reused (their times were measured by the command that made
    them), and, when not every run and result was made by this code, which code made each."""
    lines = []
    reused = [f"{r['label']} seed {r['seed']}" for r in runs if r['reused']]
    if reused:
        lines += ['Reused from an earlier command, so timed by it (maybe on another machine): '
                  + ', '.join(reused) + '.', '']
    now = identity.code_fingerprint()
    if any(set(r['code']['run']) | {r['code']['evaluation']} != {now} for r in runs):
        lines += [f'Made by other code than this ({now}; engine/identity.py fingerprints, '
                  '--reuse_other_code):', '']
        lines += [f"- {r['label']} seed {r['seed']}: trained by "
                  f"{', '.join(map(str, r['code']['run']))}, evaluated by "
                  f"{r['code']['evaluation']}" for r in runs]
        lines.append('')
    return lines


def recipe_lines(a) -> List[str]:
    """Which recipe each method's rows were trained with."""
    if a.recipe == 'shared':
        return ['Recipe `shared`: every method on the protocol\'s TRADES recipe (the DAFA '
                "paper's comparison).", '']
    lines = ['Recipe `official`: each method on its own published recipe, as these train.py '
             'arguments on top of the protocol\'s (official epoch counts scaled by '
             f'{a.epochs} / 110; what they cannot express: docs/methods.md):', '']
    for m in a.methods:
        extra = ' '.join(official_args(a, m)) or '(the shared recipe)'
        starts = (f', from the final model of {parent_of(m, a.recipe)}'
                  if FAIRNESS[variants()[m][1]].fine_tunes else '')
        lines.append(f'- {m}: {extra}{starts}')
    return lines + ['']


def selection_lines(plan: Plan, runs: List[dict]) -> List[str]:
    """Which checkpoint of each run the rows report (--select)."""
    if plan.args.select == 'final':
        return ['Checkpoint: the final model of every run.', '']
    held = sorted({f"{t.method} {plan.run_args[t].val_per_class}" for t in plan.tasks
                   if t.kind == 'train' and not FAIRNESS[
                       plan.run_args[t].rob_fairness_algorithm].validation_fraction})
    chosen = [r['result'].get('selection') or {} for r in runs]
    text = report.selection_label(dict(chosen[0], epoch=None)) if chosen else 'best on validation'
    lines = [f'Checkpoint: each run\'s {text} (train.py --keep_best val), not its final model; '
             'the methods without a validation split of their own hold out per class for it: '
             + (', '.join(held) or 'none') + '.', '']
    if runs:
        lines += ['Selected epochs: ' + ', '.join(
            f"{r['method']} seed {r['seed']}: {c.get('epoch')}" for r, c in zip(runs, chosen))
            + '.', '']
    return lines


def tabulate(plan: Plan) -> dict:
    """table.md, results.json and per_class.png from the finished evaluations."""
    a = plan.args
    evals = [t for t in plan.tasks if t.kind == 'eval' and plan.finished(t)]
    results, runs = [], []
    for task in evals:
        path, result = plan.result_of(task)
        results.append((path, result))
        own = train_seconds(task.folder)  # a branched run's folder holds its own epochs only
        # The parent's epochs up to the branch point, or all of them for a fine-tuned run.
        shared = train_seconds(task.depends[0].depends[0].folder, plan.branch_epoch(
            task.depends[0])) if task.depends[0].depends else 0.0
        made = checkpoint.load(plan.evaluated(task)).get('code_history') or []
        runs.append({'method': task.method, 'setting': list(task.setting), 'seed': task.seed,
                     'folder': task.folder, 'reused': task.depends[0].reused,
                     'code': {'run': [v.get('fingerprint') for v in made],
                              'evaluation': (result.get('code') or {}).get('fingerprint')},
                     'train_time_s': own,
                     'epoch_time_s': own / max(1, len(run.metrics_rows(task.folder))),
                     'warmup_time_s_shared': shared, 'result': result})
    # Each result's row label: its method, and the hyper-parameters its row differs in.
    groups = report.group_results(results) if results else []
    label_of = {id(member): label for label, members in groups for member in members}
    for r in runs:
        r['label'] = label_of[id(r['result'])]
    failures = [{'task': t.name, 'status': t.status, 'log': t.log, 'why': t.why}
                for t in plan.tasks if t.status in ('failed', 'blocked', 'interrupted')]
    summary = {'protocol': a.protocol, 'protocol_note': PROTOCOLS[a.protocol].note,
               'recipe': describe(a),
               'data': a.data_label, 'dataset': a.dataset, 'epochs': a.epochs,
               'branch_epochs': {t.method: plan.branch_epoch(t) for t in plan.tasks
                                 if t.kind == 'train' and t.depends and not t.fine_tunes},
               'methods_recipe': a.recipe,
               'official_args': {m: official_args(a, m) for m in a.methods},
               'seeds': a.seeds, 'methods': a.methods, 'train_args': a.train_args,
               'device': results[0][1]['device'] if results else None,
               'torch': results[0][1]['torch'] if results else None,
               'sweep': a.sweep, 'code': identity.code_version(), 'runs': runs,
               'failures': failures}
    run.write_atomic(os.path.join(a.out, 'results.json'), json.dumps(summary, indent=1))
    lines = [f'# Table 1 reproduction: {a.data_label}, protocol `{a.protocol}`', '',
             f'{describe(a)}; seeds {", ".join(map(str, a.seeds))}; device '
             f"{summary['device']}, torch {summary['torch']}, commit "
             f"{summary['code']['commit'][:12]}"
             f"{' (with uncommitted changes)' if summary['code']['dirty'] else ''}.", '',
             *report.machine_lines(results), '']
    lines += recipe_lines(a) + selection_lines(plan, runs)
    if results:
        # In plan order, so the first method (TRADES, or PGD-AT) is the baseline of rho.
        _, markdown = report.compare_tables(results)
        first = results[0][1]
        n = f"n = {first['n_eval']} test images per evaluation"
        if 'autoattack' in first and report.samples(first, 'autoattack') != first['n_eval']:
            n += f", AutoAttack on {report.samples(first, 'autoattack')} of them"
        lines += [f'Ours ({n}; mean ± sample std over seeds; rho of the means against the '
                  'first row):', '', markdown, '']
        lines += ['How the class accuracies spread (standard deviation over classes; mean of '
                  'the worst classes):', '', report.spread_table(results), '']
        lines += [f'- {note}' for note in report.comparison_notes(results)] + ['']
        labels = [label for label, _ in groups]
        rows, source = paper_rows(a.paper_dataset, labels)
        if rows:
            lines += [f'The paper, for reference ({a.paper_dataset}; {source}):', '',
                      '| Method | clean avg | clean worst | rho_nat | AutoAttack avg | '
                      'AutoAttack worst | rho_rob |', '|---|---:|---:|---:|---:|---:|---:|',
                      *rows, '']
        lines += time_lines(runs, labels, summary['branch_epochs']) + code_lines(runs)
        compare_figure(results, os.path.join(a.out, 'per_class.png'))
        if a.sweep:
            sweep_figure(runs, a.sweep[0], os.path.join(a.out, 'sweep.png'))
            lines += [f'Sweep of --{a.sweep[0]}: sweep.png (average and worst-class accuracy '
                      'against the value, one point per seed, the line through the means).', '']
    if failures:
        lines += ['Not finished:', ''] + [
            f"- {f['task']}: {f['status']}{': ' + f['why'] if f['why'] else ''} (log: "
            f"{f['log']})" for f in failures] + ['']
    run.write_atomic(os.path.join(a.out, 'table.md'), '\n'.join(lines))
    return summary


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the runs in flight are stopped too


def main(argv=None) -> int:
    """The exit status: 0 when every task finished, 1 when some did not, 2 for a user's
    mistake (one `error:` line)."""
    try:
        return reproduce(argv)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted; the runs in flight were stopped. Rerun the same command to '
              'resume them.', file=sys.stderr)
        return 130


def reproduce(argv=None) -> int:
    args = parse_args(argv)
    if __name__ == '__main__':
        signal.signal(signal.SIGTERM, _interrupt)
    if args.device == 'auto':
        import torch  # only to see whether CUDA is there
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    plan = Plan(args)
    release, note = run.lock(args.out, '--out')  # one reproduce.py per results folder
    try:
        if note:
            print(note)
        stale = plan.stale_runs()
        if stale:
            raise UserError(f'{len(stale)} run folders in {args.out} hold runs of another '
                            f'experiment than this command\'s: {"; ".join(stale[:3])}'
                            f'{" ..." if len(stale) > 3 else ""}. Reusing them would report '
                            'another experiment: pick a new --out, or pass the recipe they '
                            'were made with.')
        start = time.time()
        try:
            run_plan(plan, args.jobs, on_cpu=args.device == 'cpu')
        finally:  # a cut (Ctrl-C, SIGTERM at a deadline) still tables what finished
            for task in plan.tasks:
                if task.status in ('pending', 'running') and not plan.finished(task):
                    task.status = 'interrupted'
            summary = tabulate(plan)
    finally:
        release()
    with open(os.path.join(args.out, 'table.md')) as f:
        print(f.read())
    print(f'reproduce: {time.time() - start:.0f} s; wrote {args.out}/table.md, results.json'
          + (', per_class.png' if summary['runs'] else ''))
    if summary['failures']:
        print(f"error: {len(summary['failures'])} tasks did not finish (see table.md); rerun "
              'the same command to resume them.', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
