"""Device-resident batch loader: the whole uint8 set sits on the device, and each training
batch's random crops and flips are one batched gather (no per-sample Python work, no host
sync). It is also the CPU path, with device='cpu'.
"""
import hashlib
import math

import torch
import torch.nn.functional as F


def crop_flip(x_padded: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor,
              size: int) -> torch.Tensor:
    """Per-sample size x size windows of padded images, mirrored left-right where flip is set.

    x_padded: (B, C, H', W'), any dtype; oy, ox: (B,) int64 top-left offsets in pixels;
    flip: (B,) bool. Returns (B, C, size, size) in x_padded's dtype. One advanced-indexing
    gather: each sample gets its own row and column index vectors, and a flip is just the
    column vector reversed.
    """
    device = x_padded.device
    steps = torch.arange(size, device=device)
    rows = oy[:, None] + steps                                       # (B, size)
    cols = ox[:, None] + torch.where(flip[:, None], steps.flip(0), steps)  # (B, size)
    batch = torch.arange(x_padded.shape[0], device=device)[:, None, None, None]
    channels = torch.arange(x_padded.shape[1], device=device)[None, :, None, None]
    return x_padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


def pad_images(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """(N, C, H, W) images, any dtype, padded by `pad` pixels on each side as torchvision's
    padding_mode: 'constant' (zeros) or 'reflect' (mirrored at the edge pixel, which is not
    repeated: index -1 reads 1, index H reads H - 2), by indexing, so uint8 stays uint8."""
    if mode == 'constant':
        return F.pad(x, (pad, pad, pad, pad))
    if mode != 'reflect':
        raise ValueError(f"padding_mode must be 'constant' or 'reflect', got {mode!r}")

    def mirrored(n: int) -> torch.Tensor:
        index = torch.arange(-pad, n + pad, device=x.device).abs()
        return torch.where(index >= n, 2 * (n - 1) - index, index)
    return x[:, :, mirrored(x.shape[2])][:, :, :, mirrored(x.shape[3])]


def _epoch_seed(seed: int, epoch: int) -> int:
    # Hashed, so distinct (seed, epoch) pairs never share a stream, e.g. (1, 0) and (0, 1).
    digest = hashlib.sha256(f'{seed}/{epoch}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little')


class Loader:
    """Batches (x float32 (B, 3, H, W) in [0, 1], y int64 (B,)), both on `device`.

    train=True: a fresh permutation per epoch and, per sample, a random crop of the
    `pad`-pixel padded image (offsets uniform in [0, 2 * pad], like torchvision's
    RandomCrop(H, padding=pad, padding_mode=padding_mode): zeros, or the image mirrored
    without repeating its edge) and a horizontal flip with probability 1/2. All of an
    epoch's randomness comes from a generator seeded by (seed, epoch), so after a resume
    set_epoch(e) reproduces epoch e exactly. train=False: the data in order, unchanged.
    The last partial batch is kept unless drop_last.

    shard=(rank, world) (several processes, train=True): every process draws the same
    permutation and augmentation and yields its own contiguous part of each global batch of
    batch_size, so the processes together see each sample once per epoch. A last partial batch
    smaller than world is left out (every process must take a step).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device,
                 train: bool, seed: int = 0, pad: int = 4, padding_mode: str = 'constant',
                 drop_last: bool = False, shard=(0, 1)):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"Loader wants uint8 images (N, C, H, W), got {x.dtype} "
                             f"{tuple(x.shape)}; keep datasets as uint8 and let it convert")
        if y.shape != x.shape[:1]:
            raise ValueError(f"{x.shape[0]} images but labels of shape {tuple(y.shape)}")
        if batch_size < 1 or pad < 0:
            raise ValueError(f"need batch_size >= 1 and pad >= 0, got {batch_size} and {pad}")
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed, self.pad = batch_size, train, seed, pad
        self.drop_last = drop_last
        self.rank, self.world = shard
        self.size = x.shape[-1]
        self.n = x.shape[0]
        x = x.to(self.device)
        # Padded once here rather than per batch.
        self.x = pad_images(x, pad, padding_mode) if train else x
        self.y = y.to(self.device, torch.int64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        if self.train and self.world > 1:
            return self.n // self.batch_size + (self.n % self.batch_size >= self.world)
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        bs, stop = self.batch_size, min(len(self) * self.batch_size, self.n)
        if not self.train:
            for i in range(0, stop, bs):
                yield self.x[i:i + bs].float().div_(255), self.y[i:i + bs]
            return
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=gen, device=self.device)
        # Drawn for the whole epoch at once, indexed by position in the epoch.
        oy, ox = torch.randint(2 * self.pad + 1, (2, self.n), generator=gen, device=self.device)
        flip = torch.rand(self.n, generator=gen, device=self.device) < 0.5
        for batch in range(len(self)):
            i = batch * bs
            part = slice(i, min(i + bs, self.n))
            if self.world > 1:  # this process's contiguous part of the global batch
                positions = torch.arange(part.start, part.stop, device=self.device)
                part = torch.tensor_split(positions, self.world)[self.rank]
            index = order[part]
            x = crop_flip(self.x[index], oy[part], ox[part], flip[part], self.size)
            yield x.float().div_(255), self.y[index]
