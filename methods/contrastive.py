"""Plumbing shared by the contrastive methods that train on every image, without labels: CSI, MSC and
MIL-convex (methods/csi.py, msc.py, milconvex.py).

- `ContrastiveConfig`: the fields they share (net, views, optimiser, schedule, device flags); each
  method's Config extends it and resets the defaults its paper gives.
- `ContrastiveNet`: encoder f -> features h, projection head -> z, optional linear rotation head.
- `nt_xent`: SimCLR's contrastive loss with one positive per row, the building block of all three.
- `ContrastiveMethod`: one fit loop (Adam, linear warm-up then cosine per step, optional DDP), the
  seeded network build and batched feature extraction. A method writes only what its paper says:
  `loss()` for one step, optionally `start_epoch()` (e.g. a re-computed centre) and `finish()` (its
  score bank), and `score()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from methods.augment import normalize, shifted_views, to_float
from methods.base import TrainSet
from methods.networks import build_encoder, projection_head


@dataclass(frozen=True)
class ContrastiveConfig:
    """Shared fields. Defaults: the MIL-convex paper's Sec. 4.1 (ResNet-18, 200 epochs, Adam 1e-3, 10
    warm-up epochs then cosine) and SimCLR's augmentations, which CSI and MSC use as well."""

    net: str = "resnet18"
    """encoder, see methods/networks.py ("resnet18" = CIFAR ResNet-18, "cnn_small")"""
    proj_dim: int = 128
    """output dimension of the 2-layer projection head; 0 = no head, the losses see the encoder features"""
    tau: float = 0.5
    """temperature of the contrastive losses"""
    rotations: int = 4
    """shifting transformation: copies rotated by k * 90 degrees, k < rotations (1 = none)"""
    batch_size: int = 256
    """images per step (split across DDP ranks); each gives 2 views x `rotations` rows"""
    epochs: int = 200
    lr: float = 1e-3
    """Adam's initial learning rate"""
    warmup_epochs: int = 10
    """linear warm-up, then cosine decay to 0 (per step)"""
    weight_decay: float = 0.0
    crop_scale_min: float = 0.08
    """smallest area fraction of the Inception crop (SimCLR's 0.08)"""
    jitter: float = 0.4
    """colour-jitter strength s: brightness/contrast/saturation in [1-s, 1+s], hue s/4"""
    jitter_p: float = 0.8
    gray_p: float = 0.2
    amp: bool = True
    """bf16 autocast for the forward pass; on the CPU only with `cpu_bf16`"""
    channels_last: bool = True
    """channels_last memory format; on the CPU only with `cpu_bf16`"""
    cpu_bf16: bool = False
    """apply `amp` and `channels_last` on the CPU too: together 3.8x fp32's HSCL step with the narrow ResNet-18
    on this project's AVX-512 BF16 CPU (benchmarks/records/train_throughput-resnet18_narrow.json); off by
    default, since a CPU without native bf16 emulates it"""
    compile: bool = False
    """torch.compile the model"""


# The quick profile's values that every method here shares: the small CNN, 64 digits per step, and
# crops that keep >= 25% of an 8x8 digit (at SimCLR's 0.08 a crop is a blob of 2x2 pixels).
QUICK_DIGITS = {"net": "cnn_small", "batch_size": 64, "crop_scale_min": 0.25}

# The small profile's shared values: real CIFAR-10 at 32x32 on a CPU in minutes per trial. The paper's
# losses and augmentations (SimCLR crops from 0.08, jitter, rotations) are unchanged; the network is the
# quarter-width CIFAR ResNet-18, training is 3 epochs of 64-image batches (about 250 Adam steps on one
# normal class), and bf16 runs on the CPU. One HSCL or CSI trial takes a few minutes of one CPU thread
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


def view_partner(n_rot: int, b: int, device=None) -> torch.Tensor:
    """For rows laid out as methods.augment.shifted_views gives them with 2 views (row k*2B + v*B + i),
    the row index of each row's positive: same image, same rotation, the other view. (2 * n_rot * b,)"""
    return torch.arange(2 * n_rot * b, device=device).view(n_rot, 2, b).flip(1).reshape(-1)


