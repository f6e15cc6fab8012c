"""What the contrastive methods share: CSI, MSC and MIL-convex (methods/csi.py, msc.py, milconvex.py), which
train on every image without labels, and HSCL's Config (methods/hscl.py).

- `ContrastiveConfig`: the fields they share (net, views, optimiser, schedule, device flags); each
  method's Config extends it and resets the defaults its paper gives.
- `ContrastiveNet`: encoder f -> features h, projection head -> z, optional linear rotation head.
- `ContrastiveMethod`: the training views and batched feature extraction; training itself is
  methods/trainer.py's loop (Adam, linear warm-up then cosine per step, optional DDP). A method writes only
  what its paper says: `loss()` for one step (methods/losses.py has SimCLR's NT-Xent), optionally
  `start_epoch()` (e.g. a re-computed centre) and `finish()` (its score bank), and `score()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.augment import shifted_views
from methods.base import NeuralMethod
from methods.networks import build_encoder, projection_head
from methods.trainer import StepLoss


@dataclass(frozen=True)
class ContrastiveConfig:
    """Shared fields. Defaults: the MIL-convex paper's Sec. 4.1 (ResNet-18, 200 epochs, Adam 1e-3, 10
    warm-up epochs then cosine) and SimCLR's augmentations, which CSI and MSC use as well."""

    net: str = "resnet18"
    proj_dim: int = 128
    """the encoder, see methods/networks.py ("resnet18" = CIFAR ResNet-18, "cnn_small"), and the output
    dimension of its 2-layer projection head (0 = no head: the losses see the encoder features)"""
    tau: float = 0.5
    rotations: int = 4
    """the temperature of the contrastive losses; the shifting transformation: copies rotated by k * 90
    degrees, k < rotations (1 = none)"""
    batch_size: int = 256
    epochs: int = 200
    lr: float = 1e-3
    warmup_epochs: int = 10
    weight_decay: float = 0.0
    """images per step (split across DDP ranks; each gives 2 views x `rotations` rows); Adam's initial
    learning rate and weight decay, the rate rising linearly over the warm-up epochs, then decaying to 0
    along a cosine (per step)"""
    crop_scale_min: float = 0.08
    jitter: float = 0.4
    jitter_p: float = 0.8
    gray_p: float = 0.2
    """SimCLR's views: Inception crops of at least crop_scale_min of the area (SimCLR's 0.08), colour jitter
    of strength s = jitter (brightness/contrast/saturation in [1-s, 1+s], hue s/4) with probability
    jitter_p, grayscale with probability gray_p"""
    amp: bool = True
    channels_last: bool = True
    cpu_bf16: bool = False
    """bf16 autocast for the forward pass and the channels_last memory format, on the CPU only with cpu_bf16:
    together 3.8x fp32's HSCL step with the narrow ResNet-18 on this project's AVX-512 BF16 CPU
    (benchmarks/records/train_throughput-resnet18_narrow.json); off by default, since a CPU without native
    bf16 emulates it"""
    compile: bool = False
    """torch.compile the network on the CPU as well (Inductor; ~30 s to compile a ResNet-18 step there). On CUDA
    it is compiled anyway, with fixed batch shapes (methods/trainer.py HotPath; ADSWEEP_COMPILE=0 turns that
    off). Not a new field for the CUDA default: a field or default changes every trial key"""


# The quick profile's values that every method here shares: the small CNN, 64 digits per step, and
# crops that keep >= 25% of an 8x8 digit (at SimCLR's 0.08 a crop is a blob of 2x2 pixels).
QUICK_DIGITS = {"net": "cnn_small", "batch_size": 64, "crop_scale_min": 0.25}

