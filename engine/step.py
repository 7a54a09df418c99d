"""One adversarial training iteration (attack, loss, backward, optimizer step), eager or as a
CUDA graph.

Both steps read a robust-fairness method's per-class tables (fairness.ClassTables) by indexing
with the labels, so the method can change them in place between epochs without a host sync or a
re-capture; a change to the loss's Python logic comes with a new loss_version (set by the engine
each epoch from Method.loss_version), on which the graph step captures anew. Both return the
LossOutput of the iteration as device tensors; nothing here synchronises with the host.
"""
import contextlib
from functools import partial

import torch

from .cli import UserError


class TrainStep:
    """The plain eager iteration: what every device runs, and what the CUDA graph captures."""

    def __init__(self, model, optimizer, loss_fn, tables, *, amp_dtype=None,
                 channels_last=False, **loss_kwargs):
        self.model, self.optimizer = model, optimizer
        self.loss_fn = partial(loss_fn, **loss_kwargs)
        self.tables = tables
        self.amp_dtype = amp_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loss_version = 0  # Method.loss_version of the current epoch

    def _autocast(self, device_type):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # No weight-cast cache: the clean forward runs under no_grad, and a cached bf16 copy
        # made there has no grad_fn, so later forwards reusing it would leave the weights
        # without gradients (pytorch/pytorch#112583). CUDA graphs want it off as well.
        return torch.autocast(device_type, dtype=self.amp_dtype, cache_enabled=False)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        x = x.contiguous(memory_format=self.memory_format)
        with self._autocast(x.device.type):
            out = self.loss_fn(self.model, x, y, self.tables.gather(y))
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        return out


class CUDAGraphTrainStep(TrainStep):
    """The same iteration replayed from a CUDA graph, one graph per (batch size, lr, loss
    version).

    The first `warmup` iterations run eagerly (real training steps, on the side stream that
    capture then uses, as capture requires) so that cuDNN picks its algorithms and SGD allocates
    its momentum buffers; the next iteration of a full batch is captured and replayed. SGD reads
    its lr as a Python float, which capture bakes in, so a schedule change captures a new graph
    (three per paper run), and so does a new loss_version (a method whose loss switches at an
    epoch, the lr unchanged). Batches of another size (the last, partial one) run eagerly: same
    math, no second graph to hold.
    """

    def __init__(self, *args, batch_size: int, warmup: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        # A capture before SGD has momentum buffers would bake in its first-step branch
        # (buffer = grad) and silently drop momentum from every replay.
        if warmup < 1:
            raise ValueError('CUDAGraphTrainStep needs warmup >= 1 eager iteration.')
        self.batch_size, self.warmup = batch_size, warmup
        self.graph = None
        self.graph_key = None  # (lr, loss_version) of the captured graph
        self.eager_steps = 0
        self.stream = None  # one side stream for warm-up and every capture, made on first use

    def _side_stream(self):
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        return self.stream

    def __call__(self, x, y):
        lr = self.optimizer.param_groups[0]['lr']
        if x.shape[0] != self.batch_size:
            return super().__call__(x, y)
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            side = self._side_stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = super().__call__(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None or self.graph_key != (lr, self.loss_version):
            self._capture(x, y)
            self.graph_key = lr, self.loss_version
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_out

    def _capture(self, x, y):
        self.graph = None  # frees the previous graph's pool before the new capture
        self.static_x = x.clone().contiguous(memory_format=self.memory_format)
        self.static_y = y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._side_stream()):
                self.static_out = super().__call__(self.static_x, self.static_y)
        except RuntimeError as err:
            raise UserError(
                f'capturing the training iteration in a CUDA graph failed: {err}. Train without '
                'it (--no-cuda_graph); a run can resume from its last checkpoint that way.'
            ) from err
        self.graph = graph
