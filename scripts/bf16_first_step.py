"""What bf16 autocast does to the TRADES attack's steps: the sign agreement of each step's
gradient with float64's, in fp32, under bf16 autocast, and under bf16 with only the first
convolution in fp32, along one float64 attack trajectory.

    python scripts/bf16_first_step.py --checkpoint runs/cpu/runs/trades/seed1/checkpoint-latest.pt

Runs on the CPU (bf16 autocast works there) or CUDA; the model is a train.py checkpoint, the
images the first --n of its test set (a seeded draw).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from evaluation.checkpoint_io import build_model, read_checkpoint  # noqa: E402
from evaluation.setup import load_test_set, resolve_setup  # noqa: E402
from losses import kl_from_logits  # noqa: E402


def gradient(model, x, z, dtype, autocast: bool, fp32_stem: bool):
    """(KL, its gradient at z in float64) with the model in dtype, optionally under bf16."""
    model.to(dtype)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    forward = stem.forward
    if fp32_stem:
        def fp32_forward(inp):
            with torch.autocast(inp.device.type, enabled=False):
                return forward(inp.float())
        stem.forward = fp32_forward
    try:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                clean = model(x.to(dtype)).to(dtype)
            z = z.to(dtype).requires_grad_(True)
            kl = kl_from_logits(clean, model(z).to(dtype))
            grad, = torch.autograd.grad(kl, z)
    finally:
        stem.forward = forward
        model.float()
    return kl.item(), grad.double()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--n', type=int, default=256, help='test images')
    p.add_argument('--steps', type=int, default=4)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    ckpt = read_checkpoint(args.checkpoint)
    setup = resolve_setup(ckpt)
    _, x_test, _ = load_test_set(setup, ckpt)
    keep = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(0))[:args.n]
    x = (x_test[keep].float() / 255).to(args.device)
    model = build_model(setup.model, ckpt.num_classes, x.shape[-1], ckpt.state_dict, args.device)
    eps, alpha = ckpt.args['epsilon'], ckpt.args['pgd_step_size']
    z = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x)
    print(f'{args.checkpoint}: {args.n} test images, eps {eps:g}, step {alpha:g}; sign '
          "agreement of each step's gradient with float64's")
    for step in range(args.steps):
        kl64, g64 = gradient(model, x, z, torch.float64, False, False)
        cells = []
        for label, flags in (('fp32', (False, False)), ('bf16', (True, False)),
                             ('bf16, fp32 first conv', (True, True))):
            _, g = gradient(model, x, z, torch.float32, *flags)
            cells.append(f'{label} {100 * (g.sign() == g64.sign()).double().mean():.1f}%')
        print(f'step {step + 1} (KL {kl64:.2e}): ' + ', '.join(cells), flush=True)
        z = torch.min(torch.max(z + alpha * g64.sign().to(z), x - eps), x + eps).clamp(0, 1)


if __name__ == '__main__':
    main()