# The small profile's shared values: real CIFAR-10 at 32x32 on a CPU in minutes per trial. The paper's
# losses and augmentations (SimCLR crops from 0.08, jitter, rotations) are unchanged; the network is the
# quarter-width CIFAR ResNet-18, training is 3 epochs of 64-image batches (about 250 Adam steps on one
# normal class), and bf16 runs on a CPU with native bf16 (fp32 elsewhere: methods/trainer.py Precision).
# One HSCL or CSI trial takes a few minutes of one CPU thread
# (measured per method in docs/reproduction.md, section Cost).
SMALL_CIFAR = {"net": "resnet18_narrow", "batch_size": 64, "epochs": 3, "warmup_epochs": 1, "cpu_bf16": True}


class ContrastiveNet(nn.Module):
    """x (N, C, H, W) -> (h (N, F) encoder features, z (N, D) projection, NOT normalised (CSI's score
    uses its norm), rotation logits (N, R) or None). The rotation head is one linear layer, on h
    (CSI's code) or on the unit z (`rot_on_z`, the MIL-convex paper's Eq. 9 writes g(z))."""

    def __init__(self, net: str, in_channels: int, proj_dim: int, n_rot: int, rot_on_z: bool = False):
        super().__init__()
        self.encoder, feat_dim = build_encoder(net, in_channels)
        self.head = projection_head(feat_dim, proj_dim) if proj_dim > 0 else nn.Identity()
        self.rot_on_z = rot_on_z
        rot_in = (proj_dim or feat_dim) if rot_on_z else feat_dim
        # No head when nothing trains it (a parameter without gradients would stall DDP).
        self.rot_head = nn.Linear(rot_in, n_rot) if n_rot > 1 else None

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        z = self.head(h).float()
        logits = None
        if self.rot_head is not None:
            logits = self.rot_head(F.normalize(z, dim=1) if self.rot_on_z else h).float()
        return h, z, logits


class ContrastiveMethod(NeuralMethod):
    """A method that trains a ContrastiveNet on 2 SimCLR views x `rotations` rows of every image (unlabeled and
    labeled alike: TrainSet.kind is ignored) with Adam, linear warm-up then cosine, through methods/trainer.py.
    A method writes its `loss()` on a uint8 batch, optionally `start_epoch()` and `finish()`, and `score()`."""

    rot_on_z = False  # where the rotation head reads, see ContrastiveNet

    def rotation_classes(self) -> int:
        """Outputs of the rotation head; 1 = no head (override when the rotation loss is switched off)."""
        return 1

    def loss(self, forward: Callable, x: torch.Tensor, epoch: int, g: torch.Generator) -> dict:
        """One step on a uint8 batch (B, C, H, W) -> {"loss": total, "loss_<term>": ...} (tensors)."""
        raise NotImplementedError

    def make_net(self, in_channels: int) -> ContrastiveNet:
        cfg = self.config
        return ContrastiveNet(cfg.net, in_channels, cfg.proj_dim, self.rotation_classes(), self.rot_on_z)

    def step_loss(self, images: torch.Tensor, kind: torch.Tensor) -> StepLoss:
        return lambda forward, rows, epoch, g: self.loss(forward, images[rows], epoch, g)

    def fit_options(self) -> dict:
        return {"compile": self.config.compile}

    def forward_views(self, forward: Callable, x: torch.Tensor, g: torch.Generator):
        """Training rows of the uint8 batch x (B, ...): 2 views x `rotations` copies as shifted_views lays
        them out (row k * 2B + v * B + i) -> (z (R * 2B, D) raw projections, rotation logits or None)."""
        cfg, precision = self.config, self.precision
        views = shifted_views(x, 2, cfg.rotations, cfg.crop_scale_min, cfg.jitter, cfg.jitter_p, cfg.gray_p, g)
        with precision.autocast():
            _, z, logits = forward(precision.to_net(views))
        return z, logits

    def features(self, images: torch.Tensor, rotation: int = 0):
        """uint8 (N, C, H, W), no augmentation, turned by rotation * 90 degrees -> (h, z, logits) in
        eval mode, float32 on the device (logits None without a rotation head)."""
        h, z, logits = zip(*self.outputs(images, rotation), strict=True)
        return torch.cat(h).float(), torch.cat(z), None if logits[0] is None else torch.cat(logits)
