"""Synthetic images whose inter-class L2 distances are set exactly, for fast CPU experiments.

The paper's claim is that robust fairness suffers when classes are close: the worst class
loses mostly to its similar classes. Here that structure holds by construction. Each class
has a template image; samples are the template plus Gaussian pixel noise. Classes in a
"close group" share a group direction and sit ``close_distance`` apart; every other pair of
classes sits ``far_distance`` apart.

Distances are L2 norms over the whole (3, H, W) image with pixels in [0, 1]. For scale, an
L-inf attack of radius eps moves an image by at most eps * sqrt(3 * H * W) in L2: 0.86 for
eps = 0.031 at 16x16 (about 0.69 along a Gaussian-like direction, eps * ||u||_1 for unit u).
"""
import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Amplitude (pixel units) of the smooth pattern shared by all templates. It cancels in
# every class difference; it only keeps the images from being flat grey.
BASE_AMPLITUDE = 0.05

CloseGroups = Tuple[Tuple[int, ...], ...]


def parse_close_groups(text: str) -> CloseGroups:
    """'0,1,2;5,6' -> ((0, 1, 2), (5, 6)); '' -> () (no close groups)."""
    try:
        return tuple(tuple(int(c) for c in group.split(','))
                     for group in text.split(';') if group.strip())
    except ValueError as e:
        raise ValueError(
            f"bad --synthetic_close_groups {text!r}: write class indices separated by ',' "
            f"and groups separated by ';', e.g. '0,1,2;5,6'") from e


def format_close_groups(groups: CloseGroups) -> str:
    return ';'.join(','.join(str(c) for c in group) for group in groups)


@dataclass
class SyntheticConfig:
    """Every field becomes a --synthetic_<field> option (see add_synthetic_arguments)."""
    num_classes: int = field(default=10, metadata={'help': 'number of classes'})
    image_size: int = field(default=16, metadata={
        'help': 'image side in pixels (images are 3 x size x size)'})
    n_train_per_class: int = field(default=500, metadata={
        'help': 'training images per class'})
    n_test_per_class: int = field(default=200, metadata={'help': 'test images per class'})
    close_groups: CloseGroups = field(default=((0, 1, 2),), metadata={
        'help': "groups of mutually close classes: indices joined by ',', groups by ';' "
                "(e.g. '0,1,2;5,6'); '' for none",
        'parse': parse_close_groups})
    close_distance: float = field(default=1.0, metadata={
        'help': 'L2 distance between templates of classes in the same close group '
                '(pixels in [0, 1], norm over the whole 3 x H x W image)'})
    far_distance: float = field(default=3.0, metadata={
        'help': 'L2 distance between templates of all other class pairs (same units)'})
    noise: float = field(default=0.1, metadata={
        'help': 'std of the Gaussian noise added to each pixel (pixels in [0, 1])'})
    close_noise: Optional[float] = field(default=None, metadata={
        'help': 'noise std for close-group classes, for an unequal spread; '
                'unset means --synthetic_noise',
        'parse': float})
    smooth_px: float = field(default=1.0, metadata={
        'help': 'Gaussian blur std in pixels applied to the class directions so templates '
                'survive small shifts (random crops); 0 for white-noise directions'})

    def __post_init__(self):
        if isinstance(self.close_groups, str):
            self.close_groups = parse_close_groups(self.close_groups)
        self.close_groups = tuple(tuple(int(c) for c in g) for g in self.close_groups)
        if self.num_classes < 2:
            raise ValueError(f"--synthetic_num_classes must be >= 2, got {self.num_classes}")
        for name in ('image_size', 'n_train_per_class', 'n_test_per_class'):
            if getattr(self, name) < 1:
                raise ValueError(f"--synthetic_{name} must be >= 1, got {getattr(self, name)}")
        members = [c for g in self.close_groups for c in g]
        if any(len(g) < 2 for g in self.close_groups) or any(len(g) > 26 for g in self.close_groups):
            raise ValueError(f"each close group needs 2 to 26 classes (named g<k>a, g<k>b, ...), "
                             f"got --synthetic_close_groups "
                             f"{format_close_groups(self.close_groups)!r}")
        if len(set(members)) != len(members) or not all(0 <= c < self.num_classes for c in members):
            raise ValueError(f"--synthetic_close_groups "
                             f"{format_close_groups(self.close_groups)!r} must use distinct "
                             f"class indices in [0, {self.num_classes - 1}]")
        if not 0 < self.close_distance <= self.far_distance:
            raise ValueError(f"need 0 < --synthetic_close_distance <= --synthetic_far_distance, "
                             f"got {self.close_distance} and {self.far_distance}")
        if self.noise < 0 or (self.close_noise is not None and self.close_noise < 0):
            raise ValueError(f"noise std must be >= 0, got --synthetic_noise {self.noise}, "
                             f"--synthetic_close_noise {self.close_noise}")
        if self.smooth_px < 0:
            raise ValueError(f"--synthetic_smooth_px must be >= 0, got {self.smooth_px}")


