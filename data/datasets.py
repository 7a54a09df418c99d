"""Datasets as whole uint8 tensors: CIFAR-10/100, STL-10 (resized to 64 px), image folders and
synthetic data.

Every set is returned in full as uint8 (N, 3, H, W) CPU tensors so that data.loader.Loader can
move it to the device once; augmentation happens there, per batch.
"""
import hashlib
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from engine.cli import UserError

from .folder import list_classes, load_folder
from .synthetic import SyntheticConfig, make_synthetic

DATASETS = ('cifar10', 'cifar100', 'stl10', 'folder', 'synthetic')

STL10_IMAGE_SIZE = 64  # px; the paper trains on STL-10 resized from 96 px
# Per socket operation, not per download: a blocked network fails in seconds, not minutes.
DOWNLOAD_SOCKET_TIMEOUT_S = 20
_RESIZE_CHUNK = 1000  # images per float32 resize pass, bounding it to ~110 MB at 96 px


def _torchvision_dataset(class_name: str):
    """A constructor that imports torchvision on first use. Importing it runs torch code that
    starts the OpenMP worker threads, and those must start after engine.device.setup has
    flushed denormals on the CPU: threads inherit that setting only when they are created."""
    def construct(*args, **kwargs):
        import torchvision
        return getattr(torchvision.datasets, class_name)(*args, **kwargs)
    return construct


# torchvision dataset and the folder it expects (or downloads) under --data_dir.
_TORCHVISION = {
    'cifar10': (_torchvision_dataset('CIFAR10'), 'cifar-10-batches-py'),
    'cifar100': (_torchvision_dataset('CIFAR100'), 'cifar-100-python'),
    'stl10': (_torchvision_dataset('STL10'), 'stl10_binary'),
}
_FOLDER_LAYOUT = 'DIR/train/<class>/<image> and DIR/test/<class>/<image>'


