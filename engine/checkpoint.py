"""Checkpoints: one dict per file, written atomically so a crash never leaves a broken one."""
import os
import random

import numpy as np
import torch


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace (atomic on POSIX)."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state() -> dict:
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(),
             'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def load(path: str, device='cpu') -> dict:
    """Load a checkpoint written by save_atomic, with a clear error when it is not there."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist; pass the path of a '
                                "'checkpoint-*.pt' file from a run folder.")
    try:
        # weights_only=False: the dict carries numpy RNG state and the args dict.
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise RuntimeError(f'checkpoint {path!r} could not be read ({err}); '
                           'it may be truncated or not a torch checkpoint.') from err
