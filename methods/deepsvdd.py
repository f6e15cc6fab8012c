"""Deep SVDD, one-class: Ruff, Vandermeulen, Goernitz, Deecke, Siddiqui, Binder, Mueller, Kloft,
"Deep One-Class Classification", ICML 2018. A baseline of HSCL's Table 2 (unsupervised group).

A network phi without bias terms maps every training image close to a fixed centre c, the mean of
phi over the training set from an initial forward pass (Sec. 3.1, the one-class objective):

    min_W  1/n sum_i ||phi(x_i; W) - c||^2  +  weight decay
    score(x) = ||phi(x; W) - c||^2        (higher = more anomalous, as every method here)

Why no biases (Sec. 3.3, Prop. 2): with a bias in the last layer phi can output c for every input
(zero weights, bias = c) and the objective collapses to 0. So the shared encoder of
methods/networks.py is used with its BatchNorm layers made non-affine (a BatchNorm shift is a bias)
and a bias-free linear map to the rep_dim-dimensional output, as the authors' code does.

Unsupervised: the labels of the TrainSet are ignored; every training image, labeled anomalies
included, is treated as unlabeled (as the DeepSAD code treats its unsupervised baselines).
`methods/deepsad.py` is the same network and loop with the semi-supervised loss.

Choice: no autoencoder pre-training (the papers initialise the weights from a pre-trained
autoencoder; our encoders have no decoder). The network starts from its seeded random init.

Measured (quick profile, 1 CPU thread): one fit + score on digits (~130 training, ~600 test images)
takes about 0.2-0.35 s; test AUROCs in tests/test_baselines.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from methods.augment import normalize, to_float
from methods.base import TrainSet
from methods.networks import build_encoder


@dataclass(frozen=True)
class DeepSVDDConfig:
    """Defaults: Deep SAD's CIFAR-10 settings (Ruff et al. 2020, Sec. 4 and App.), as we recall
    them; we could not check them against the paper text here."""

    net: str = "resnet18"
    """shared encoder (methods/networks.py); the papers used a small LeNet-type CNN"""
    rep_dim: int = 128
    """dimension of the output space where c lives (Deep SAD: 128 on CIFAR-10, 32 on MNIST)"""
    epochs: int = 200
    """Deep SAD: 150 epochs at lr, then 50 at lr / 10"""
    lr: float = 1e-4
    lr_milestone: int = 150
    """from this epoch on the learning rate is lr / 10 (0 or >= epochs: never)"""
    batch_size: int = 128
    weight_decay: float = 0.5e-6
    """Adam's weight decay, the ||W||^2 regulariser of the objective (the authors' README example)"""
    center_eps: float = 0.1
    """coordinates of c closer to 0 than this are pushed to +-center_eps (authors' code: a 0
    coordinate is matched trivially by zero weights)"""
    amp: bool = True
    """bf16 autocast for the network (distances are taken in float32); on the CPU only with `cpu_bf16`"""
    channels_last: bool = True
    """channels_last memory format; on the CPU only with `cpu_bf16`"""
    cpu_bf16: bool = False
    """apply `amp` and `channels_last` on the CPU too (see methods/training.py)"""


def strip_biases(module: nn.Module) -> nn.Module:
    """Make a network bias-free in place: every affine BatchNorm becomes a non-affine one (its
    shift is a bias), and any layer with a bias term is refused. -> the module."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.affine:
            setattr(module, name, type(child)(child.num_features, eps=child.eps, momentum=child.momentum,
                                              affine=False))
        else:
            strip_biases(child)
    for name, p in module.named_parameters(recurse=False):
        if name == "bias" and p is not None:
            raise ValueError(f"{type(module).__name__} has a bias term: Deep SVDD needs a bias-free network")
    return module


class SVDDNet(nn.Module):
    """Bias-free encoder + bias-free linear map: (N, C, H, W) float -> (N, rep_dim)."""

    def __init__(self, net: str, in_channels: int, rep_dim: int):
        super().__init__()
        encoder, feat_dim = build_encoder(net, in_channels)
        self.encoder = strip_biases(encoder)
        self.out = nn.Linear(feat_dim, rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(x))


