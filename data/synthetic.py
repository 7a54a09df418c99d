"""Synthetic images whose inter-class L2 distances are set exactly, for fast CPU experiments.

The paper's claim is that robust fairness suffers when classes are close: the worst class
loses mostly to its similar classes. Here that structure holds by construction. Each class
has a template image; samples are the template plus Gaussian pixel noise. Classes in a
"close group" sit ``close_distance`` apart ('simplex': every two members; 'star': the first
member, the hub, from each other member); every other pair of classes sits ``far_distance``
apart. The templates realize these distances exactly (classical multidimensional scaling onto
random smooth image directions) and are mirror-symmetric left-right, so the training loader's
random flips do not change the task.

Distances are L2 norms over the whole (3, H, W) image with pixels in [0, 1]. For scale, an
L-inf attack of radius eps moves an image by at most eps * sqrt(3 * H * W) in L2: 0.86 for
eps = 0.031 at 16x16; along the line between two templates it moves it by eps * ||u||_1 for the
unit direction u (attack_reach): about 0.68 at 16x16 and 0.34 at 8x8.
"""
import argparse
import math
from dataclasses import dataclass, field, fields, replace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from engine.cli import UserError

# Amplitude (pixel units) of the smooth pattern shared by all templates. It cancels in
# every class difference; it only keeps the images from being flat grey.
BASE_AMPLITUDE = 0.05

CloseGroups = Tuple[Tuple[int, ...], ...]
ClassNoise = Tuple[Tuple[int, float], ...]


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


def parse_class_noise(text: str) -> ClassNoise:
    """'0=0.15,4=0.2' -> ((0, 0.15), (4, 0.2)); '' -> () (no per-class overrides)."""
    try:
        pairs = [item.split('=') for item in text.split(',') if item.strip()]
        return tuple((int(c), float(std)) for c, std in pairs)
    except ValueError as e:
        raise ValueError(
            f"bad --synthetic_class_noise {text!r}: write class=std pairs separated by ',', "
            f"e.g. '0=0.15,4=0.2'") from e


def format_class_noise(pairs: ClassNoise) -> str:
    return ','.join(f'{c}={std:g}' for c, std in pairs)


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
    class_noise: ClassNoise = field(default=(), metadata={
        'help': "per-class noise std overriding the two above, as class=std pairs joined by "
                "',' (e.g. '0=0.15'); '' for none. A network can detect the extra noise "
                "energy itself, so a wider class is not necessarily a harder one",
        'parse': parse_class_noise})
    group_layout: str = field(default='simplex', metadata={
        'help': "shape of each close group: 'simplex' = every two members close_distance "
                "apart (all equally hard); 'star' = the first member (the hub) close_distance "
                "from each other member, those close_distance * sqrt(2) apart, so the hub "
                "borders all of them and is the hardest class",
        'choices': ('simplex', 'star')})
    smooth_px: float = field(default=1.0, metadata={
        'help': 'Gaussian blur std in pixels applied to the class directions so templates '
                'survive small shifts (random crops); 0 for white-noise directions'})

    def __post_init__(self):
        if isinstance(self.close_groups, str):
            self.close_groups = parse_close_groups(self.close_groups)
        self.close_groups = tuple(tuple(int(c) for c in g) for g in self.close_groups)
        if isinstance(self.class_noise, str):
            self.class_noise = parse_class_noise(self.class_noise)
        self.class_noise = tuple((int(c), float(std)) for c, std in self.class_noise)
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
        if not all(math.isfinite(std) and std >= 0 for std in (
                self.noise, self.noise if self.close_noise is None else self.close_noise)):
            raise ValueError(f"noise std must be a finite number >= 0, got --synthetic_noise "
                             f"{self.noise}, "
                             f"--synthetic_close_noise {self.close_noise}")
        noisy = [c for c, _ in self.class_noise]
        if (len(set(noisy)) != len(noisy) or not all(0 <= c < self.num_classes for c in noisy)
                or not all(math.isfinite(std) and std >= 0 for _, std in self.class_noise)):
            raise ValueError(f"--synthetic_class_noise {format_class_noise(self.class_noise)!r} "
                             f"must name distinct classes in [0, {self.num_classes - 1}], each "
                             f"with a std >= 0")
        if self.group_layout not in ('simplex', 'star'):
            raise ValueError(f"--synthetic_group_layout must be 'simplex' or 'star', "
                             f"got {self.group_layout!r}")
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