@dataclass
class Dataset:
    name: str
    class_names: List[str]
    x_train: torch.Tensor  # uint8 (N, 3, H, W), CPU
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor   # uint8 (M, 3, H, W)
    y_test: torch.Tensor   # int64 (M,)
    # Zero padding (pixels) of the training random crop. The synthetic templates are tied to
    # pixel positions, so shifting them would change the task: it uses 0.
    crop_pad: int = 4
    # A validation split held out of the training set (hold_out_validation), else None.
    x_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None
    # The training images a long-tailed subset left out (long_tailed_subset), in the
    # generator's order: the validation split is drawn from them first, so it costs the tail
    # nothing.
    x_spare: Optional[torch.Tensor] = None
    y_spare: Optional[torch.Tensor] = None

    def __post_init__(self):
        for split in ('train', 'test'):
            x, y = getattr(self, f'x_{split}'), getattr(self, f'y_{split}')
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
                raise ValueError(f"{self.name}: x_{split} must be uint8 (N, 3, H, H), "
                                 f"got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise ValueError(f"{self.name}: y_{split} must be int64 ({x.shape[0]},), "
                                 f"got {y.dtype} {tuple(y.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {tuple(self.x_train.shape[1:])} and "
                             f"test images {tuple(self.x_test.shape[1:])} differ in size")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def test_fingerprint(self) -> str:
        """sha256 of the test images and labels: a checkpoint keeps it so that evaluation can
        refuse a test set that changed since training (an edited generator or folder)."""
        digest = hashlib.sha256(self.x_test.contiguous().numpy().tobytes())
        digest.update(self.y_test.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def train_fingerprint(self) -> str:
        """sha256 of the training images and labels as trained on (after --n_train and the
        validation split): part of a run's recipe, so a resume on other data is refused."""
        digest = hashlib.sha256(self.x_train.contiguous().numpy().tobytes())
        digest.update(self.y_train.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def hold_out_validation(self, per_class: int) -> None:
        """Move per_class images of each class into x_val / y_val: the first ones a long-tailed
        subset left out of that class (x_spare), then, where those are too few (the head class
        keeps all of its images), its last training images."""
        spare_y = self.y_spare if self.y_spare is not None else self.y_train[:0]
        val_x, val_y, keep = [], [], torch.ones(len(self.y_train), dtype=torch.bool)
        for c in range(self.num_classes):
            from_spare = (spare_y == c).nonzero().flatten()[:per_class]
            index = (self.y_train == c).nonzero().flatten()
            need = per_class - len(from_spare)  # from the class's own training images
            if need >= len(index):
                raise ValueError(f'class {self.class_names[c]} has {len(index)} training images, '
                                 f'so holding out {per_class} leaves none to train on; lower it')
            from_train = index[len(index) - need:] if need else index[:0]
            keep[from_train] = False
            val_x += [self.x_spare[from_spare]] if len(from_spare) else []
            val_y += [spare_y[from_spare]] if len(from_spare) else []
        val_x.append(self.x_train[~keep])
        val_y.append(self.y_train[~keep])
        self.x_val, self.y_val = torch.cat(val_x), torch.cat(val_y)
        self.x_train, self.y_train = self.x_train[keep], self.y_train[keep]
        self.x_spare = self.y_spare = None

    @property
    def validation(self) -> Optional[dict]:
        """The held-out split as a checkpoint records it: size per class and a sha256."""
        if self.y_val is None:
            return None
        digest = hashlib.sha256(self.x_val.contiguous().numpy().tobytes())
        digest.update(self.y_val.contiguous().numpy().tobytes())
        return {'per_class': len(self.y_val) // self.num_classes, 'sha256': digest.hexdigest()}

    @property
    def image_size(self) -> int:
        """Side of the square images, in pixels."""
        return self.x_train.shape[-1]


def stratified_subset(y: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Indices of a class-stratified subset of size n, ascending.

    Each class keeps its first n // num_classes samples in dataset order; the first
    n % num_classes classes keep one more. Deterministic, so no seed is needed.
    """
    if not num_classes <= n <= len(y):
        raise ValueError(f"n_train={n} must be between the number of classes ({num_classes}) "
                         f"and the training-set size ({len(y)})")
    keep = []
    for c in range(num_classes):
        wanted = n // num_classes + (c < n % num_classes)
        index = (y == c).nonzero().flatten()
        if len(index) < wanted:
            raise ValueError(f"class {c} has {len(index)} training samples but a stratified "
                             f"n_train={n} takes {wanted} from it; lower n_train")
        keep.append(index[:wanted])
    return torch.cat(keep).sort().values


def long_tailed_subset(y: torch.Tensor, num_classes: int, ratio: float):
    """(kept, left out): the indices of LDAM-DRW's long-tailed subset, which the long-tailed
    adversarial-training codes share (wutong16/Adversarial_Long-Tail datasets/datasets.py,
    IMBALANCECIFAR10, lines 11-51 and 119-140; NISPLab/AT-BSL datasets/datasets.py).

    Class c keeps int(n * ratio ** (c / (K - 1))) images, n = len(y) / K (5,000, ..., 100 for
    CIFAR-10 at ratio 0.02: 13,996): one numpy generator seeded 0 shuffles each class's indices
    in label order and the first ones are kept. Both index lists are class blocks in that
    shuffled order (the official dataset's order).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f'imbalance_ratio={ratio} must be in (0, 1] (0.02: CIFAR-10-LT)')
    rng = np.random.RandomState(0)  # the official np.random.seed(0), then np.random.shuffle
    labels, n_max = y.numpy(), len(y) / num_classes
    kept, left_out = [], []
    for c in range(num_classes):
        index = np.where(labels == c)[0]
        rng.shuffle(index)
        n_c = int(n_max * ratio ** (c / (num_classes - 1.0)))
        kept.append(index[:n_c])
        left_out.append(index[n_c:])
    return torch.from_numpy(np.concatenate(kept)), torch.from_numpy(np.concatenate(left_out))


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision_split(name: str, data_dir: Path, **split):
    """The torchvision dataset, downloading it if absent; UserError if that fails."""
    cls, layout = _TORCHVISION[name]
    try:
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            return cls(str(data_dir), download=True, **split)
    except Exception as e:  # URLError, OSError, RuntimeError ("not found or corrupted"), ...
        raise UserError(
            f"{name} is not in --data_dir {data_dir} (expected {data_dir / layout}/) and "
            f"downloading it failed ({type(e).__name__}: {e}); pass --data_dir DIR holding "
            f"{layout}/ (torchvision's format), or use --dataset folder --data_dir DIR with "
            f"images in {_FOLDER_LAYOUT}") from e


def _hwc_to_chw(images) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 (N, 3, H, W) to (N, 3, size, size), back to uint8."""
    out = torch.empty(x.shape[:2] + (size, size), dtype=torch.uint8)
    for i in range(0, len(x), _RESIZE_CHUNK):
        chunk = F.interpolate(x[i:i + _RESIZE_CHUNK].float(), size=(size, size),
                              mode='bilinear', antialias=True, align_corners=False)
        out[i:i + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_cifar(name: str, data_dir: Path) -> Dataset:
    train = _torchvision_split(name, data_dir, train=True)
    test = _torchvision_split(name, data_dir, train=False)
    return Dataset(name, list(train.classes),
                   _hwc_to_chw(train.data), torch.tensor(train.targets, dtype=torch.int64),
                   _hwc_to_chw(test.data), torch.tensor(test.targets, dtype=torch.int64))


def _load_stl10(data_dir: Path) -> Dataset:
    # 'train' is the 5,000 labelled images; the 100k unlabelled ones are not used.
    train = _torchvision_split('stl10', data_dir, split='train')
    test = _torchvision_split('stl10', data_dir, split='test')
    return Dataset('stl10', list(train.classes),
                   _resize(torch.from_numpy(train.data), STL10_IMAGE_SIZE),
                   torch.from_numpy(train.labels).long(),
                   _resize(torch.from_numpy(test.data), STL10_IMAGE_SIZE),
                   torch.from_numpy(test.labels).long())


def _load_folder(root: Path, num_workers: int, test_only: bool) -> Dataset:
    layout = 'DIR/test/<class>/<image>' if test_only else _FOLDER_LAYOUT
    for path in (root, root / 'test') + (() if test_only else (root / 'train',)):
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; --dataset folder needs "
                            f"--data_dir DIR with images in {layout}")
    class_names = list_classes(root / ('test' if test_only else 'train'))
    if not class_names:
        raise UserError(f"{root / ('test' if test_only else 'train')} has no class folders; "
                        f"--dataset folder needs --data_dir DIR with images in {layout}")
    test_classes = list_classes(root / 'test')
    if test_classes != class_names:
        raise ValueError(f"{root / 'test'} has classes {test_classes} but {root / 'train'} has "
                         f"{class_names}; both need the same class folders")
    return Dataset('folder', class_names, *load_folder(root, class_names, num_workers,
                                                       test_only))


def load_dataset(name: str, data_dir, *, n_train: Optional[int] = None, seed: int = 1,
                 num_workers: int = 0, synthetic: Optional[SyntheticConfig] = None,
                 test_only: bool = False, imbalance_ratio: Optional[float] = None) -> Dataset:
    """Load a whole dataset as uint8 tensors on the CPU; UserError (naming --dataset) when the
    files are missing or inconsistent or the options cannot work.

    data_dir: where torchvision files live or are downloaded to, or the image folder root
        (unused for synthetic, may be None). n_train: keep a class-stratified subset of that many training
        images (see stratified_subset). seed: synthetic data only. num_workers: decoding
        processes for folder datasets (0 decodes in this process). synthetic: its
        configuration (default SyntheticConfig()). test_only: a folder dataset needs (and
        decodes) only DIR/test, e.g. for evaluation; its training set is then empty.
        imbalance_ratio: train on the long-tailed subset (long_tailed_subset); the images it
        leaves out stay in x_spare for the validation split.
    """
    try:
        dataset = _load(name, data_dir, n_train, seed, num_workers, synthetic, test_only)
        if imbalance_ratio is not None and not test_only:
            keep, spare = long_tailed_subset(dataset.y_train, dataset.num_classes,
                                             imbalance_ratio)
            dataset.x_spare, dataset.y_spare = dataset.x_train[spare], dataset.y_train[spare]
            dataset.x_train, dataset.y_train = dataset.x_train[keep], dataset.y_train[keep]
        return dataset
    except ValueError as err:  # an inconsistent folder, synthetic options, n_train, ratio
        raise UserError(f'--dataset {name}: {err}') from err


def _load(name, data_dir, n_train, seed, num_workers, synthetic, test_only) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == 'synthetic':
        *tensors, class_names = make_synthetic(synthetic or SyntheticConfig(), seed)
        dataset = Dataset(name, class_names, *tensors, crop_pad=0)
    elif name == 'folder':
        dataset = _load_folder(Path(data_dir), num_workers, test_only)
    elif name == 'stl10':
        dataset = _load_stl10(Path(data_dir))
    else:
        dataset = _load_cifar(name, Path(data_dir))
    if n_train is not None:
        keep = stratified_subset(dataset.y_train, n_train, dataset.num_classes)
        dataset.x_train, dataset.y_train = dataset.x_train[keep], dataset.y_train[keep]
    return dataset
