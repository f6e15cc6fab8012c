"""HSCL: Hierarchical Semi-Supervised Contrastive Learning for Contamination-Resistant Anomaly Detection
(Wang, Zhan, Wang, Song, Nahrstedt, ECCV 2022; ../shared/papers/001_cf8c822604185d3a.txt).

One encoder f (ResNet-18 + projection head, unit-norm output z) and K learnable prototypes V are
trained end to end on a contaminated set X = X_u (unlabeled) + X_n (labeled normal) + X_a (labeled
anomalies) with three relations (Sec. 3.2), Eq. (8):

    L = L_S-S + lambda1 * L_S-P + lambda2 * L_N-A
    S-S  sample-to-sample   InfoNCE over two augmented views; rotated copies are extra negatives (CSI)
    S-P  sample-to-prototype pull normals (soft-weighted unlabeled samples) to V, push anomalies off
    N-A  normal-to-abnormal InfoNCE between samples drawn by their weight, labeled anomalies as negatives

and a test image is scored by its similarity to the nearest prototype, Eq. (9). This file returns
the NEGATED Eq. (9), so that higher = more anomalous like every method here.

Where the paper is silent, the choices made are marked "Choice:" below.

Measured (quick profile, torch 2.14.1, 1 CPU thread): one fit + score on sklearn digits (~120 normal
+ 6 labeled normal + 7 labeled anomaly 8x8 images; 540 test images) takes about 2.4 s on a loaded
2-core machine. Mean pooled AUROC at gamma_p 0, normal classes 0, 2, 4, 6, 8 x 2 seeds: 0.968 (the
quick settings before the tau / batch choice below: 0.929); untrained (epochs=0): 0.50.

Same seed, same device -> same result: on CPU bit for bit (tests/test_hscl.py); on CUDA only as far
as cuDNN's kernels are deterministic (we do not force torch.use_deterministic_algorithms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.augment import rotations, simclr_views
from methods.base import NeuralMethod, TrainSet
from methods.contrastive import SMALL_CIFAR, ContrastiveConfig
from methods.losses import nt_xent, view_partner
from methods.networks import ENCODERS, build_encoder, projection_head
from methods.trainer import StepLoss


@dataclass(frozen=True)
class HSCLConfig(ContrastiveConfig):
    """HSCL hyper-parameters; defaults are the paper's (Sec. 4.2) unless said otherwise. The shared
    contrastive fields (net, proj_dim = D, tau of Eq. 1 and 6, batch, schedule, SimCLR augmentations,
    rotations as CSI's shifting transformation, amp / channels_last / compile) come from
    methods/contrastive.py; HSCL trains 250 epochs and adds its own weights and ablation switches."""

    epochs: int = 250
    lambda1: float = 1.0
    lambda2: float = 1.0
    """the weights of L_S-P and L_N-A in Eq. (8)"""
    n_prototypes: int = 1
    """K, the number of prototypes (Fig. 4 right: K = 1 is best)"""
    w_delta: float = 0.4
    """Eq. (7) threshold: only samples with weight w > w_delta are drawn for N-A (Fig. 4 left)"""
    use_ss: bool = True
    use_sp: bool = True
    use_na: bool = True
    """Table 5's ablation of the three relations: the sample-to-sample loss; the prototypes and the S-P
    loss (without them the score is k-NN, Sec. 4.4); the normal-to-abnormal loss"""
    sp_pos: bool = True
    sp_neg: bool = True
    """Table 5's ablation of Eq. (4): its first (normal) and its second (anomaly) term"""

    def __post_init__(self):  # refuse a bad value when the config is built, not mid-sweep
        checks = {
            "net": self.net in ENCODERS, "proj_dim": self.proj_dim >= 1, "tau": self.tau > 0,
            "n_prototypes": self.n_prototypes >= 1, "w_delta": 0 <= self.w_delta < 1,
            "batch_size": self.batch_size >= 1, "epochs": self.epochs >= 0, "lr": self.lr > 0,
            "warmup_epochs": self.warmup_epochs >= 0, "weight_decay": self.weight_decay >= 0,
            "crop_scale_min": 0 < self.crop_scale_min <= 1, "jitter": 0 <= self.jitter < 1,
            "jitter_p": 0 <= self.jitter_p <= 1, "gray_p": 0 <= self.gray_p <= 1,
            "rotations": 1 <= self.rotations <= 4,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid HSCLConfig values: {', '.join(bad)} (known nets: {', '.join(ENCODERS)})")


# --------------------------------------------------------------------------------------------------
# The losses, as pure functions of unit-norm embeddings (tests check them on hand-computed inputs). S-S,
# Eq. (1)-(2) with one positive per anchor, is SimCLR's NT-Xent: methods.losses.nt_xent.
# --------------------------------------------------------------------------------------------------


def prototype_similarity(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """max_k z_i^T V_k for unit z (M, D) and V (D, K) with unit columns -> (M,)."""
    return (z @ prototypes).amax(dim=1)


def sample_weights(sim: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Eq. (5): w_i = 1 for labeled normals, (max_k z_i^T V_k + 1) / 2 for unlabeled samples, in [0, 1].
    Labeled anomalies are not in X_n u X_u: they get 0. sim (M,) should be detached by the caller."""
    w = (sim + 1) / 2
    w = torch.where(kind == TrainSet.NORMAL, torch.ones_like(w), w)
    return torch.where(kind == TrainSet.ANOMALY, torch.zeros_like(w), w)


def sp_terms(sim: torch.Tensor, kind: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (4), as its two terms (Table 5 ablates each):

        pos = 1/||w||_1 * sum_{i in n u u} w_i (1 - max_k z_i^T V_k)^2
        neg = 1/N_a     * sum_{a in a}     [max_k z_a^T V_k]_+^2

    We read the printed ||w^T (b - max Z^T V)||^2 as this weighted mean of squares: with w = 1 it is
    Eq. (3)'s 1/N_n ||b - max Z^T V||^2. A batch without labeled anomalies gives neg = 0 (the sum is
    empty and we divide by max(N_a, 1)), still connected to V so DDP sees a gradient for it.
    """
    nu = (kind != TrainSet.ANOMALY).to(sim.dtype)
    wn = w * nu
    pos = (wn * (1 - sim) ** 2).sum() / wn.sum().clamp_min(1e-12)
    is_a = (kind == TrainSet.ANOMALY).to(sim.dtype)
    neg = (is_a * F.relu(sim) ** 2).sum() / is_a.sum().clamp_min(1)
    return pos, neg


def sampling_distribution(w: torch.Tensor, w_delta: float) -> torch.Tensor:
    """Eq. (7): p_w(x_i) = 1[w_i > w_delta] w_i / sum_j 1[w_j > w_delta] w_j; all zeros if none passes."""
    keep = torch.where(w > w_delta, w, torch.zeros_like(w))
    return keep / keep.sum().clamp_min(1e-12)


def draw(p: torch.Tensor, n: int, generator: torch.Generator | None, exclude: torch.Tensor | None = None):
    """n independent draws from the distribution p (M,), by the Gumbel-max trick: no host sync (unlike
    torch.multinomial's checks) and no failure when p is all zeros. exclude (n,): a row index each
    draw must avoid (an anchor's positive is another sample). -> (index (n,), valid (n,) bool), where
    valid is False when nothing with p > 0 was left to draw."""
    logp = torch.log(p).expand(n, -1)  # (n, M); log 0 = -inf is never the argmax unless all are
    if exclude is not None:
        logp = logp.scatter(1, exclude[:, None], float("-inf"))
    u = torch.rand(logp.shape, generator=generator, device=p.device).clamp_(1e-20, 1 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    idx = (logp + gumbel).argmax(dim=1)
    valid = torch.isfinite(logp.gather(1, idx[:, None]).squeeze(1))
    return idx, valid


def na_loss(z: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor,
            negative: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (6): InfoNCE with anchors and positives drawn from p_w, labeled anomalies as negatives.

    z (M, D) unit rows; anchor, positive (n,) row indices; valid (n,) which draws count; negative
    (M,) bool, the labeled anomalies. Per draw:
        -log( exp(z_a.z_p / tau) / (exp(z_a.z_p / tau) + sum_{x in X_a} exp(z_a.z_x / tau)) ).
    No labeled anomaly in the batch -> the ratio is 1 and the loss is exactly 0.
    """
    logits = z[anchor] @ z.T / tau  # (n, M)
    pos = logits.gather(1, positive[:, None])  # (n, 1)
    neg = logits.masked_fill(~negative[None, :], float("-inf"))  # (n, M): only anomaly columns stay
    per_draw = torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos.squeeze(1)
    v = valid.to(z.dtype)
    return (v * per_draw).sum() / v.sum().clamp_min(1)


def normality(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. (9): s(x) = max_k f(x)^T V_k (higher = more normal)."""
    return prototype_similarity(z, prototypes)


# --------------------------------------------------------------------------------------------------
# Model and method.
# --------------------------------------------------------------------------------------------------


class HSCLNet(nn.Module):
    """Encoder + projection head (-> unit-norm z, (N, D)) and the prototypes V (D, K).
    One module, so that DDP averages the gradients of all three."""

    def __init__(self, cfg: HSCLConfig, in_channels: int):
        super().__init__()
        self.encoder, feat_dim = build_encoder(cfg.net, in_channels)
        self.head = projection_head(feat_dim, cfg.proj_dim)
        # Without S-P (Table 5) there are no prototypes; a parameter without gradients would stall DDP.
        self.prototypes = nn.Parameter(torch.randn(cfg.proj_dim, cfg.n_prototypes)) if cfg.use_sp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) float -> (N, D) unit rows
        return F.normalize(self.head(self.encoder(x)).float(), dim=1)

    def unit_prototypes(self) -> torch.Tensor:  # (D, K), columns normalised as Eq. (5) assumes
        return F.normalize(self.prototypes, dim=0)


class HSCL(NeuralMethod):
    """HSCL as a method: fit(TrainSet) trains encoder + prototypes, score(images) = -Eq. (9)."""

    name = "hscl"
    Config = HSCLConfig
    uses_labels = True  # X_n and X_a enter S-P and N-A
    # quick: sized so one fit + score on ~140 8x8 digits takes a few seconds on one CPU thread (120 Adam
    # steps of 32 images x 2 views x 4 rotations). Crops keep >= 25% of an 8x8 digit (at 0.08 a
    # crop is a 2x2-pixel blob); lr 3e-3 because so few steps at 1e-3 learned less (60 steps, 5 digit
    # pairs: AUROC 0.75 at 1e-3, 0.82 at 3e-3).
    # choice: tau 0.1 and batch 32 for 30 epochs (was tau 0.5, batch 64, 40 epochs, 4 warm-up), chosen on the
    # validation AUROC (held-out training images) of 5 normal classes (1, 3, 5, 7, 9; known class = next)
    # x seeds 0, 1 at gamma_p 0, one factor at a time: mean val 0.918 -> 0.964 (paired +0.046 +- 0.014,
    # 8/10 better). tau is the main factor (tau 0.1 alone: val 0.959, 9/10 better; tau 1.0: 0.890); more steps
    # the second (batch 32 alone: 0.944). Worse on validation: lambda1 5 (0.861) or 0.3, K = 4 or 2 prototypes,
    # proj_dim 32, 1 or 2 rotations (0.917 / 0.892; with tau 0.2: 0.909), no jitter, crops from 50 %, lr 1e-3
    # or 1e-2, 20 epochs (0.937). No slower: 30 epochs of 32 vs 40 of 64, interleaved on one grid point,
    # one thread, loaded 2-core machine: median 2.4 s vs 2.9 s a trial. Test AUROC afterwards, other normal
    # classes (0, 2, 4, 6, 8) x 2 seeds, gamma_p 0: 0.929 -> 0.968 (tests/test_quick_profile.py). What still
    # holds HSCL back on digits is Eq. (9)'s one-prototype score: on the same tau 0.1 nets (5 classes, seed 0)
    # the nearest training neighbour scores test 0.976 in z and 0.992 in encoder features, the prototype 0.938.
    # choice: cpu_bf16 in quick as well (the CPU fast path, methods/trainer.py Precision: channels_last, and bf16
    # where the CPU has it natively), so that the default sweep fits in 10 minutes (issue 20, item 5). One quick
    # trial, interleaved with the old setting, one thread: AMD EPYC with native bf16 1.67 -> 1.22 s (CSI 1.65 ->
    # 1.21 s); fp32 channels_last (a CPU without native bf16) 1.44 -> 1.27 s. The whole sweep, side by side:
    # benchmarks/records/quick_sweep.json, which also holds the validation AUROC before and after.
    profiles = {
        "quick": {"net": "cnn_small", "epochs": 30, "batch_size": 32, "warmup_epochs": 3,
                  "crop_scale_min": 0.25, "lr": 3e-3, "tau": 0.1, "cpu_bf16": True},
        "small": SMALL_CIFAR,  # methods/contrastive.py: CIFAR-10, quarter-width ResNet-18, 3 epochs, bf16 on CPU
        "paper": {},
    }
    train_features: torch.Tensor | None = None  # k-NN score bank when use_sp=False

    def make_net(self, in_channels: int) -> HSCLNet:
        return HSCLNet(self.config, in_channels)

    def fit_options(self) -> dict:
        return {"compile": self.config.compile}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> unit z (N, D), eval mode, no augmentation."""
        return torch.cat(self.outputs(images))

    # ---- one training step: Eq. (8) ---------------------------------------------------------------

    def loss(self, forward: Callable, x: torch.Tensor, kind: torch.Tensor, g: torch.Generator) -> dict:
        """x uint8 (B, C, H, W), kind int8 (B,) on the device -> {"loss", "loss_ss", "loss_sp", "loss_na"}."""
        cfg = self.config
        b = x.shape[0]
        # Two SimCLR views of every image: rows [0, B) view 1, [B, 2B) view 2.
        views = simclr_views(x, 2, cfg.crop_scale_min, cfg.jitter, cfg.jitter_p, cfg.gray_p, generator=g)
        # CSI shifting transformation: rotate the augmented views by k * 90 degrees.
        # Choice: rotation after augmentation, so the 4 copies of a view share its crop (the paper
        # and CSI rotate first; with square images and these augmentations the two differ only in
        # flip direction); the rotated copies enter S-S only, S-P and N-A use the upright views
        # (the paper does not say whether rotated copies are normals, anomalies or neither).
        n_rot = cfg.rotations if cfg.use_ss else 1
        views = rotations(views, n_rot)  # (R * 2B, C, H, W), row = k * 2B + view * B + i
        with self.precision.autocast():
            z = forward(self.precision.to_net(views))  # (R * 2B, D) unit rows, float32
        zero = z.sum() * 0  # a 0 that keeps the graph (DDP wants every parameter in every step)

        # S-S, Eq. (1)-(2): positive = the same image, same rotation, other view. Choice (CSI):
        # every rotated copy is an instance of its own, so (x, k) and (x, k') are negatives.
        loss_ss = nt_xent(z, view_partner(n_rot, b, z.device), cfg.tau) if cfg.use_ss else zero

        z0, kind2 = z[: 2 * b], kind.repeat(2)  # upright views (2B, D) and their labels
        # S-P, Eq. (4)-(5): weights w from each view's own similarity to V, detached (the weights
        # steer the loss, they are not themselves trained).
        if cfg.use_sp:
            sim = prototype_similarity(z0, self.net.unit_prototypes())  # (2B,)
            w = sample_weights(sim.detach(), kind2)
            pos, neg = sp_terms(sim, kind2, w)
            loss_sp = float(cfg.sp_pos) * pos + float(cfg.sp_neg) * neg  # x 0 keeps V in the graph
        else:
            # No prototypes, no soft weights (Sec. 4.4): every normal / unlabeled sample has w = 1.
            w = (kind2 != TrainSet.ANOMALY).to(z0.dtype)
            loss_sp = zero

        # N-A, Eq. (6)-(7): 2B anchors drawn from p_w, each with a positive drawn from p_w among the
        # other rows (Choice: one positive per anchor, drawn with replacement; the other view of the
        # same image may be drawn), the batch's labeled anomalies (both views) as negatives.
        if cfg.use_na:
            p = sampling_distribution(w, cfg.w_delta)
            anchor, ok_a = draw(p, 2 * b, g)
            positive, ok_p = draw(p, 2 * b, g, exclude=anchor)
            loss_na = na_loss(z0, anchor, positive, ok_a & ok_p, kind2 == TrainSet.ANOMALY, cfg.tau)
        else:
            loss_na = zero

        loss = loss_ss + cfg.lambda1 * loss_sp + cfg.lambda2 * loss_na  # Eq. (8)
        return {"loss": loss, "loss_ss": loss_ss, "loss_sp": loss_sp, "loss_na": loss_na}

    def step_loss(self, images: torch.Tensor, kind: torch.Tensor) -> StepLoss:
        return lambda forward, rows, epoch, g: self.loss(forward, images[rows], kind[rows], g)

    # ---- score ----------------------------------------------------------------------------------------

    def finish(self, images: torch.Tensor, kind: torch.Tensor) -> None:
        if not self.config.use_sp:  # k-NN bank (Sec. 4.4): the normal and unlabeled training samples
            self.train_features = self.embed(images[kind != TrainSet.ANOMALY])

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N,) float: -Eq. (9), higher = more anomalous. Without S-P:
        minus the largest cosine similarity to the training features (k-NN with k = 1, CSI's)."""
        z = self.embed(images)
        if self.config.use_sp:
            s = normality(z, self.net.unit_prototypes())
        else:
            s = (z @ self.train_features.T).amax(dim=1)
        return (-s).float().cpu().numpy()