def target_distances(cfg: SyntheticConfig) -> torch.Tensor:
    """(C, C) float64: the L2 distances between class templates that cfg asks for.

    far_distance between every two classes, except inside a close group: 'simplex' puts every
    two members close_distance apart; 'star' puts the first member (the hub) close_distance
    from each other member (the spokes, in orthogonal directions from the hub), so two spokes
    are close_distance * sqrt(2) apart.
    """
    d = torch.full((cfg.num_classes, cfg.num_classes), float(cfg.far_distance),
                   dtype=torch.float64)
    for members in cfg.close_groups:
        hub, spokes = members[0], list(members[1:])
        inner = cfg.close_distance * (1.0 if cfg.group_layout == 'simplex' else math.sqrt(2))
        for m in members:
            d[m, list(members)] = inner
        d[hub, spokes] = d[spokes, hub] = cfg.close_distance
    d.fill_diagonal_(0)
    return d


def _gram(distances: torch.Tensor):
    """Eigenvalues and eigenvectors of the centred Gram matrix -J D^2 J / 2 of a distance
    matrix: all eigenvalues >= 0 exactly when points with these distances exist."""
    c = len(distances)
    centre = torch.eye(c, dtype=torch.float64) - 1.0 / c
    return torch.linalg.eigh(-0.5 * centre @ distances.square() @ centre)


def _realizable(distances: torch.Tensor) -> bool:
    values, _ = _gram(distances)
    return bool(values.min() >= -1e-9 * values.max())


def max_close_distance(cfg: SyntheticConfig) -> float:
    """The largest close_distance (to 1e-4) whose distances target_distances can realize with
    the rest of cfg; a star group's spokes are pairwise farther apart than the hub and each must
    stay far_distance from every far class, so it is below far_distance."""
    lo, hi = 0.0, cfg.far_distance
    if _realizable(target_distances(replace(cfg, close_distance=hi))):
        return hi
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _realizable(target_distances(replace(cfg, close_distance=mid))) \
            else (lo, mid)
    return lo


def _coordinates(cfg: SyntheticConfig) -> torch.Tensor:
    """(C, r) float64 points with exactly the distances of target_distances(cfg) (classical
    multidimensional scaling: the centred Gram matrix factored by its eigenvectors), r < C."""
    values, vectors = _gram(target_distances(cfg))
    if values.min() < -1e-9 * values.max():
        raise ValueError(
            f"no images can have these synthetic class distances: a {cfg.group_layout} group "
            f"{close_distance_text(cfg)} with every other pair {cfg.far_distance:g} apart does "
            f"not fit in any Euclidean space; use --synthetic_close_distance <= "
            f"{max_close_distance(cfg):.4f} or raise --synthetic_far_distance")
    keep = values > 1e-9 * values.max()
    return vectors[:, keep] * values[keep].sqrt()


def close_distance_text(cfg: SyntheticConfig) -> str:
    if cfg.group_layout == 'star':
        return (f"with hub-spoke distance {cfg.close_distance:g} (spokes "
                f"{cfg.close_distance * math.sqrt(2):.3g} apart)")
    return f"with members {cfg.close_distance:g} apart"


