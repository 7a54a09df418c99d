"""Reading checkpoints, ours and the official formats, and building the model from one.

Ours (train.py; the keys in engine.fit.checkpoint_state): 'model' and 'args' among them, 'method'
({name, state}) and 'eval_model' (a method's averaged weights, which are what is evaluated).
Official: a plain state_dict or {'state_dict': state_dict}, with keys possibly prefixed by
'module.' (DataParallel) and/or '_orig_mod.' (torch.compile). An official checkpoint carries no
args, so the model and dataset come from the command line.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

import models
from engine import checkpoint
from fairness import upgrade_checkpoint

from engine.cli import UserError

WRAPPER_PREFIXES = ('module.', '_orig_mod.')
_SHOWN_KEYS = 4  # keys listed per kind of mismatch; the rest are counted


@dataclass
class Checkpoint:
    path: str
    state_dict: Dict[str, torch.Tensor]  # wrapper prefixes removed
    args: Optional[dict]                 # train.py's resolved args; None for official files
    epoch: Optional[int] = None
    class_names: Optional[List[str]] = None
    num_classes: Optional[int] = None
    image_size: Optional[int] = None
    method: Optional[dict] = None                 # {'name', 'state'}: the fairness method's
    test_set_sha256: Optional[str] = None         # data.Dataset.test_fingerprint at training
    averaged: bool = False                        # the weights are a method's average (CFA)
    recipe: Optional[dict] = None                 # the run's recipe (engine/identity.py)
    selection: Optional[dict] = None              # checkpoint-best.pt: how its epoch was chosen


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Remove leading 'module.' / '_orig_mod.' from every key, in any order and number
    (a compiled DataParallel model saves '_orig_mod.module.' keys)."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split('.', 1)[1]
        out[key] = value
    return out


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path: str, *, trusted: bool = False) -> Checkpoint:
    """Load any supported checkpoint layout onto the CPU with the safe loader (trusted: the
    unsafe one, see engine.checkpoint.load); UserError if it is none."""
    obj = checkpoint.load(path, trusted=trusted)
    if isinstance(obj, dict) and 'model' in obj and 'args' in obj:
        if not _is_state_dict(obj['model']):
            raise UserError(f"checkpoint {path!r}: its 'model' entry is not a state_dict; "
                            'pass a checkpoint written by train.py.')
        # A method that reports a weight average (CFA) saves it as 'eval_model'.
        weights = obj['model'] if obj.get('eval_model') is None else obj['eval_model']
        return Checkpoint(path, strip_wrapper_prefixes(weights), dict(obj['args']),
                          epoch=obj.get('epoch'), class_names=obj.get('class_names'),
                          num_classes=obj.get('num_classes'), image_size=obj.get('image_size'),
                          method=upgrade_checkpoint(obj)['method'] if 'method' in obj else None,
                          test_set_sha256=obj.get('test_set_sha256'),
                          averaged=obj.get('eval_model') is not None,
                          recipe=obj.get('recipe'), selection=obj.get('selection'))
    if isinstance(obj, dict) and _is_state_dict(obj.get('state_dict')):
        return Checkpoint(path, strip_wrapper_prefixes(obj['state_dict']), None)
    if _is_state_dict(obj):
        return Checkpoint(path, strip_wrapper_prefixes(obj), None)
    shown = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise UserError(f'checkpoint {path!r} is in no known layout (found {shown}); pass a '
                    "train.py checkpoint, a state_dict or {'state_dict': state_dict}.")


def _listed(keys: List[str]) -> str:
    more = f', +{len(keys) - _SHOWN_KEYS} more' if len(keys) > _SHOWN_KEYS else ''
    return ', '.join(keys[:_SHOWN_KEYS]) + more


def state_dict_mismatch(model: torch.nn.Module, state_dict: dict) -> List[str]:
    """What keeps a strict load of state_dict into model from working, one phrase per kind
    (empty when it fits). Pass a model on the meta device: nothing is copied."""
    own = model.state_dict()
    shapes = [k for k in state_dict if k in own and own[k].shape != state_dict[k].shape]
    rest = {k: v for k, v in state_dict.items() if k not in shapes}
    # strict=False reports missing/unexpected keys after the model's load hooks (e.g. the
    # WideResNet dropping the official, unused sub_block1) instead of raising.
    result = model.load_state_dict(rest, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in shapes]
    problems = []
    if shapes:
        problems.append('shapes differ for ' + _listed(
            [f'{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})'
             for k in shapes]))
    if missing:
        problems.append(f'{len(missing)} keys missing from the checkpoint ({_listed(missing)})')
    if result.unexpected_keys:
        problems.append(f'{len(result.unexpected_keys)} unexpected keys in the checkpoint '
                        f'({_listed(result.unexpected_keys)})')
    return problems


def _meta_model(name: str, num_classes: int, image_size: int) -> torch.nn.Module:
    with torch.device('meta'):
        return models.create(name, num_classes, image_size)


def fitting_models(state_dict: dict, num_classes: int, image_size: int) -> List[str]:
    """The registered architectures that state_dict loads into strictly."""
    fits = []
    for name in models.MODELS:
        try:
            model = _meta_model(name, num_classes, image_size)
        except ValueError:  # the architecture does not support this image size
            continue
        if not state_dict_mismatch(model, state_dict):
            fits.append(name)
    return fits


# torchvision's ResNet names -> ours (a CIFAR ResNet written with torchvision's module names:
# 3x3 stem, no max-pool, 'fc' and 'downsample' for our 'linear' and 'shortcut').
TORCHVISION_NAMES = (('fc.', 'linear.'), ('.downsample.', '.shortcut.'))


def torchvision_renamed(state_dict: dict) -> Optional[dict]:
    """state_dict with torchvision's ResNet module names replaced by ours, or None when it has
    none of them."""
    if not any(k.startswith('fc.') or '.downsample.' in k for k in state_dict):
        return None
    out = {}
    for key, value in state_dict.items():
        key = 'linear.' + key[3:] if key.startswith('fc.') else key
        out[key.replace('.downsample.', '.shortcut.')] = value
    return out


def build_model(name: str, num_classes: int, image_size: int, state_dict: dict,
                device, normalize=None, note=print) -> torch.nn.Module:
    """models.create(name, ...) with state_dict loaded strictly, fp32, in eval mode, on device;
    normalize: (mean, std) per channel, applied inside the returned model.

    A checkpoint of another architecture or class count raises UserError listing the
    mismatch, before any weight is copied. torchvision-style names (fc, downsample) are mapped
    to ours when that makes the checkpoint fit (said through note), else named in the error.
    """
    meta = None
    try:
        meta = _meta_model(name, num_classes, image_size)
        problems = state_dict_mismatch(meta, state_dict)
    except ValueError as err:  # the architecture does not support this image size
        problems = [str(err)]
    renamed = torchvision_renamed(state_dict) if problems and meta is not None else None
    if renamed is not None:
        if not state_dict_mismatch(_meta_model(name, num_classes, image_size), renamed):
            note('the checkpoint uses torchvision\'s module names; loaded with fc -> linear '
                 'and downsample -> shortcut')
            state_dict, problems = renamed, []
        else:
            problems.append('its keys are torchvision-style (fc, downsample), and renamed to '
                            "ours (linear, shortcut) they still do not fit: torchvision's "
                            'ImageNet ResNet (7x7 stem, max-pool) is not the CIFAR ResNet-18 of '
                            'models/; evaluate it with its own definition')
    if problems:
        fits = fitting_models(state_dict, num_classes, image_size)
        fix = (f'it fits --model {" or ".join(fits)}' if fits else
               f'no registered model with {num_classes} classes fits it; check --model and '
               '--dataset')
        raise UserError(f'the checkpoint does not fit --model {name} with {num_classes} '
                        f'classes at {image_size} px: {"; ".join(problems)}; {fix}.')
    model = models.create(name, num_classes, image_size, normalize=normalize)
    model.load_state_dict(state_dict, strict=True)
    return model.float().to(device).eval()
