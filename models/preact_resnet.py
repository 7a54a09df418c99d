"""PreAct ResNet-18 (He et al. 2016, identity mappings), CIFAR variant, in the two forms the
baselines' official codes use:

- ``pre-resnet``: a final BatchNorm ``bn`` + ReLU before the pooling (PKU-ML/CFA model.py
  l. 69, 86);
- ``pre-resnet-frl``: none, the last block's sum goes straight to the pooling
  (hannxu123/fair_robust pre_resnet.py l. 64-69, 84-85).

Parameter names follow the official code: ``conv1``, ``layer1``..``layer4`` (PreActBlocks with
``bn1, conv1, bn2, conv2`` and a ``shortcut`` Sequential(conv) when the shape changes, i.e. key
``shortcut.0.weight``), ``bn`` (``pre-resnet`` only) and the classifier ``linear``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import pooled_features


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        # None (not an empty Sequential) because the projection takes the
        # pre-activated input while the identity takes the raw input.
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, image_size: int = 32,
                 final_bn: bool = True):
        super().__init__()
        in_features = pooled_features(512, image_size, "pre-resnet")
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        # Pre-activation blocks end on a conv: CFA's network adds one last BN + ReLU, FRL's not.
        self.bn = nn.BatchNorm2d(512) if final_bn else None
        self.linear = nn.Linear(in_features, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        # flatten (not view) so channels_last inputs work.
        return self.linear(torch.flatten(out, 1))


def preact_resnet18(num_classes: int = 10, image_size: int = 32) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, image_size=image_size)


def preact_resnet18_frl(num_classes: int = 10, image_size: int = 32) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, image_size=image_size,
                        final_bn=False)
