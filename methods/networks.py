"""Encoders shared by the methods: each maps images (N, C, H, W) to a feature vector (N, F).

- "cnn_small": three 3x3 conv layers (16, 32, 64 channels, the last two with stride 2) and global
  average pooling; F = 64. Works from 8x8 digits up to 32x32 CIFAR; the quick CPU profile's net.
- "resnet18": ResNet-18 (He et al. 2016) in its CIFAR form, as CSI and HSCL use it: a 3x3 stride-1
  stem and no max-pool, so a 32x32 image keeps a 4x4 map before the pooling; F = 512.
- "resnet50" / "resnet50_cifar" (`build_backbone`, CADet's): torchvision's ResNet-50 with `weights=None`
  (nothing is downloaded), with its ImageNet stem or SimCLR's CIFAR stem; F = 2048.

Heads: SimCLR's 2-layer `projection_head` and SimCLRv2's deeper `simclr_v2_head`. `load_weights` starts a
model from a local file of user weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers.append(conv_bn_relu(c, w, stride=1 if i == 0 else 2))  # 8x8 -> 8, 4, 2
            c = w
        self.features = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, F)
        return self.features(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # 1x1 projection shortcut where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: stem 3x3/1 (no 7x7/2 conv, no max-pool), stages of 2 blocks with 64, 128,
    256, 512 channels, strides 1, 2, 2, 2, global average pooling."""

    def __init__(self, in_channels: int, base_width: int = 64):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, base_width)
        blocks, c = [], base_width
        for width, stride in [(base_width, 1), (2 * base_width, 2), (4 * base_width, 2), (8 * base_width, 2)]:
            blocks += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, 512)
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def resnet18_narrow(in_channels: int) -> ResNet18:
    """The same CIFAR ResNet-18 at a quarter of the width (16 ... 128 channels, about 1/16 of the
    FLOPs): the `small` profile's network, for real CIFAR-10 training on a CPU in minutes."""
    return ResNet18(in_channels, base_width=16)


ENCODERS = {"cnn_small": SmallCNN, "resnet18": ResNet18, "resnet18_narrow": resnet18_narrow}


def build_encoder(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """-> (encoder, feature_dim). Unknown names raise ValueError listing the known ones."""
    if name not in ENCODERS:
        raise ValueError(f"unknown net '{name}'; known nets: {', '.join(sorted(ENCODERS))}")
    net = ENCODERS[name](in_channels)
    return net, net.out_dim


def projection_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR's 2-layer MLP projection head: in_dim -> in_dim -> out_dim."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


BACKBONES = (*ENCODERS, "resnet50", "resnet50_cifar")


def build_backbone(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """build_encoder's nets plus torchvision's ResNet-50s (weights=None) -> (encoder (N, C, H, W) -> (N, F), F)."""
    if name in ("resnet50", "resnet50_cifar"):
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        if name == "resnet50_cifar":  # SimCLR's CIFAR stem: 3x3 stride-1 conv, no max-pool
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()  # (N, 2048) pooled features
        return net, 2048
    return build_encoder(name, in_channels)


def simclr_v2_head(dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """SimCLRv2's projection head: (layers - 1) x [Linear(dim, dim), BN, ReLU], then Linear(dim, out_dim)."""
    parts: list[nn.Module] = []
    for _ in range(layers - 1):
        parts += [nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
    parts.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*parts)


_PREFIXES = ("module.", "model.", "backbone.", "encoder_q.")


def load_weights(net: nn.Module, path: str) -> str:
    """Load a local state dict into `net`, a module with `.encoder` (and optionally `.head`): the whole model
    (keys "encoder.*" and "head.*") or the encoder alone (torchvision / SimCLR-style; a classifier's "fc.*" is
    dropped). Refuses mismatched keys with a message naming them. -> "model" or "encoder", what was loaded."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights_path={path}: no such file")
    state = torch.load(file, map_location="cpu", weights_only=True)  # tensors only: no pickled code
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    clean = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        clean[key] = value
    if any(k.startswith("head.") for k in clean):
        target, what = net, "model"
    else:
        target, what = net.encoder, "encoder"
        clean = {k.removeprefix("encoder."): v for k, v in clean.items() if not k.startswith("fc.")}
    missing, unexpected = target.load_state_dict(clean, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights_path={path} does not fit net: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return what
