"""WideResNet (Zagoruyko & Komodakis 2016) as in the official TRADES/DAFA code.

Parameter names follow the official checkpoints: ``conv1``, ``block1``..``block3``
(NetworkBlocks whose ``layer`` is a Sequential of BasicBlocks with ``bn1, relu1,
conv1, bn2, relu2, conv2`` and ``convShortcut`` when in != out channels), the
final ``bn1``/``relu`` and the classifier ``fc``. The official checkpoints also
carry an unused ``sub_block1`` (never called in forward); it is not built here
and its keys are dropped on load so those checkpoints load with strict=True.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import pooled_features

UNUSED_PREFIX = "sub_block1."


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in the official code: when the width changes, the projection
        # shortcut takes the pre-activated input; otherwise the raw input.
        if self.equalInOut:
            out = self.relu1(self.bn1(x))
            shortcut = x
        else:
            x = self.relu1(self.bn1(x))
            out = x
            shortcut = self.convShortcut(x)
        out = self.relu2(self.bn2(self.conv1(out)))
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(nb_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _drop_unused_sub_block(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: discard the official, never-used sub_block1."""
    for key in [k for k in state_dict if k.startswith(prefix + UNUSED_PREFIX)]:
        del state_dict[key]


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 image_size: int = 32):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth!r}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        in_features = pooled_features(widths[3], image_size, f"wrn-{depth}-{widen_factor}")
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(in_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Same as the official normal_(0, sqrt(2 / (k*k*out_channels))).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

        self.register_load_state_dict_pre_hook(_drop_unused_sub_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        # flatten (not the official view(-1, C)) so 64px (2x2 map) and
        # channels_last inputs work; logical C,H,W order is unchanged.
        return self.fc(torch.flatten(out, 1))


def wrn_28_10(num_classes: int = 10, image_size: int = 32) -> WideResNet:
    return WideResNet(28, 10, num_classes=num_classes, image_size=image_size)


def wrn_34_10(num_classes: int = 10, image_size: int = 32) -> WideResNet:
    return WideResNet(34, 10, num_classes=num_classes, image_size=image_size)