class DeepSVDD:
    name = "deepsvdd"
    Config = DeepSVDDConfig
    uses_labels = False
    # quick: 8x8 digits, ~130 images: 40 epochs of 2 batches = 80 Adam steps (HSCL's quick budget
    # in epochs and batch size), about 0.2 s on one CPU thread. lr 1e-3 and no milestone: 80 steps
    # at 1e-4 learned less (pooled AUROC 0.90 vs 0.97, 4 digit pairs x 2 seeds).
    profiles = {
        "quick": {"net": "cnn_small", "rep_dim": 32, "epochs": 40, "lr": 1e-3, "lr_milestone": 0,
                  "batch_size": 64},
        # small: CIFAR-10 on a CPU (docs/reproduction.md): the quarter-width ResNet-18, 8 epochs at lr 1e-3
        # (~650 Adam steps; at 1e-4 so few steps barely move phi), bf16 on the CPU; about a minute a trial.
        "small": {"net": "resnet18_narrow", "epochs": 8, "lr": 1e-3, "lr_milestone": 0, "cpu_bf16": True},
        "paper": {},
    }

    def __init__(self, config: DeepSVDDConfig, device: torch.device, seed: int):
        self.config = config
        self.device = torch.device(device)
        self.seed = int(seed)
        fast = self.device.type == "cuda" or config.cpu_bf16
        self.amp = config.amp and fast
        self.channels_last = config.channels_last and fast
        self.net: SVDDNet | None = None
        self.c: torch.Tensor | None = None

    # ---- the objective: overridden by Deep SAD ------------------------------------------------------

    def train_kind(self, train: TrainSet) -> torch.Tensor:
        """The labels training sees: none (all 0 = unlabeled) for the one-class method."""
        return torch.zeros_like(train.kind, dtype=torch.int8)

    def loss(self, dist: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """One-class Deep SVDD: the mean squared distance to c. dist (B,), kind (B,) unused."""
        return dist.mean()

    # ---- fit / score --------------------------------------------------------------------------------

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(to_float(images.to(self.device)))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _phi(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> phi (B, rep_dim) in float32."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.net(self._inputs(images)).float()

    @torch.no_grad()
    def _embed(self, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        self.net.eval()
        return torch.cat([self._phi(part) for part in images.split(chunk)])

    @torch.no_grad()
    def _init_center(self, images: torch.Tensor) -> torch.Tensor:
        """c = mean of phi over the training set from the initial (eval-mode) forward pass."""
        c = self._embed(images).mean(dim=0)
        eps = self.config.center_eps
        return torch.where(c.abs() < eps, torch.where(c < 0, -eps, eps), c)

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        cfg, dev = self.config, self.device
        t0 = time.perf_counter()
        images = train.images.to(dev)  # uint8 (N, C, H, W): batches are index gathers
        kind = self.train_kind(train).to(dev)
        n = images.shape[0]
        with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
            torch.manual_seed(self.seed)
            self.net = SVDDNet(cfg.net, images.shape[1], cfg.rep_dim).to(dev)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.c = self._init_center(images)

        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        milestones = [cfg.lr_milestone] if 0 < cfg.lr_milestone < cfg.epochs else []
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        steps_per_epoch = max(1, round(n / cfg.batch_size))  # near-equal batches using every sample
        loss_value = float("nan")
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            losses = []
            for idx in torch.randperm(n, generator=gen, device=dev).tensor_split(steps_per_epoch):
                z = self._phi(images[idx])  # (B, rep_dim)
                dist = ((z - self.c) ** 2).sum(dim=1)  # (B,) squared distance to the centre
                loss = self.loss(dist, kind[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            sched.step()
            loss_value = torch.stack(losses).mean().item()
            if on_epoch is not None:
                on_epoch(epoch, {"loss": loss_value, "lr": sched.get_last_lr()[0]})
        if cfg.epochs == 0:  # nothing trained: report the objective at the initial weights
            with torch.no_grad():
                loss_value = self.loss(((self._embed(images) - self.c) ** 2).sum(dim=1), kind).item()
        return {"epochs": cfg.epochs, "steps": cfg.epochs * steps_per_epoch, "final_loss": loss_value,
                "fit_seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N,) squared distance to c: higher = more anomalous."""
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__}.score() called before fit()")
        return ((self._embed(images) - self.c) ** 2).sum(dim=1).cpu().numpy()