def _blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (K, 3, H, W), wrapping around the borders."""
    if sigma_px == 0:
        return x
    size = x.shape[-1]
    radius = min(math.ceil(3 * sigma_px), size - 1)  # circular padding needs radius < size
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma_px ** 2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, taps): one per channel
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode='circular'), kernel, groups=3)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode='circular'),
                    kernel.transpose(2, 3), groups=3)


def _templates(cfg: SyntheticConfig, gen: torch.Generator) -> torch.Tensor:
    """(C, 3, H, W) float64 templates in [0, 1] with the configured pairwise L2 distances.

    With orthonormal directions s_g (one per close group) and p_c (one per class), a far
    class is r * p_c and a member of group g is a * s_g + b * p_c, where r = far / sqrt(2),
    b = close / sqrt(2) and a^2 + b^2 = r^2. Then members of one group are b * sqrt(2) =
    close apart and every other pair is sqrt(2) * r = far apart.
    """
    c, size = cfg.num_classes, cfg.image_size
    dim = 3 * size * size
    n_dirs = len(cfg.close_groups) + c
    if n_dirs > dim:
        raise ValueError(f"{n_dirs} orthogonal class directions do not fit in {dim} pixel "
                         f"values; raise --synthetic_image_size or lower --synthetic_num_classes")
    raw = _blur(torch.randn(n_dirs, 3, size, size, generator=gen, dtype=torch.float64),
                cfg.smooth_px)
    q, _ = torch.linalg.qr(raw.reshape(n_dirs, dim).T)  # (dim, n_dirs), orthonormal columns
    shared, private = q.T[:len(cfg.close_groups)], q.T[len(cfg.close_groups):]

    r = cfg.far_distance / math.sqrt(2)
    b = cfg.close_distance / math.sqrt(2)
    a = math.sqrt(r ** 2 - b ** 2)
    offsets = r * private
    for g, members in enumerate(cfg.close_groups):
        for m in members:
            offsets[m] = a * shared[g] + b * private[m]

    # Smooth shared base: grey plus one random low-frequency wave per channel.
    phase = 2 * math.pi * torch.rand(2, 3, 1, 1, generator=gen, dtype=torch.float64)
    pos = 2 * math.pi * torch.arange(size, dtype=torch.float64) / size
    base = 0.5 + BASE_AMPLITUDE * torch.cos(pos.view(1, -1, 1) + phase[0]) \
        * torch.cos(pos.view(1, 1, -1) + phase[1])

    templates = base + offsets.view(c, 3, size, size)
    lo, hi = templates.min().item(), templates.max().item()
    if lo < 0 or hi > 1:
        # Clamping would silently change the distances, so refuse instead.
        raise ValueError(
            f"synthetic templates leave [0, 1] (range [{lo:.3f}, {hi:.3f}]): "
            f"--synthetic_far_distance {cfg.far_distance} spreads pixel values too far from "
            f"grey for {dim} pixel values; lower it or raise --synthetic_image_size "
            f"(per-pixel offsets scale like far_distance / sqrt(3 * image_size^2))")
    return templates


def template_distances(cfg: SyntheticConfig, seed: int) -> torch.Tensor:
    """(C, C) float64 L2 distances between the class templates make_synthetic(cfg, seed) uses."""
    t = _templates(cfg, torch.Generator().manual_seed(seed)).flatten(1)
    return torch.cdist(t, t)


def class_names(cfg: SyntheticConfig) -> list:
    """'g<k><letter>' for members of close group k, 'f<index>' for the far classes."""
    names = [f'f{c}' for c in range(cfg.num_classes)]
    for g, members in enumerate(cfg.close_groups):
        for i, m in enumerate(members):
            names[m] = f'g{g}{chr(ord("a") + i)}'
    return names


def make_synthetic(cfg: SyntheticConfig, seed: int):
    """-> (x_train, y_train, x_test, y_test, class_names); x uint8 (N, 3, H, W), y int64.

    Deterministic for (cfg, seed): draws come from a local generator, never the global RNG.
    Samples cycle through the classes (labels 0, 1, ..., C-1, 0, 1, ...).
    """
    gen = torch.Generator().manual_seed(seed)
    templates = _templates(cfg, gen).float()
    sigma = torch.full((cfg.num_classes,), float(cfg.noise))
    if cfg.close_noise is not None:
        for members in cfg.close_groups:
            sigma[list(members)] = cfg.close_noise

    def draw(n_per_class):
        y = torch.arange(n_per_class * cfg.num_classes) % cfg.num_classes
        noise = torch.randn((len(y),) + templates.shape[1:], generator=gen)
        x = templates[y] + sigma[y].view(-1, 1, 1, 1) * noise
        return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8), y

    x_train, y_train = draw(cfg.n_train_per_class)
    x_test, y_test = draw(cfg.n_test_per_class)
    return x_train, y_train, x_test, y_test, class_names(cfg)


_METAVARS = {int: 'N', float: 'X', Optional[float]: 'X'}


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a 'synthetic data' group with one --synthetic_<field> option per config field."""
    group = parser.add_argument_group('synthetic data', 'used with --dataset synthetic')
    for f in fields(SyntheticConfig):
        # A string default: argparse parses it like a typed value and --help shows it as typed.
        default = format_close_groups(f.default) if f.name == 'close_groups' else f.default
        group.add_argument(f'--synthetic_{f.name}', type=f.metadata.get('parse', f.type),
                           default=default, metavar=_METAVARS.get(f.type, 'GROUPS'),
                           help=f.metadata['help'] + ' (default: %(default)s)')


def synthetic_config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(**{f.name: getattr(args, f'synthetic_{f.name}')
                              for f in fields(SyntheticConfig)})
