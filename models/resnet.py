"""ResNet-18, CIFAR variant (3x3 stride-1 stem, no max-pool), as in DAFA/TRADES.

Parameter names follow the official checkpoints: ``conv1``, ``bn1``,
``layer1``..``layer4`` (BasicBlocks with ``conv1, bn1, conv2, bn2`` and a
``shortcut`` Sequential(conv, bn) when the shape changes, i.e. keys
``shortcut.0.weight``, ``shortcut.1.weight``, ...), and the classifier ``linear``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import pooled_features


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # An empty Sequential is the identity and has no parameters, so the
        # state-dict keys match the official code in both cases.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, image_size: int = 32):
        super().__init__()
        in_features = pooled_features(512, image_size, "resnet")
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(in_features, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        # flatten (not view) so channels_last inputs work; the logical C,H,W
        # order matches the official .view(N, -1) on contiguous tensors.
        return self.linear(torch.flatten(out, 1))


def resnet18(num_classes: int = 10, image_size: int = 32) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes=num_classes, image_size=image_size)
