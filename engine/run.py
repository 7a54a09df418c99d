"""The run folder, in one place: its file names (checkpoints, metrics, evaluation results),
whether a run is finished, and the writes train.py makes (args.json, training.log,
metrics.jsonl). train.py, eval.py and the scripts read the folder through this module only."""
import contextlib
import glob
import json
import logging
import os
import socket
import sys
from typing import List, Optional

import torch

from .cli import UserError

LATEST = 'checkpoint-latest.pt'
METRICS = 'metrics.jsonl'


def checkpoint_path(model_dir: str, epoch=None) -> str:
    """checkpoint-latest.pt (epoch None: the commit point of the newest epoch), or the kept
    checkpoint-epoch<N>.pt."""
    return os.path.join(model_dir, LATEST if epoch is None else f'checkpoint-epoch{epoch}.pt')


def result_stem(attack: str, n_eval: Optional[int], tag: str,
                n_autoattack: Optional[int] = None, norm: str = 'Linf',
                aa_variant: Optional[str] = None) -> str:
    """eval.py's file stem for an evaluation: eval_<attack>_<tag>[_n<N>][_aa<M>][_l2][_<variant>],
    where tag
    names what was evaluated (epoch<E> for our checkpoints, best<split>_epoch<E> for a best
    checkpoint, sha<hash> for others), _n<N> a
    subset, _aa<M> AutoAttack on a subset of M, _l2 the L2 threat model and _<variant> an
    AutoAttack other than the standard one (e.g. _rand): a result never replaces another
    checkpoint's, subset's, norm's or attack's."""
    return (f'eval_{attack}_{tag}' + (f'_n{n_eval}' if n_eval else '')
            + (f'_aa{n_autoattack}' if n_autoattack and attack in ('aa', 'all') else '')
            + ('_l2' if norm == 'L2' else '')
            + (f'_{aa_variant}' if aa_variant and attack in ('aa', 'all') else ''))


def result_path(model_dir: str, attack: str, n_eval: Optional[int], epoch: int,
                n_autoattack: Optional[int] = None, best: Optional[str] = None) -> str:
    """The result eval.py writes for the checkpoint of epoch `epoch` of the run in model_dir
    (best: the split of its checkpoint-best.pt, which holds that epoch)."""
    tag = f'best{best}_epoch{epoch}' if best else f'epoch{epoch}'
    return os.path.join(model_dir, result_stem(attack, n_eval, tag, n_autoattack) + '.json')


def checkpoint_epoch(path: str) -> Optional[int]:
    """The epoch a checkpoint file holds, read without loading its tensors (None: no file or not
    readable)."""
    try:
        return int(torch.load(path, map_location='cpu', weights_only=True, mmap=True)['epoch'])
    except Exception:  # missing, torn or foreign: not a finished epoch either way
        return None


def metrics_rows(model_dir: str) -> List[dict]:
    """The rows of metrics.jsonl (a line torn by a kill is skipped)."""
    path = os.path.join(model_dir, METRICS)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def finished(model_dir: str, epochs: int) -> bool:
    """Whether the run in model_dir trained all its epochs: its metrics end with the row of the
    last epoch and checkpoint-latest.pt (written last) holds that epoch."""
    rows = metrics_rows(model_dir)
    return (bool(rows) and rows[-1].get('epoch') == epochs
            and checkpoint_epoch(checkpoint_path(model_dir)) == epochs)


# What a run leaves in its folder (train.py and eval.py): replaced together by --overwrite.
# Other files in the folder are never touched.
RUN_FILES = ('checkpoint-*.pt', '*.tmp[0-9]*', 'metrics.jsonl', 'training.log', 'args.json',
             'recipe.json', 'eval_*.json', 'eval_*.png', 'compare_per_class.png')
# Temporary files of atomic writes (checkpoints, JSON, metrics, figures), left by a kill.
TEMPORARY = '*.tmp[0-9]*'
LOCK = '.lock'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no process can have that pid
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _lock_holder(path: str):
    """(pid, host) written in a lock file; pid -1 on this host when it cannot be read (torn by a
    kill between create and write, or not a lock this code wrote)."""
    try:
        with open(path) as f:
            pid, host = f.read().split()
        return int(pid), host
    except (OSError, ValueError):
        return -1, socket.gethostname()


