"""Image-folder datasets (DIR/{train,test}/<class>/<image>), decoded once into a uint8 cache.

Decoding the 60k CIFAR-10 JPEGs takes ~10 s on one core; the decoded tensors are saved next
to the data as DIR/.uint8-cache.pt and reused while the files (names and bytes) are unchanged.
The key hashes every file's content, not its size and mtime, which a replaced file can keep.
A folder that cannot be written (read-only) is decoded in memory each time, with one warning.
The layout itself is checked by data.datasets, which owns the error types.
"""
import hashlib
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

CACHE_NAME = '.uint8-cache.pt'
TEST_CACHE_NAME = '.uint8-cache-test.pt'  # a test-only load's (eval.py on DIR/test alone)
_CACHE_VERSION = 2  # 2: keyed by file content (1 was keyed by size and mtime)
_DECODE_CHUNK = 64  # images per task sent to a worker; amortises pickling overhead


def list_classes(split_dir: Path) -> List[str]:
    """Sorted names of the class folders in split_dir (hidden folders skipped)."""
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith('.'))


def _image_files(split_dir: Path, class_names: Sequence[str]) -> Tuple[List[str], List[int]]:
    extensions = set(Image.registered_extensions())  # every format this PIL build can open
    files, labels = [], []
    for label, name in enumerate(class_names):
        # scandir and str paths: listing 60k files this way is ~7x faster than pathlib.
        with os.scandir(split_dir / name) as entries:
            found = sorted(e.path for e in entries
                           if e.is_file() and not e.name.startswith('.')
                           and os.path.splitext(e.name)[1].lower() in extensions)
        if not found:
            raise ValueError(f"class folder {split_dir / name} holds no image files; "
                             f"add images or remove the folder")
        files += found
        labels += [label] * len(found)
    return files, labels


def _fingerprint(root: Path, files: Sequence[str]) -> str:
    """sha256 over every file's path relative to root and its bytes: changes when the data do."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, 'rb') as f:
            content = f.read()
        digest.update(f'{os.path.relpath(path, root)}\0{len(content)}\0'.encode())
        digest.update(content)
    return digest.hexdigest()


def _decode(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; runs in pool workers, so it takes and returns picklable values."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except Exception as e:  # PIL raises several types; name the file either way
        raise ValueError(f"cannot decode image {path}: {e}") from e


def _decode_all(paths: Sequence[str], num_workers: int) -> torch.Tensor:
    """(N, 3, H, W) uint8, using a pool of num_workers processes when num_workers > 0."""
    pool = multiprocessing.Pool(num_workers) if num_workers > 0 else None
    try:
        images = pool.imap(_decode, paths, _DECODE_CHUNK) if pool else map(_decode, paths)
        out = None
        for i, image in enumerate(images):
            if out is None:
                out = np.empty((len(paths),) + image.shape, dtype=np.uint8)
                if image.shape[0] != image.shape[1]:
                    raise ValueError(f"{paths[0]} is {image.shape[1]}x{image.shape[0]} px; "
                                     f"images must be square, so resize or crop them first")
            if image.shape != out.shape[1:]:
                raise ValueError(
                    f"{paths[i]} is {image.shape[1]}x{image.shape[0]} px but {paths[0]} is "
                    f"{out.shape[2]}x{out.shape[1]} px; a folder dataset needs one image size, "
                    f"so resize the images first")
            out[i] = image
    finally:
        if pool:
            pool.terminate()
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _read_cache(path: Path, fingerprint: str, splits: dict) -> Optional[dict]:
    """The cache's blob when it was written for these files (fingerprint) and holds what their
    decode would: per split (splits: name -> (files, labels)), uint8 (N, 3, H, W) images, one
    per file, and exactly their labels; else None (decode again)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as e:  # a truncated or foreign file: decode again and overwrite it
        warnings.warn(f"ignoring unreadable decode cache {path} ({e}); decoding the images again")
        return None
    if not isinstance(blob, dict) or blob.get('version') != _CACHE_VERSION or (
            blob.get('fingerprint') != fingerprint):
        return None  # the folder changed since the cache was written, or not our cache
    for split, (files, labels) in splits.items():
        x, y = blob.get(f'x_{split}'), blob.get(f'y_{split}')
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
                and len(x) == len(files) and y.dtype == torch.int64 and y.tolist() == labels):
            warnings.warn(f'ignoring decode cache {path}: its {split} split is not what these '
                          'files decode to; decoding the images again')
            return None
    return blob


def _write_cache(path: Path, blob: dict) -> None:
    tmp = path.with_name(f'{path.name}.tmp{os.getpid()}')
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file
    except (OSError, RuntimeError) as e:  # torch.save reports an unwritable path as RuntimeError
        if tmp.is_file():
            tmp.unlink()
        warnings.warn(f"cannot write decode cache {path} ({e}); decoded in memory instead, "
                      f"so the next run decodes the images again")


def load_folder(root: Path, class_names: Sequence[str], num_workers: int,
                test_only: bool = False):
    """-> (x_train, y_train, x_test, y_test): uint8 (N, 3, H, W) and int64 labels.

    class_names fixes the label order; root/train and root/test must hold those folders, or
    with test_only root/test alone (x_train then empty, and its cache a file of its own, so
    that it never replaces the whole folder's).
    """
    names = ('test',) if test_only else ('train', 'test')
    splits = {split: _image_files(root / split, class_names) for split in names}
    fingerprint = _fingerprint(root, [f for split in names for f in splits[split][0]])
    cache = root / (TEST_CACHE_NAME if test_only else CACHE_NAME)
    blob = _read_cache(cache, fingerprint, splits)
    if blob is None:
        blob = {'version': _CACHE_VERSION, 'fingerprint': fingerprint,
                'class_names': list(class_names)}
        for split, (files, labels) in splits.items():
            blob[f'x_{split}'] = _decode_all(files, num_workers)
            blob[f'y_{split}'] = torch.tensor(labels, dtype=torch.int64)
        if test_only:
            blob['x_train'] = blob['x_test'][:0]
            blob['y_train'] = blob['y_test'][:0]
        if blob['x_train'].shape[1:] != blob['x_test'].shape[1:] and not test_only:
            raise ValueError(f"train images are {tuple(blob['x_train'].shape[2:])} px but test "
                             f"images are {tuple(blob['x_test'].shape[2:])} px under {root}; "
                             f"resize them to one size")
        _write_cache(cache, blob)
    return blob['x_train'], blob['y_train'], blob['x_test'], blob['y_test']