def nt_xent(z: torch.Tensor, partner: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent, the MIL-convex paper's Eq. (3) with one positive: z (M, D) unit rows,
    partner (M,) each row's positive; every other row is a negative. Mean over the M rows of
        -log( exp(z_i.z_p(i) / tau) / sum_{j != i} exp(z_i.z_j / tau) )."""
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))  # (M, M); a row is not its own negative
    return F.cross_entropy(logits, partner)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the initial learning rate: linear ramp to 1 over warmup_steps, then half a cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class ContrastiveMethod:
    """fit() and feature extraction for a method whose `loss()` takes a uint8 batch. Unsupervised:
    trains on every training image (unlabeled and labeled alike) and ignores TrainSet.kind."""

    uses_labels = False
    rot_on_z = False  # where the rotation head reads, see ContrastiveNet

    def __init__(self, config: ContrastiveConfig, device: torch.device, seed: int):
        """The runner's call; a subclass keeps its own state (score banks, centre) in class attributes."""
        self.config = config
        self.device = torch.device(device)
        self.seed = int(seed)
        fast = self.device.type == "cuda" or config.cpu_bf16
        self.amp = config.amp and fast
        self.channels_last = config.channels_last and fast
        self.net: ContrastiveNet | None = None

    # ---- what a method provides -------------------------------------------------------------------

    def rotation_classes(self) -> int:
        """Outputs of the rotation head; 1 = no head (override when the rotation loss is switched off)."""
        return 1

    def start_epoch(self, epoch: int, images: torch.Tensor) -> None:
        """Called before each epoch with the whole training set (uint8, on the device)."""

    def loss(self, forward: Callable, x: torch.Tensor, epoch: int, g: torch.Generator) -> dict:
        """One step on a uint8 batch (B, C, H, W) -> {"loss": total, "loss_<term>": ...} (tensors)."""
        raise NotImplementedError

    def finish(self, images: torch.Tensor) -> None:
        """Called once after training with the whole training set: build the score bank."""

    # ---- plumbing ------------------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        """Under DDP every rank takes rank 0's copy (e.g. a centre computed with rank-local BatchNorm stats)."""
        if self.distributed:
            dist.broadcast(t, src=0)
        return t

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def build_net(self, in_channels: int) -> ContrastiveNet:
        # From the seed on the CPU (same weights on any device), leaving the global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = ContrastiveNet(self.config.net, in_channels, self.config.proj_dim, self.rotation_classes(),
                                 self.rot_on_z)
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def forward_views(self, forward: Callable, x: torch.Tensor, g: torch.Generator):
        """Training rows of the uint8 batch x (B, ...): 2 views x `rotations` copies as shifted_views lays
        them out (row k * 2B + v * B + i) -> (z (R * 2B, D) raw projections, rotation logits or None)."""
        cfg = self.config
        views = shifted_views(x, 2, cfg.rotations, cfg.crop_scale_min, cfg.jitter, cfg.jitter_p, cfg.gray_p, g)
        with self.autocast():
            _, z, logits = forward(self.to_net(views))
        return z, logits

    @torch.no_grad()
    def features(self, images: torch.Tensor, rotation: int = 0, chunk: int = 1024):
        """uint8 (N, C, H, W), no augmentation, turned by rotation * 90 degrees -> (h, z, logits) in
        eval mode, float32 on the device (logits None without a rotation head)."""
        self.net.eval()
        parts = []
        for x in images.to(self.device).split(chunk):
            x = torch.rot90(x, rotation, dims=(2, 3)) if rotation else x
            with self.autocast():
                parts.append(self.net(self.to_net(normalize(to_float(x)))))
        h, z, logits = zip(*parts, strict=True)
        return torch.cat(h).float(), torch.cat(z), None if logits[0] is None else torch.cat(logits)

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        cfg, dev = self.config, self.device
        t0 = time.perf_counter()
        images = train.images.to(dev)  # every image, labels ignored; batches are index gathers
        n = images.shape[0]
        self.net = self.build_net(images.shape[1])
        rank, world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        model = self.net
        if self.distributed:
            model = DistributedDataParallel(self.net, device_ids=[dev] if dev.type == "cuda" else None)
        forward = torch.compile(model) if cfg.compile else model

        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = max(1, round(n / cfg.batch_size))  # near-equal batches that cover every image once
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, cfg.warmup_epochs * steps, cfg.epochs * steps))
        order_gen = torch.Generator(device=dev).manual_seed(self.seed)  # the same on every rank
        aug_gen = torch.Generator(device=dev).manual_seed(
            int(np.random.SeedSequence([self.seed, rank]).generate_state(1)[0]))  # own views per rank

        history: dict[str, float] = {"loss": float("nan")}
        for epoch in range(1, cfg.epochs + 1):
            self.start_epoch(epoch, images)
            self.net.train()
            totals = []
            for batch in torch.randperm(n, generator=order_gen, device=dev).tensor_split(steps):
                parts = self.loss(forward, images[batch.tensor_split(world)[rank]], epoch, aug_gen)
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                opt.step()
                sched.step()
                totals.append(torch.stack([v.detach().float() for v in parts.values()]))
            means = torch.stack(totals).mean(0)
            if self.distributed:
                dist.all_reduce(means)
                means /= world
            history = dict(zip(parts, means.tolist(), strict=True))  # one host sync per epoch
            if on_epoch is not None:
                on_epoch(epoch, {**history, "lr": sched.get_last_lr()[0]})

        if self.distributed:  # BatchNorm running stats: rank 0's everywhere, so every rank scores alike
            for buf in self.net.buffers():
                dist.broadcast(buf, src=0)
        self.finish(images)
        return {
            "epochs": cfg.epochs,
            "steps": cfg.epochs * steps,
            "final_loss": history["loss"],
            **{f"final_{k}": v for k, v in history.items() if k != "loss"},
            "world_size": world,
            "fit_seconds": time.perf_counter() - t0,
        }

    def require_fit(self) -> None:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__}.score() called before fit()")
