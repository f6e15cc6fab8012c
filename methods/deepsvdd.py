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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from methods.augment import normalize, to_float
from methods.base import NeuralMethod, TrainSet
from methods.networks import build_encoder
from methods.optim import step_decay
from methods.trainer import Schedule, StepLoss


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
    """apply `amp` and `channels_last` on the CPU too (see methods/contrastive.py)"""


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


class DeepSVDD(NeuralMethod):
    name = "deepsvdd"
    Config = DeepSVDDConfig
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
    c: torch.Tensor | None = None  # the centre, fixed before training

    # ---- the objective: overridden by Deep SAD ------------------------------------------------------

    def loss(self, dist: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """One-class Deep SVDD: the mean squared distance to c. dist (B,), kind (B,) unused: the labels are ignored."""
        return dist.mean()

    # ---- training ------------------------------------------------------------------------------------

    def make_net(self, in_channels: int) -> SVDDNet:
        return SVDDNet(self.config.net, in_channels, self.config.rep_dim)

    def schedule(self) -> Schedule:
        return step_decay(self.config.lr_milestone)  # lr / 10 from the milestone epoch on

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> phi (N, rep_dim) in float32, eval mode."""
        return torch.cat(self.outputs(images)).float()

    def initial_centre(self, images: torch.Tensor) -> torch.Tensor:
        """c = mean of phi over the training set from the initial (eval-mode) forward pass."""
        c = self.embed(images).mean(dim=0)
        eps = self.config.center_eps
        return torch.where(c.abs() < eps, torch.where(c < 0, -eps, eps), c)

    def step_loss(self, images: torch.Tensor, kind: torch.Tensor) -> StepLoss:
        self.c = self.initial_centre(images)  # Sec. 3.1: fixed before the first step

        def step(forward: Callable, rows: torch.Tensor, epoch: int, g: torch.Generator) -> dict:
            with self.precision.autocast():
                z = forward(self.precision.to_net(normalize(to_float(images[rows])))).float()  # (B, rep_dim)
            dist = ((z - self.c) ** 2).sum(dim=1)  # (B,) squared distance to the centre
            return {"loss": self.loss(dist, kind[rows])}

        return step

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        summary = super().fit(train, on_epoch)
        if self.config.epochs == 0:  # nothing trained: report the objective at the initial weights
            dist = ((self.embed(train.images) - self.c) ** 2).sum(dim=1)
            summary["final_loss"] = self.loss(dist, train.kind.to(self.device, torch.int8)).item()
        return summary

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N,) squared distance to c: higher = more anomalous."""
        return ((self.embed(images) - self.c) ** 2).sum(dim=1).cpu().numpy()
