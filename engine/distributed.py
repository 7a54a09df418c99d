"""Several processes through torchrun: the process group, and the few collectives training needs.

    torchrun --nproc_per_node 8 train.py ...

A plain `python train.py` has world size 1 and every function here is a no-op. Under torchrun
each process trains on its slice of every global batch (DistributedDataParallel averages the
gradients), per-class statistics are summed over processes, the evaluation is split and gathered,
and only rank 0 writes the run folder.
"""
import gc
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .checkpoint import cpu_copy


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started several processes."""
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def setup(device_type: str) -> Context:
    """Join the process group (NCCL on CUDA, gloo on the CPU) when launched by torchrun."""
    if not launched():
        return Context()
    ctx = Context(int(os.environ['RANK']), int(os.environ['WORLD_SIZE']),
                  int(os.environ.get('LOCAL_RANK', '0')))
    if device_type == 'cuda':
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device_type == 'cuda' else 'gloo')
    return ctx


def sum_(ctx: Context, *tensors: torch.Tensor) -> None:
    """In place: each tensor becomes its sum over processes."""
    if ctx.enabled:
        for tensor in tensors:
            dist.all_reduce(tensor)


def all_agree(ctx: Context, ok: bool) -> bool:
    """True only if every process says ok (one sync): how a failure in one stops all."""
    if not ctx.enabled:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64,
                        device='cuda' if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_cat(ctx: Context, *tensors: torch.Tensor):
    """Every process's tensors concatenated in rank order (on each process, on the CPU)."""
    if not ctx.enabled:
        return tensors
    gathered = [None] * ctx.world
    dist.all_gather_object(gathered, [t.cpu() for t in tensors])
    return tuple(torch.cat([parts[i] for parts in gathered]) for i in range(len(tensors)))


def sync_buffers(ctx: Context, model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics everywhere: evaluation, a method's validation and the
    checkpoint then see one model (DDP averages gradients, not buffers)."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_method(ctx: Context, method, epoch: int) -> None:
    """Rank 0's method state everywhere (Method.state_dict / load_state_dict): a method's
    validation attack runs on every process, and cuDNN's per-process algorithm choices can make
    the ranks' numbers differ (e.g. CFA's averaging threshold passed on one rank only)."""
    if ctx.enabled:
        state = [cpu_copy(method.state_dict()) if ctx.is_main else None]
        dist.broadcast_object_list(state, src=0)
        if not ctx.is_main:
            method.load_state_dict(state[0], epoch)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG seed of one process in one epoch (its attack noise): re-derived, not saved,
    so a run resumes exactly with any number of processes per epoch boundary."""
    digest = hashlib.sha256(f'{seed}/{epoch}/{rank}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') % (2 ** 63)


def shutdown(ctx: Context) -> None:
    """Leave the process group; call it once nothing references the DistributedDataParallel
    wrapper. The wrapper keeps the group alive, and gloo's worker threads stop only when the
    group is freed: a worker still releasing a finished collective's tensor while the
    interpreter exits aborts the process ("terminate called without an active exception", one
    torchrun in ~10 on 2 cores). Collecting here frees the group, joining its threads, first."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()