def _templates(cfg: SyntheticConfig, gen: torch.Generator) -> torch.Tensor:
    """(C, 3, H, W) float64 templates in [0, 1] with the pairwise L2 distances of
    target_distances(cfg), exact up to float64 rounding.

    Points with those distances (centred on the origin) come from _coordinates; their r axes
    are mapped onto r random orthonormal image directions, smoothed and mirror-symmetric, and
    added to a shared smooth base image.
    """
    c, size = cfg.num_classes, cfg.image_size
    dim = 3 * size * size
    coords = _coordinates(cfg)
    n_dirs = coords.shape[1]
    # Mirror-symmetric (left-right) directions: the training loader flips images at random, and
    # a flip must not turn a template into a different, uncontrolled one. Symmetric images form
    # a subspace (of dimension 3 * size * ceil(size / 2)), and QR keeps a basis inside it.
    if n_dirs > 3 * size * ((size + 1) // 2):
        raise ValueError(f"{n_dirs} orthogonal mirror-symmetric class directions do not fit in "
                         f"{size} px images; raise --synthetic_image_size or lower "
                         f"--synthetic_num_classes")
    raw = _blur(torch.randn(n_dirs, 3, size, size, generator=gen, dtype=torch.float64),
                cfg.smooth_px)
    raw = raw + raw.flip(-1)
    q, _ = torch.linalg.qr(raw.reshape(n_dirs, dim).T)  # (dim, n_dirs), orthonormal columns
    offsets = coords @ q.T

    # Smooth shared base: grey plus one low-frequency wave per channel, random in phase along
    # the height and mirror-symmetric along the width (like the directions).
    phase = 2 * math.pi * torch.rand(3, 1, 1, generator=gen, dtype=torch.float64)
    pos = 2 * math.pi * torch.arange(size, dtype=torch.float64) / size
    base = 0.5 + BASE_AMPLITUDE * torch.cos(pos.view(1, -1, 1) + phase) \
        * torch.cos(pos.view(1, 1, -1) - math.pi * (size - 1) / size)

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


def class_templates(cfg: SyntheticConfig, seed: int) -> torch.Tensor:
    """(C, 3, H, W) float64: the class templates (noise-free class means) of
    make_synthetic(cfg, seed)."""
    return _templates(cfg, torch.Generator().manual_seed(seed))


def template_distances(cfg: SyntheticConfig, seed: int) -> torch.Tensor:
    """(C, C) float64 L2 distances between the class templates make_synthetic(cfg, seed) uses."""
    t = class_templates(cfg, seed).flatten(1)
    return torch.cdist(t, t)


def attack_reach(cfg: SyntheticConfig, seed: int, a: int, b: int, epsilon: float) -> float:
    """How far (L2) an L-inf perturbation of radius epsilon can move an image along the line
    from template a to template b: epsilon * ||u||_1 for the unit vector u along it. Two classes
    closer than twice this cannot be told apart robustly by a linear rule along that line."""
    t = class_templates(cfg, seed)
    u = (t[b] - t[a]).flatten()
    return float(epsilon * u.abs().sum() / u.norm())


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
    for c, std in cfg.class_noise:
        sigma[c] = std

    def draw(n_per_class):
        y = torch.arange(n_per_class * cfg.num_classes) % cfg.num_classes
        noise = torch.randn((len(y),) + templates.shape[1:], generator=gen)
        x = templates[y] + sigma[y].view(-1, 1, 1, 1) * noise
        return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8), y

    x_train, y_train = draw(cfg.n_train_per_class)
    x_test, y_test = draw(cfg.n_test_per_class)
    return x_train, y_train, x_test, y_test, class_names(cfg)


_METAVARS = {int: 'N', float: 'X', Optional[float]: 'X', ClassNoise: 'PAIRS',
             str: '{simplex,star}'}


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a 'synthetic data' group with one --synthetic_<field> option per config field."""
    group = parser.add_argument_group('synthetic data', 'used with --dataset synthetic')
    for f in fields(SyntheticConfig):
        # A string default: argparse parses it like a typed value and --help shows it as typed.
        default = {'close_groups': format_close_groups,
                   'class_noise': format_class_noise}.get(f.name, lambda v: v)(f.default)
        group.add_argument(f'--synthetic_{f.name}', type=f.metadata.get('parse', f.type),
                           default=default, choices=f.metadata.get('choices'),
                           metavar=_METAVARS.get(f.type, 'GROUPS'),
                           help=f.metadata['help'] + ' (default: %(default)s)')


def synthetic_config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    """The --synthetic_* options as a config; UserError when they cannot work together. A field
    missing from args (the saved args of a run older than the field) takes its default, which is
    what that run used."""
    try:
        return SyntheticConfig(**{f.name: getattr(args, f'synthetic_{f.name}', f.default)
                                  for f in fields(SyntheticConfig)})
    except ValueError as err:
        raise UserError(f'--dataset synthetic: {err}') from err
