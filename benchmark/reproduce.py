"""One reproduce command, from its parsed options to its table: resolve the options against the
protocol (resolve), then plan, refuse run folders that hold another experiment, run what is not
finished and table what is (reproduce)."""
import os
import sys
import time

from engine import run
from engine.cli import UserError

from .plan import Plan, number
from .processes import run_plan
from .protocols import PROTOCOLS, parent_of, variants
from .tables import tabulate


def resolve(args, train_args):
    """The options of scripts/reproduce.py checked and completed: the methods with the runs they
    start from, the protocol's epochs and subsets unless overridden, the data, the sweep;
    train_args (the options reproduce.py does not know) go to every train.py run. A UserError
    names a bad option before anything is trained."""
    try:
        args.methods = [m for m in args.methods.split(',') if m]
        args.seeds = [int(s) for s in args.seeds.split(',') if s]
    except ValueError:
        raise UserError(f'--seeds must be comma-separated integers, got {args.seeds!r}.')
    methods = variants()
    unknown = [m for m in args.methods if m not in methods]
    if unknown or not args.methods:
        raise UserError(f"--methods: unknown {unknown or 'none given'}; choose from "
                        f"{', '.join(methods)}.")
    if not args.seeds or args.jobs < 1:
        raise UserError('need at least one seed and --jobs >= 1.')
    # A branched method needs its parent's run of the same seed: add it, first.
    wanted = []
    for m in args.methods:
        parent = parent_of(m, args.recipe)
        for name in ([parent] if parent else []) + [m]:
            if name not in wanted:
                wanted.append(name)
    args.methods = sorted(wanted, key=list(methods).index)
    for flag in ('epochs', 'n_eval', 'n_autoattack'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f'--{flag} must be >= 1, got {getattr(args, flag)}.')
    if args.n_autoattack is not None and args.attack != 'all':
        raise UserError(f'--n_autoattack sizes the AutoAttack subset, and --attack {args.attack} '
                        'runs no AutoAttack: drop it, or pass --attack all.')
    proto = PROTOCOLS[args.protocol]
    args.epochs = args.epochs or proto.epochs
    args.n_eval = args.n_eval or proto.n_eval
    args.n_autoattack = args.n_autoattack or proto.n_autoattack
    args.train_args = train_args
    if proto.data_dir and not any(a.startswith('--data_dir') for a in train_args):
        raise UserError(f'--protocol {args.protocol} reads the images from a class folder: pass '
                        '--data_dir DIR (DIR/train/<class>/, DIR/test/<class>/), e.g. the '
                        'CIFAR-10 JPEG copy unpacked from ../shared/data/cifar10-jpeg.tar.gz.')
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
        if not key or not values or len({number(v) for v in values}) != len(values):
            raise UserError(f'--sweep {args.sweep!r}: write FLAG=V1,V2,... (distinct values), '
                            'e.g. dafa_lambda=0.25,0.5,1.0.')
        args.sweep = (key.lstrip('-'), values)
    return args


def reproduce(args) -> int:
    """Plan, run and table a resolved command (resolve); the exit status: 0 when every task
    finished, 1 when some did not. A cut (KeyboardInterrupt) still tables what finished."""
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
