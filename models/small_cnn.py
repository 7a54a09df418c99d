"""A tiny CNN for fast CPU tests and the synthetic demo (not from the paper).

Three stride-2 3x3 conv + BatchNorm + ReLU stages (24, 48, 96 channels), global
average pooling and a ``linear`` classifier; about 54k parameters. BatchNorm is
kept on purpose: train/eval mode matters for adversarial training. Because of the
global pooling it accepts any square input of at least 8 pixels.
"""
import torch
import torch.nn as nn

MIN_IMAGE_SIZE = 8
WIDTHS = (24, 48, 96)


def _stage(in_ch: int, out_ch: int) -> nn.Sequential:
    # Stride 2 from the first layer keeps a batch-128 CPU step ~15 ms.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"small-cnn supports any integer image_size >= {MIN_IMAGE_SIZE}, "
                f"got {image_size!r}")
        chans = (3,) + WIDTHS
        self.features = nn.Sequential(*[_stage(i, o) for i, o in zip(chans[:-1], chans[1:])])
        self.linear = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x).mean(dim=(2, 3))
        return self.linear(out)


def small_cnn(num_classes: int = 10, image_size: int = 32) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, image_size=image_size)
