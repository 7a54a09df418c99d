"""Checkpoints: one dict per file, written atomically, read with PyTorch's safe loader.

Unpickling can run code, so every checkpoint is read with torch.load(weights_only=True): only
tensors, dicts, lists, tuples, strings, numbers and None. Our checkpoints hold nothing else (the
RNG states are stored as tensors and lists). Files written before that change hold numpy RNG
state; for them exactly the four numpy names that rebuild that array are allow-listed, and their RNG
state is converted on load. A file that needs anything more is refused: it may carry code.
"""
import os
import pickle
import random
import warnings

import numpy as np
import torch

from .cli import UserError
from .run import replacing

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

# What a checkpoint of the previous format needs beyond the safe types: numpy's RNG state array.
_LEGACY_NUMPY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct]


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace (atomic on POSIX).
    A failure (a full disk, say) leaves any previous file at path untouched and raises
    UserError naming the path."""
    with replacing(path, then='resume from the last checkpoint', what='checkpoint') as tmp:
        torch.save(obj, tmp)


def cpu_copy(obj):
    """obj with every tensor replaced by a copy on the CPU (lists, tuples and dicts walked):
    a state that later training steps cannot change, and that any process can unpickle."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return obj


def rng_state() -> dict:
    """The global RNG states in types the safe loader reads (tensors, lists, numbers)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {'torch': torch.get_rng_state(),
             'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)),
                       'pos': int(pos), 'has_gauss': int(has_gauss),
                       'cached_gaussian': float(cached_gaussian)},
             'python': {'version': version, 'internal': list(internal),
                        'gauss_next': gauss_next}}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def train_checkpoint_problem(ckpt: dict) -> str:
    """The first way a train.py checkpoint's fields depart from what this code writes ('' when
    none): a crafted or damaged file is refused before anything reads it. The RNG state is
    tried (and the current one put back), since only setting it tells whether it is one."""
    def kind(key, *types):
        value = ckpt.get(key)
        return isinstance(value, types) and not isinstance(value, bool)
    checks = (('format', kind('format', int) or 'format' not in ckpt),
              ('epoch', kind('epoch', int) and ckpt['epoch'] >= 0),
              ('num_classes', kind('num_classes', int)), ('image_size', kind('image_size', int)),
              ('model', kind('model', dict) and all(
                  isinstance(v, torch.Tensor) for v in ckpt['model'].values())),
              ('optimizer', kind('optimizer', dict)
               and isinstance(ckpt['optimizer'].get('state'), dict)
               and isinstance(ckpt['optimizer'].get('param_groups'), list)),
              ('args', kind('args', dict) and all(
                  isinstance(ckpt['args'].get(k), str) for k in ('model', 'dataset', 'loss'))),
              ('method', kind('method', dict) and isinstance(ckpt['method'].get('name'), str)
               and isinstance(ckpt['method'].get('state'), dict)),
              ('records', kind('records', dict) or 'records' not in ckpt),
              ('best', ckpt.get('best') is None or kind('best', dict) and all(
                  isinstance(ckpt['best'].get(k), str) for k in ('split', 'criterion'))),
              ('recipe', ckpt.get('recipe') is None or kind('recipe', dict) and isinstance(
                  ckpt['recipe'].get('args'), dict) and isinstance(
                  ckpt['recipe'].get('data'), (dict, type(None)))),
              ('code_history', kind('code_history', list) and all(
                  isinstance(v, dict) for v in ckpt['code_history'])
               or 'code_history' not in ckpt))
    bad = next((key for key, ok in checks if not ok), '')
    if bad:
        return f'its {bad!r} is not what train.py writes'
    current = rng_state()
    try:
        set_rng_state(ckpt['rng'])
    except Exception as err:  # any malformed state: a type, a key, a length
        return f"its 'rng' is not an RNG state ({type(err).__name__}: {err})"
    finally:
        set_rng_state(current)
    return ''


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    numpy_state, python_state = state['numpy'], state['python']
    if isinstance(numpy_state, dict):
        np.random.set_state((numpy_state['kind'], numpy_state['keys'].numpy().astype(np.uint32),
                             numpy_state['pos'], numpy_state['has_gauss'],
                             numpy_state['cached_gaussian']))
    else:  # the previous format: numpy's own tuple
        np.random.set_state(numpy_state)
    if isinstance(python_state, dict):
        random.setstate((python_state['version'], tuple(python_state['internal']),
                         python_state['gauss_next']))
    else:
        random.setstate(python_state)
    if 'cuda' in state and torch.cuda.is_available():
        # Saved on a machine with more GPUs: the devices this one has (set_rng_state_all would
        # fail with 'invalid device ordinal'); a device it lacks has no state to restore.
        for device, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def load(path: str, *, trusted: bool = False):
    """Read a checkpoint onto the CPU with the safe loader; UserError with one clear
    sentence when it is missing, unreadable, or holds objects the safe loader refuses (never
    executed). Always the CPU: the RNG states must stay CPU ByteTensors (torch.set_rng_state
    refuses CUDA ones), and load_state_dict moves weights and optimizer state to their device.

    trusted=True uses the unsafe loader (full unpickling, which can run code): only for a file
    the user vouches for, and with a warning that says so.
    """
    if not os.path.isfile(path):
        raise UserError(f'checkpoint {path!r} does not exist; pass the path of a '
                        "'checkpoint-*.pt' file from a run folder.")
    if trusted:
        warnings.warn(f'loading {path} with the unsafe loader: unpickling runs any code the file '
                      'carries. Do this only for a file from a source you trust.', stacklevel=2)
        try:
            return torch.load(path, map_location='cpu', weights_only=False)
        except Exception as err:
            raise UserError(f'checkpoint {path!r} could not be read ({_detail(err)}).') \
                from err
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        refused = _refused_object(err)
        if refused:
            raise UserError(
                f'checkpoint {path!r} holds objects that only a full unpickle can build '
                f'({refused}), and unpickling can run code: it was not loaded and nothing in it '
                'was executed. If you trust its source, train.py and eval.py load it with '
                '--trust_checkpoint.'
            ) from err
        raise UserError(f'checkpoint {path!r} could not be read ({_detail(err)}); it may '
                        'be truncated or not a torch checkpoint.') from err


def _refused_object(err: Exception) -> str:
    """The safe loader's reason when it refused a global or a type ('' for other failures)."""
    if not isinstance(err, pickle.UnpicklingError):
        return ''
    return next((line.strip().rstrip('.') for line in str(err).splitlines()
                 if 'GLOBAL' in line or 'Can only build' in line), '')


def _detail(err: Exception) -> str:
    """The informative line of a load error (the safe loader wraps it in boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith('WeightsUnpickler error:') and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(err).__name__


def nonfinite_tensor(named_tensors) -> str:
    """The name of the first floating-point tensor with a NaN or inf, or '' if none.
    One host sync for the whole set."""
    named = [(name, t) for name, t in named_tensors if t.is_floating_point()]
    if not named:
        return ''
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return next((name for (name, _), ok in zip(named, finite) if not ok), '')