def make_folder(folder: str, what: str) -> None:
    """Create folder (and its parents) if needed; UserError naming `what` (a flag) when it
    cannot be: a file of that name, no permission, a full disk."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f'{what} {folder} is a file, not a folder; pass a folder.')
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f'cannot create {what} {folder} ({err.strerror or err}); pick a '
                        'writable place.') from err


def lock(folder: str, what: str):
    """Make folder this process's to write (one writer per folder): creates it if needed and a
    lock file holding this process's pid and host. A lock left by a process that no longer runs
    (on this host) is taken over. UserError when another process holds it. Returns (release, a
    note for the log or ''); release() removes the lock, and the folder if this call made it
    and it is still empty."""
    created = not os.path.isdir(folder)
    make_folder(folder, what)
    path, me, note = os.path.join(folder, LOCK), f'{os.getpid()} {socket.gethostname()}', ''
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid, host = _lock_holder(path)
            if host != socket.gethostname() or (pid > 0 and _alive(pid)):
                raise UserError(f'{what} {folder} is in use by process {pid} on {host} (lock '
                                f'file {path}): one writer per folder. Wait for it, stop it, or '
                                f'pick another folder; if that process is gone, delete {path}.')
            try:
                os.remove(path)
            except OSError as err:  # e.g. a folder of that name
                raise UserError(f'cannot take over the lock file {path} ({err.strerror or err}); '
                                'delete it and run again.') from err
            note = f'took over the lock of process {pid}, which no longer runs'
            continue
        except OSError as err:
            raise UserError(f'cannot write in {what} {folder} ({err.strerror or err}); check '
                            'that it is writable.') from err
        try:
            with os.fdopen(fd, 'w') as f:
                f.write(me + '\n')
        except OSError as err:  # a full disk: leave no empty lock behind
            with contextlib.suppress(OSError):
                os.remove(path)
            raise UserError(f'cannot write the lock file {path} ({err.strerror or err}); free '
                            'some space or pick another folder.') from err
        break
    else:  # another process took the lock we took over
        raise UserError(f'{what} {folder} is in use by another process (lock file {path}); '
                        'wait for it, or pick another folder.')

    def release() -> None:
        try:
            with open(path) as f:
                if f.read().strip() == me:
                    os.remove(path)
            if created:
                os.rmdir(folder)  # only if empty: a refused run leaves no folder behind
        except OSError:
            pass
    return release, note


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def resumes_in_place(model_dir: str, resume) -> bool:
    """Whether --resume names a checkpoint inside model_dir (symlinks resolved)."""
    return bool(resume) and _same_path(os.path.dirname(os.path.abspath(resume)), model_dir)


def resume_point(model_dir: str) -> Optional[str]:
    """The checkpoint a run in model_dir continues from: checkpoint-latest.pt, or, when a kill
    came before the first one was written, the newest kept checkpoint-epoch<N>.pt (None: no
    checkpoint)."""
    if os.path.isfile(checkpoint_path(model_dir)):
        return checkpoint_path(model_dir)
    kept = glob.glob(os.path.join(glob.escape(model_dir), 'checkpoint-epoch*.pt'))
    epochs = [int(os.path.basename(p)[len('checkpoint-epoch'):-3]) for p in kept
              if os.path.basename(p)[len('checkpoint-epoch'):-3].isdigit()]
    return checkpoint_path(model_dir, max(epochs)) if epochs else None


def check_folder(model_dir: str, *, overwrite: bool, resume) -> bool:
    """Validate the run folder without changing anything. Returns whether starting this run
    replaces what is there (--overwrite, or the files of a run that never wrote a checkpoint);
    UserError if it would replace a run without --overwrite."""
    point = resume_point(model_dir)
    if resumes_in_place(model_dir, resume):
        return False
    if point is None:  # leftovers of a run stopped before its first save: nothing to protect
        return any(os.path.isfile(os.path.join(model_dir, name))
                   for name in ('args.json', METRICS))  # train.py's, not a user's results
    if not overwrite:
        raise UserError(
            f'{model_dir!r} already holds a run. Continue it with --resume {point}, pick another '
            '--model_dir, or pass --overwrite to replace it.')
    return True


def start(model_dir: str, *, replace: bool, resume) -> list:
    """Create the run folder, and when replace, delete the previous run's files (RUN_FILES),
    except the checkpoint --resume names. Call it once everything has been checked: it is the
    first write. Orphaned temporary files of killed writes go either way. Returns what was
    deleted."""
    patterns = RUN_FILES if replace else (TEMPORARY,)
    removed = []
    try:
        os.makedirs(model_dir, exist_ok=True)
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(glob.escape(model_dir), pattern))):
                if resume and _same_path(path, resume):
                    continue
                if os.path.isfile(path):
                    os.remove(path)
                    removed.append(path)
    except OSError as err:
        raise UserError(f'cannot write in the run folder {model_dir} ({err.strerror or err}); '
                        'check that it is writable.') from err
    return removed


@contextlib.contextmanager
def replacing(path: str, suffix: str = '', then: str = 'rerun', what: str = ''):
    """Write path atomically: the body writes the yielded temporary path (in the same folder,
    ending in suffix), which then replaces path. A kill or a full disk leaves the previous file
    (or none), never a torn one, and no temporary file; a failure is a UserError naming the path
    (and what it is) and what to do then."""
    tmp = f'{path}.tmp{os.getpid()}{suffix}'
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports write failures as RuntimeError
        raise UserError(f'cannot write {what + " " if what else ""}{path} '
                        f'({getattr(err, "strerror", None) or err}); free disk space or check the '
                        f'folder is writable, then {then}.') from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str, text: str) -> None:
    """Write text to path atomically (see replacing)."""
    with replacing(path) as tmp, open(tmp, 'w') as f:
        f.write(text)


def save_json(model_dir: str, name: str, obj) -> None:
    write_atomic(os.path.join(model_dir, name), json.dumps(obj, indent=2, sort_keys=True) + '\n')


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
    path = os.path.join(model_dir, METRICS)
    try:
        with open(path, 'a') as f:
            f.write(json.dumps(row) + '\n')
    except OSError as err:  # a torn last line is dropped on resume (truncate_metrics)
        raise UserError(f'cannot write {path} ({err.strerror or err}); free disk space or '
                        'check the folder is writable, then resume from the last '
                        'checkpoint.') from err


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
    path = os.path.join(model_dir, METRICS)
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [(line, _row_epoch(line)) for line in f]
    rows = [line for line, epoch in lines if epoch is not None and epoch <= last_epoch]
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.writelines(rows)
    os.replace(tmp, path)
