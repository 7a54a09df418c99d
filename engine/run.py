"""The run folder: args.json, training.log, metrics.jsonl and the checkpoints."""
import glob
import json
import logging
import os
import sys

LATEST = 'checkpoint-latest.pt'


def checkpoint_path(model_dir: str, epoch=None) -> str:
    return os.path.join(model_dir, LATEST if epoch is None else f'checkpoint-epoch{epoch}.pt')


def prepare(model_dir: str, *, overwrite: bool, resume) -> None:
    """Create the run folder; refuse to clobber another run's checkpoints unless told to."""
    existing = glob.glob(os.path.join(model_dir, 'checkpoint-*.pt'))
    resuming_here = resume and os.path.abspath(os.path.dirname(resume)) == os.path.abspath(model_dir)
    if existing and not (overwrite or resuming_here):
        raise FileExistsError(
            f'{model_dir!r} already holds a run ({len(existing)} checkpoints). Continue it with '
            f'--resume {checkpoint_path(model_dir)}, pick another --model_dir, or pass '
            '--overwrite to replace it.')
    if overwrite and not resuming_here:
        for name in existing + [os.path.join(model_dir, 'metrics.jsonl')]:
            if os.path.exists(name):
                os.remove(name)
    os.makedirs(model_dir, exist_ok=True)


def save_args(model_dir: str, args) -> None:
    with open(os.path.join(model_dir, 'args.json'), 'w') as f:
        json.dump(vars(args), f, indent=2, sort_keys=True)


def make_logger(model_dir: str) -> logging.Logger:
    """Log to stdout and, appending, to model_dir/training.log."""
    logger = logging.getLogger(f'dafa.train.{os.path.abspath(model_dir)}')
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S')
    for handler in (logging.StreamHandler(sys.stdout),
                    logging.FileHandler(os.path.join(model_dir, 'training.log'))):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def append_metrics(model_dir: str, row: dict) -> None:
    with open(os.path.join(model_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(row) + '\n')


def truncate_metrics(model_dir: str, last_epoch: int) -> None:
    """Drop metrics rows after last_epoch, so resuming from an earlier checkpoint in the same
    folder does not leave two rows for one epoch."""
    path = os.path.join(model_dir, 'metrics.jsonl')
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if json.loads(line)['epoch'] <= last_epoch]
    with open(path, 'w') as f:
        f.writelines(rows)
