"""The run folder: args.json, training.log, metrics.jsonl and the checkpoints."""
import glob
import json
import logging
import os
import sys

LATEST = 'checkpoint-latest.pt'


def checkpoint_path(model_dir: str, epoch=None) -> str:
    return os.path.join(model_dir, LATEST if epoch is None else f'checkpoint-epoch{epoch}.pt')


# What a run leaves in its folder (train.py and eval.py): replaced together by --overwrite.
# Other files in the folder are never touched.
RUN_FILES = ('checkpoint-*.pt', 'checkpoint-*.pt.tmp*', 'metrics.jsonl', 'training.log',
             'args.json', 'eval_*.json', 'eval_*.png', 'dafa_weights_similarity.png',
             'compare_per_class.png')


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def resumes_in_place(model_dir: str, resume) -> bool:
    """Whether --resume names a checkpoint inside model_dir (symlinks resolved)."""
    return bool(resume) and _same_path(os.path.dirname(os.path.abspath(resume)), model_dir)


def check_folder(model_dir: str, *, overwrite: bool, resume) -> bool:
    """Validate the run folder without changing anything. Returns whether starting this run
    replaces a run already there (--overwrite); FileExistsError if it would without it."""
    existing = glob.glob(os.path.join(glob.escape(model_dir), 'checkpoint-*.pt'))
    if not existing or resumes_in_place(model_dir, resume):
        return False
    if not overwrite:
        raise FileExistsError(
            f'{model_dir!r} already holds a run ({len(existing)} checkpoints). Continue it with '
            f'--resume {checkpoint_path(model_dir)}, pick another --model_dir, or pass '
            '--overwrite to replace it.')
    return True


def start(model_dir: str, *, replace: bool, resume) -> list:
    """Create the run folder, and when replace, delete the previous run's files (RUN_FILES),
    except the checkpoint --resume names. Call it once everything has been checked: it is the
    first write. Orphaned temporary files of killed saves go either way. Returns what was
    deleted."""
    os.makedirs(model_dir, exist_ok=True)
    patterns = RUN_FILES if replace else ('checkpoint-*.pt.tmp*',)
    removed = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(glob.escape(model_dir), pattern))):
            if resume and _same_path(path, resume):
                continue
            if os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    return removed


def save_args(model_dir: str, args) -> None:
    with open(os.path.join(model_dir, 'args.json'), 'w') as f:
        json.dump(vars(args), f, indent=2, sort_keys=True)


def make_logger(model_dir, prefix: str = '') -> logging.Logger:
    """Log to stdout and, appending, to model_dir/training.log (stdout only when model_dir is
    None: the processes other than rank 0). prefix starts every line."""
    logger = logging.getLogger(f'dafa.train.{prefix}{os.path.abspath(model_dir or "-")}')
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter(f'%(asctime)s {prefix}%(message)s', '%H:%M:%S')
    handlers = [logging.StreamHandler(sys.stdout)]
    if model_dir is not None:
        handlers.append(logging.FileHandler(os.path.join(model_dir, 'training.log')))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def append_metrics(model_dir: str, row: dict) -> None:
    with open(os.path.join(model_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(row) + '\n')


def _row_epoch(line: str):
    """The epoch of a metrics line, or None for a line cut short by a kill mid-append."""
    try:
        return json.loads(line)['epoch']
    except (ValueError, KeyError, TypeError):
        return None


def truncate_metrics(model_dir: str, last_epoch: int) -> None:
    """Drop metrics rows after last_epoch (and a torn last line), so resuming from an earlier
    checkpoint in the same folder does not leave two rows for one epoch. Rewritten atomically:
    a kill here leaves the old file."""
    path = os.path.join(model_dir, 'metrics.jsonl')
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [(line, _row_epoch(line)) for line in f]
    rows = [line for line, epoch in lines if epoch is not None and epoch <= last_epoch]
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.writelines(rows)
    os.replace(tmp, path)
