"""CADet: Fully Self-Supervised Anomaly Detection With Contrastive Learning (Guille-Escuret, Rodriguez,
Vazquez, Mitliagkas, Monteiro; /work/shared/papers/004_fea3bd5cd4f38a35.txt).

Three parts, each a pure function below and used by the `CADet` method and by
`orchestrator/cadet_experiments.py`:

1. Contrastive pre-training (Sec. 3): SimCLR's NT-Xent, Eq. (1), at tau = 0.1 over two augmented
   views, an encoder f and a 3-layer projection head h (SimCLRv2), LARS (lr 1.2, momentum 0.9,
   weight decay 1e-4), linear warm-up for 40 epochs then cosine to epoch 800, batch 1024 across all
   workers with the embeddings of every worker in the loss ("aggregating the embeddings computed by
   each GPU"). Under DDP the model is wrapped in DistributedDataParallel and each global batch is
   sharded by rank; the similarity used everywhere afterwards is the cosine of ENCODER features
   (Sec. 3: "we use the features produced by the encoder without the contrastive head").
2. Two-sample tests (Sec. 4): the unbiased MMD estimator with the cosine kernel, Eq. (4), the
   permutation p-value (1 + #{MMD_perm >= MMD}) / (n_perm + 1), and MMD-CC (Algorithm 1) whose null
   distribution comes from splits of two CLEAN samples S_P^(1) u S_P^(2). All permutations (and all
   samplings of an experiment) are one batched tensor computation: for a pooled kernel matrix K (2n x 2n)
   and a split into X (first n of a permutation) and Y (last n),
       sum_{i != j} H_ij = s^T K s - tr K + 2 sum_i K(x_i, y_i),     s = +1 on X, -1 on Y,
   so every permutation costs one (2n,) x (2n, 2n) product and one gather, with no (n_perm, 2n, 2n) copy.
3. The single-sample CADet score (Sec. 5): n_trs transformed views of a test image x,
       m_in(x)  = mean over view pairs i != j of s(x_i, x_j)                              Eq. (5)
       m_out(x) = mean over views i, X_val^(1) images k and their views j of s(x_i, x_j^(k))   Eq. (5)
       score_C  = m_in + gamma * m_out                                                    Eq. (6)
       gamma    = sqrt(Var m_in / Var m_out) over X_val^(2)                               Eq. (7)
       p(x)     = (#{x' in X_val^(2): score_C(x') < score_C(x)} + 1) / (|X_val^(2)| + 1)   Eq. (8)
   (Algorithms 2 and 3). A LOW score_C (views that agree little with each other and with in-distribution
   data) means anomalous, and a small p-value. `CADet.score` therefore returns -score_C:
   HIGHER = MORE ANOMALOUS like every method here; `CADet.p_values` gives Eq. (8).
   m_out needs only the mean unit feature of X_val^(1)'s views (the mean of cosines between unit vectors
   is the dot product of their means), so calibration keeps one D-vector, not 300 x 50 features.

Choices where the paper is silent or self-contradictory (marked "Choice:" in the code too):
- Eq. (5) prints n_trs (n_trs + 1) as m_in's denominator; we divide by the number of pairs, n_trs (n_trs - 1),
  so m_in is a mean (Table 5's mean m_in = 0.972 exceeds 49/51, the largest value the printed form allows
  with 50 views). The factor is irrelevant anyway: gamma rescales with it and score_C only scales.
- X_val^(1) and X_val^(2) are drawn from the training images and, by default, held out from
  pre-training (`calib_holdout`): the paper calibrates on ImageNet's validation split, which it never
  trained on; calibrating on images the network was trained on would make clean test images look
  atypical and inflate the false positive rate. When the training set cannot spare |X_val^(1)| + |X_val^(2)|
  images, both shrink in proportion to at most `max_calib_fraction` of it (a one-class digits trial
  has ~120 training images); `fit` returns the sizes used.
- Evaluation transforms T_eval: "the same transformations as SimCLRv2 except color jittering,
  Gaussian blur and grayscaling", crop scale fixed at 0.75: a crop of 75 % of the area with a random
  aspect ratio in [3/4, 4/3] and position, resized back, and a horizontal flip with probability 0.5.
- The NT-Xent is SimCLR's symmetric form (both views serve as anchors); Eq. (1) writes one direction.
- Under DDP the negatives of every worker enter each loss (`gather_negatives`, the paper's setting):
  embeddings are all-gathered with a gradient-carrying gather, so after DDP's gradient averaging the
  update equals single-process training on the global batch. A global batch is cut to a multiple of
  the world size so every worker gathers the same number of rows. BatchNorm is synchronised
  (`sync_bn`) on CUDA only: torch's SyncBatchNorm has no CPU kernel, so gloo workers keep local statistics.
- `net="resnet50"` is torchvision's ResNet-50 (ImageNet stem, `weights=None`; nothing is downloaded).
  `weights_path` loads user weights from a local file (torchvision / SimCLR-style state dicts, or one
  this class saved). The `paper` profile runs CIFAR-10 (32x32), where the ImageNet stem would shrink an
  image to 1x1 by the third stage, so it uses the CIFAR ResNet-18 and SimCLR's CIFAR augmentations
  (jitter strength 0.5, i.e. 0.4 here, no blur); `net=resnet50_cifar` gives a ResNet-50 with SimCLR's
  CIFAR stem (3x3 stride-1 conv, no max-pool).
- Default precision is fp32 (the paper: "fp32 precision"); `amp=True` enables bf16 autocast on CUDA.

Measured (2 shared CPU cores, torch 2.14.1): a quick fit (40 epochs on ~450 digits + calibration) takes about
3 s of one thread; single-sample AUROC of -score_C, digits 0-4 against 5-9, 0.80 +- 0.01 (3 seeds), 0.52
untrained (1 seed); held-out clean digits are flagged at p <= .05 / .10 / .20 in 4.2 / 8.6 / 18.2 % of cases (4 seeds,
|X_val^(2)| = 400). Pre-training throughput with 2 DDP workers over 1 (benchmarks/cadet_ddp.py): 2.13x for the
CIFAR ResNet-18 with LARS, 0.68x for the quick profile's 8x8 CNN, whose steps are too short for gloo's
collectives to pay off. Scenario tables: orchestrator/cadet_experiments.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from methods.augment import color_jitter, normalize, random_grayscale, resized_crop_flip, to_float
from methods.base import TrainSet
from methods.networks import ENCODERS, build_encoder
from methods.training import lr_factor, nt_xent, view_partner

BACKBONES = (*ENCODERS, "resnet50", "resnet50_cifar")
OPTIMIZERS = ("lars", "sgd", "adam")
GAMMA_RULES = ("variance", "fixed", "in_only", "out_only")


@dataclass(frozen=True)
class CADetConfig:
    """CADet's hyper-parameters; defaults are the paper's (Sec. 3 and 5.1) unless said otherwise."""

    net: str = "resnet50"
    """encoder: "resnet50" (torchvision, ImageNet stem), "resnet50_cifar", "resnet18" (CIFAR), "cnn_small\""""
    weights_path: str = ""
    """a local file of encoder (or whole-model) weights to start from; "" = random init. Never downloaded"""
    proj_dim: int = 128
    """output of the projection head (SimCLRv2: 128)"""
    head_layers: int = 3
    """layers of the projection head (SimCLRv2: 3; hidden width = the encoder's feature size, BN + ReLU)"""
    tau: float = 0.1
    """NT-Xent temperature, Eq. (1)"""
    batch_size: int = 1024
    """global batch (images per step across all DDP workers; each image gives 2 views)"""
    epochs: int = 800
    """pre-training epochs; 0 = no pre-training (e.g. with weights_path)"""
    warmup_epochs: int = 40
    """linear learning-rate warm-up, then cosine decay to 0, per iteration"""
    optimizer: str = "lars"
    """"lars" (the paper), "sgd" (momentum) or "adam\""""
    lr: float = 1.2
    """initial learning rate (the paper: 1.2 with LARS at batch 1024)"""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    """LARS / SGD: on weight matrices only (biases and BatchNorm excluded, as SimCLR); Adam: all"""
    lars_eta: float = 0.001
    """LARS trust coefficient (SimCLR's 0.001)"""
    crop_scale_min: float = 0.08
    """training crops: area fraction uniform in [crop_scale_min, 1] (the paper: [0.08, 1])"""
    jitter: float = 0.8
    """colour-jitter strength: brightness/contrast/saturation in [1-s, 1+s], hue s/4 (SimCLRv2 ImageNet: 0.8)"""
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    """Gaussian blur probability (sigma in [0.1, 2], kernel 10 % of the side); 0 for small images"""
    gather_negatives: bool = True
    """DDP: all workers' embeddings in every loss (the paper); False = each worker's own batch only"""
    sync_bn: bool = True
    """DDP on CUDA: synchronised BatchNorm (the paper); ignored on CPU, where torch has no kernel for it"""
    n_val1: int = 300
    """|X_val^(1)|: the in-distribution images m_out compares with"""
    n_val2: int = 2000
    """|X_val^(2)|: the in-distribution images gamma and the p-values are calibrated on"""
    n_trs: int = 50
    """transformations per image (Algorithms 2-3)"""
    eval_crop_scale: float = 0.75
    """T_eval's fixed crop area fraction (Sec. 5.1)"""
    eval_flip: bool = True
    """T_eval's horizontal flip (SimCLRv2's transforms keep it)"""
    gamma_rule: str = "variance"
    """"variance" (Eq. 7), "fixed" (use `gamma`), "in_only" (m_in alone), "out_only" (m_out alone)"""
    gamma: float = 1.0
    """gamma when gamma_rule = "fixed\""""
    calib_holdout: bool = True
    """hold X_val^(1) and X_val^(2) out of pre-training (see the module docstring)"""
    max_calib_fraction: float = 0.5
    """at most this fraction of the training images go to calibration; n_val1, n_val2 shrink to fit"""
    features: str = "encoder"
    """similarity space: "encoder" (the paper) or "projection" (the head's output)"""
    amp: bool = False
    """bf16 autocast on CUDA (the paper trains in fp32)"""
    channels_last: bool = True
    """channels_last memory format; used only when the device is CUDA"""
    compile: bool = False

    def __post_init__(self):
        checks = {
            "net": self.net in BACKBONES, "proj_dim": self.proj_dim >= 1, "head_layers": self.head_layers >= 1,
            "tau": self.tau > 0, "batch_size": self.batch_size >= 2, "epochs": self.epochs >= 0,
            "warmup_epochs": self.warmup_epochs >= 0, "optimizer": self.optimizer in OPTIMIZERS,
            "lr": self.lr > 0, "momentum": 0 <= self.momentum < 1, "weight_decay": self.weight_decay >= 0,
            "lars_eta": self.lars_eta > 0, "crop_scale_min": 0 < self.crop_scale_min <= 1,
            "jitter": 0 <= self.jitter < 1, "jitter_p": 0 <= self.jitter_p <= 1, "gray_p": 0 <= self.gray_p <= 1,
            "blur_p": 0 <= self.blur_p <= 1, "n_val1": self.n_val1 >= 1, "n_val2": self.n_val2 >= 2,
            "n_trs": self.n_trs >= 2, "eval_crop_scale": 0 < self.eval_crop_scale <= 1,
            "gamma_rule": self.gamma_rule in GAMMA_RULES, "gamma": self.gamma >= 0,
            "max_calib_fraction": 0 < self.max_calib_fraction < 1,
            "features": self.features in ("encoder", "projection"),
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid CADetConfig values: {', '.join(bad)} (nets: {', '.join(BACKBONES)}; "
                             f"optimizers: {', '.join(OPTIMIZERS)}; gamma rules: {', '.join(GAMMA_RULES)})")


# --------------------------------------------------------------------------------------------------
# Networks: backbone + SimCLRv2 projection head; user weights from a local file.
# --------------------------------------------------------------------------------------------------


def build_backbone(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """-> (encoder mapping (N, C, H, W) to (N, F), F). ResNet-50s come from torchvision with weights=None."""
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


class CADetNet(nn.Module):
    """Encoder f and projection head h; forward gives h(f(x)) (N, proj_dim), the pre-training output."""

    def __init__(self, cfg: CADetConfig, in_channels: int):
        super().__init__()
        self.encoder, self.feat_dim = build_backbone(cfg.net, in_channels)
        self.head = simclr_v2_head(self.feat_dim, cfg.proj_dim, cfg.head_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


_PREFIXES = ("module.", "model.", "backbone.", "encoder_q.")


def load_weights(net: CADetNet, path: str) -> str:
    """Load a local state dict into `net`: a whole CADetNet (keys "encoder.*" and "head.*") or an encoder
    alone (torchvision / SimCLR-style; a classifier's "fc.*" is dropped). Refuses mismatched keys with a
    message naming them. -> "model" or "encoder", what was loaded."""
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


# --------------------------------------------------------------------------------------------------
# Augmentations (whole batches on the device, per-sample parameters from a seeded generator).
# --------------------------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SimCLR's blur: with probability p a Gaussian of sigma ~ U[0.1, 2] pixels, kernel 10 % of the image
    side (odd, >= 3), as one grouped separable convolution over the batch. x float (N, C, H, W)."""
    n, c, h, w = x.shape
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    if min(h, w) <= k // 2:  # too small to pad by reflection: nothing to blur
        return x
    dev = x.device
    sigma = torch.rand(n, generator=generator, device=dev) * 1.9 + 0.1
    r = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, k)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kern.view(n * c, 1, k, 1), groups=n * c)  # vertical pass
    y = F.conv2d(y, kern.view(n * c, 1, 1, k), groups=n * c).view(n, c, h, w)  # horizontal pass
    apply = torch.rand(n, generator=generator, device=dev) < p
    return torch.where(apply.view(n, 1, 1, 1), y, x)


def train_views(images: torch.Tensor, cfg: CADetConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """T_train (Sec. 3): uint8 (B, C, H, W) -> normalised float (2B, C, H, W), rows [view 0 of all; view 1]."""
    x = to_float(images).repeat(2, 1, 1, 1)
    x = resized_crop_flip(x, scale=(cfg.crop_scale_min, 1.0), flip_p=0.5, generator=generator)
    x = color_jitter(x, strength=cfg.jitter, p=cfg.jitter_p, generator=generator)
    x = random_grayscale(x, p=cfg.gray_p, generator=generator)
    if cfg.blur_p > 0:
        x = gaussian_blur(x, cfg.blur_p, generator)
    return normalize(x)


def eval_views(x: torch.Tensor, n_trs: int, scale: float, flip: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """T_eval (Sec. 5.1): float [0, 1] (B, C, H, W) -> normalised (n_trs * B, C, H, W), row t * B + i =
    view t of image i: a crop of `scale` of the area (random aspect ratio and position), resized back,
    flipped with probability 0.5."""
    v = x.repeat(n_trs, 1, 1, 1)
    v = resized_crop_flip(v, scale=(scale, scale), flip_p=0.5 if flip else 0.0, generator=generator)
    return normalize(v)


def as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float [0, 1] (adversarial images stay unquantised)."""
    return to_float(images) if images.dtype == torch.uint8 else images.float().clamp(0, 1)


# --------------------------------------------------------------------------------------------------
# Pre-training pieces: LARS and a gradient-carrying all-gather.
# --------------------------------------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as SimCLR implements it: for a weight matrix w with gradient g,
        g' = g + wd * w,   trust = eta * ||w|| / ||g'||,   v = momentum * v + lr * trust * g',   w = w - v.
    Biases and BatchNorm parameters (1-D) get neither weight decay nor the trust ratio (plain SGD momentum)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, eta: float = 0.001):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "v" not in state:
                    state["v"] = torch.zeros_like(p)
                v = state["v"].mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(v)
        return loss


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each block and returns this rank's block
    (all_reduce, which gloo supports, where torch.distributed.nn's gather needs all_to_all)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]


def gather_rows(z: torch.Tensor) -> torch.Tensor:
    """(M, D) on each rank -> (world * M, D), block r = rank r's rows, differentiable."""
    return torch.cat(_GatherWithGrad.apply(z))


def contrastive_loss(z: torch.Tensor, tau: float, gather: bool = False) -> torch.Tensor:
    """NT-Xent, Eq. (1) (both views as anchors, SimCLR): z (2b, D) projections, rows [view 0; view 1]. With
    gather=True under DDP the rows of every rank join: positives stay within a rank's pairs, every other
    row of the global batch is a negative. Same value on every rank."""
    z = F.normalize(z.float(), dim=1)
    blocks = 1
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        blocks = dist.get_world_size()
        z = gather_rows(z)
    b = z.shape[0] // (2 * blocks)
    return nt_xent(z, view_partner(blocks, b, z.device), tau)


# --------------------------------------------------------------------------------------------------
# Two-sample tests, Sec. 4: Eq. (4), permutation p-values, MMD-CC (Algorithm 1). Batched over any
# leading dimensions (e.g. the samplings of an experiment) and over all permutations at once.
# --------------------------------------------------------------------------------------------------


def cosine_kernel(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """k(x, y) = <x, y> / (||x|| ||y||), the paper's similarity: (..., n, D), (..., m, D) -> (..., n, m)."""
    a = F.normalize(a.float(), dim=-1)
    b = a if b is None else F.normalize(b.float(), dim=-1)
    return a @ b.transpose(-1, -2)


def mmd_u2_split(kernel: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Eq. (4) for splits of a pooled sample: kernel (..., 2n, 2n) over the pool, order (..., P, 2n) a
    permutation of the pool per split (X = its first n rows, Y = its last n, X_i paired with Y_i) -> (..., P).

        MMD_u^2 = 1/(n(n-1)) sum_{i != j} [k(X_i,X_j) + k(Y_i,Y_j) - k(X_i,Y_j) - k(Y_i,X_j)]
                = (s^T K s - tr K + 2 sum_i k(X_i, Y_i)) / (n(n-1)),   s = +1 on X, -1 on Y.
    """
    two_n = kernel.shape[-1]
    n = two_n // 2
    sign = torch.ones(order.shape, dtype=kernel.dtype, device=kernel.device)
    sign[..., n:] = -1
    s = torch.empty_like(sign).scatter_(-1, order, sign)  # (..., P, 2n): +1 where a pool row went to X
    quad = ((s @ kernel) * s).sum(-1)  # s^T K s per split, (..., P)
    trace = kernel.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # (..., 1)
    flat = kernel.flatten(-2)  # (..., 4n^2)
    pair_index = order[..., :n] * two_n + order[..., n:]  # (..., P, n): K[X_i, Y_i]
    pairs = torch.gather(flat.unsqueeze(-2).expand(*order.shape[:-1], flat.shape[-1]), -1, pair_index).sum(-1)
    return (quad - trace + 2 * pairs) / (n * (n - 1))


def mmd_u2(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Eq. (4) from the three blocks (..., n, n) of X_i, Y_i in their given order (X_i paired with Y_i)."""
    n = kxx.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=kxx.device)
    h = kxx + kyy - kxy - kxy.transpose(-1, -2)
    return (h * off).sum((-1, -2)) / (n * (n - 1))


def random_orders(batch: tuple[int, ...], n_perm: int, size: int, generator: torch.Generator | None = None,
                  device=None) -> torch.Tensor:
    """(*batch, n_perm, size) independent uniform random permutations of range(size)."""
    keys = torch.rand(*batch, n_perm, size, generator=generator, device=device)
    return keys.argsort(-1)


def permutation_p_value(est: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """(1 + #{p_i >= est}) / (n_perm + 1) (Sec. 4): est (...), null (..., n_perm) -> (...)."""
    return (1 + (null >= est.unsqueeze(-1)).sum(-1)).to(torch.float64) / (null.shape[-1] + 1)


def mmd_test(fp: torch.Tensor, fq: torch.Tensor, n_perm: int = 500, generator: torch.Generator | None = None):
    """MMD two-sample test of S_P against S_Q (features (..., n, D) each, n >= 2) with the cosine kernel.
    The null: n_perm random splits of S_P u S_Q. -> (p-value (...), est (...), null (..., n_perm))."""
    n = fp.shape[-2]
    pool = torch.cat([fp, fq], dim=-2)  # (..., 2n, D): rows [S_P; S_Q]
    k = cosine_kernel(pool)
    identity = torch.arange(2 * n, device=k.device).expand(*k.shape[:-2], 1, 2 * n)
    est = mmd_u2_split(k, identity).squeeze(-1)
    null = mmd_u2_split(k, random_orders(tuple(k.shape[:-2]), n_perm, 2 * n, generator, k.device))
    return permutation_p_value(est, null), est, null


def mmd_cc_null(fp1: torch.Tensor, fp2: torch.Tensor, n_perm: int = 500,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1's calibration: MMD_u^2 of n_perm random splits of the two CLEAN samples S_P^(1) u S_P^(2)
    (features (..., n, D) each) -> (..., n_perm). S_Q never enters it."""
    n = fp1.shape[-2]
    k = cosine_kernel(torch.cat([fp1, fp2], dim=-2))
    return mmd_u2_split(k, random_orders(tuple(k.shape[:-2]), n_perm, 2 * n, generator, k.device))


def mmd_cc_test(fp1: torch.Tensor, fp2: torch.Tensor, fq: torch.Tensor, n_perm: int = 500,
                generator: torch.Generator | None = None):
    """MMD-CC (Algorithm 1): est = MMD_u^2(S_P^(1), S_Q), null from splits of S_P^(1) u S_P^(2).
    -> (p-value (...), est (...), null (..., n_perm))."""
    est = mmd_u2(cosine_kernel(fp1), cosine_kernel(fq), cosine_kernel(fp1, fq))
    null = mmd_cc_null(fp1, fp2, n_perm, generator)
    return permutation_p_value(est, null), est, null


# --------------------------------------------------------------------------------------------------
# The CADet statistic, Eq. (5)-(8).
# --------------------------------------------------------------------------------------------------


def in_out_similarities(u: torch.Tensor, ref_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (5): u (T, B, D) unit features of T views of B images, ref_mean (D,) the mean unit feature of
    X_val^(1)'s views -> (m_in (B,), m_out (B,)).
        m_in  = sum_{i != j} <u_i, u_j> / (T (T - 1))   = (||sum_i u_i||^2 - sum_i ||u_i||^2) / (T (T - 1))
        m_out = mean_{i, k, j} <u_i, v_j^(k)>           = <mean_i u_i, ref_mean>
    Choice: T (T - 1) pairs, not the printed T (T + 1) (see the module docstring)."""
    t = u.shape[0]
    total = u.sum(0)  # (B, D)
    m_in = ((total * total).sum(-1) - (u * u).sum((0, 2))) / (t * (t - 1))
    m_out = u.mean(0) @ ref_mean
    return m_in, m_out


def equalising_gamma(m_in: torch.Tensor, m_out: torch.Tensor) -> float:
    """Eq. (7): gamma = sqrt(Var m_in / Var m_out) on X_val^(2), so that gamma * m_out varies as much as m_in."""
    var_out = float(m_out.double().var())
    if var_out <= 0:
        return 0.0
    return math.sqrt(float(m_in.double().var()) / var_out)


def calibrated_p_values(scores: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """Eq. (8) / Algorithm 3: (#{calibration scores < score} + 1) / (#calibration + 1), per score."""
    ranks = torch.searchsorted(calibration.double().sort().values, scores.double(), right=False)
    return (ranks + 1).double() / (calibration.numel() + 1)


def calibration_sizes(n_train: int, cfg: CADetConfig) -> tuple[int, int]:
    """(|X_val^(1)|, |X_val^(2)|): the configured sizes, shrunk in proportion to at most max_calib_fraction
    of the training set (all of it minus one image each when not held out)."""
    budget = int(cfg.max_calib_fraction * n_train) if cfg.calib_holdout else n_train
    n1, n2 = cfg.n_val1, cfg.n_val2
    if n1 + n2 > budget:
        n1 = max(1, int(cfg.n_val1 * budget / (cfg.n_val1 + cfg.n_val2)))
        n2 = budget - n1
    if n2 < 2:
        raise ValueError(f"CADet needs at least 3 calibration images but {n_train} training images allow {budget}")
    return n1, n2


# --------------------------------------------------------------------------------------------------
# The method.
# --------------------------------------------------------------------------------------------------


class CADet:
    """CADet as a method: fit = contrastive pre-training + calibration (Algorithm 2) on the training images,
    score = -score_C (Eq. 6): higher = more anomalous. Unsupervised: TrainSet.kind is ignored."""

    name = "cadet"
    Config = CADetConfig
    uses_labels = False
    # quick: sized for 8x8 digits on one CPU thread (about 3 s per fit on ~600 digits). Measured on digits
    # 0-4 against 5-9 (single-sample AUROC of -score_C, 3 seeds, 1 CPU thread): crops from 25 % of the area
    # 0.61-0.66, from 50 % 0.72-0.74, from 70 % 0.80 +- 0.01 (40 epochs), 0.82 (60): on 8 pixels a small crop
    # is a different image. Adam 3e-3: LARS at lr 2.4 (6 warm-up epochs, 60 epochs) reached 0.79 +- 0.04 at
    # 1.5x the time; the paper's lr 1.2 with 40 warm-up epochs is tuned for 800 epochs of batch 1024. Grey
    # images get brightness/contrast jitter only; no blur (a 3-pixel kernel is most of an 8x8 digit).
    profiles = {
        "quick": {"net": "cnn_small", "batch_size": 128, "epochs": 40, "warmup_epochs": 4, "optimizer": "adam",
                  "lr": 3e-3, "weight_decay": 0.0, "crop_scale_min": 0.7, "jitter": 0.4, "blur_p": 0.0,
                  "head_layers": 2, "n_val1": 30, "n_val2": 120, "n_trs": 10},
        # CIFAR-10 (32x32): SimCLR's CIFAR setting (CIFAR ResNet-18, jitter strength 0.5, no blur); the
        # optimiser, schedule, tau, calibration sizes and transforms stay the paper's.
        "paper": {"net": "resnet18", "jitter": 0.4, "blur_p": 0.0},
        # small: the paper profile's CIFAR setting with the quarter-width ResNet-18 and a CPU budget (quick's Adam).
        "small": {"net": "resnet18_narrow", "jitter": 0.4, "blur_p": 0.0, "batch_size": 128, "epochs": 5,
                  "warmup_epochs": 1, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "n_trs": 10},
    }

    def __init__(self, config: CADetConfig, device: torch.device, seed: int):
        self.config = config
        self.device = torch.device(device)
        self.seed = int(seed)
        cuda = self.device.type == "cuda"
        self.amp = config.amp and cuda
        self.channels_last = config.channels_last and cuda
        self.net: CADetNet | None = None
        self.encoder: nn.Module | None = None  # the similarity's feature map (the net's encoder, or a given one)
        self.ref_mean: torch.Tensor | None = None  # (D,) mean unit feature of X_val^(1)'s views
        self.gamma: float | None = None
        self.calibration: dict[str, torch.Tensor] = {}  # m_in, m_out, score of X_val^(2)

    # ---- plumbing -------------------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def autocast(self):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp)

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def build_net(self, in_channels: int) -> CADetNet:
        """Seeded initialisation on the CPU (same weights on any device), then the user's weights if any."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = CADetNet(self.config, in_channels)
        if self.config.weights_path:
            load_weights(net, self.config.weights_path)
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def generator(self, *parts) -> torch.Generator:
        """A generator seeded from (seed, parts): the same draws on every call and every rank."""
        seed = int(np.random.SeedSequence([self.seed % 2**32, *parts]).generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(seed)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "lars":
            return LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
        if cfg.optimizer == "sgd":  # weight decay on weight matrices only, as LARS
            params = list(params)
            groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                      {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- pre-training, Sec. 3 -------------------------------------------------------------------------

    def pretrain(self, images: torch.Tensor, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """SimCLR pre-training of self.net on uint8 images (N, C, H, W) already on the device. Under DDP
        (torch.distributed initialised) every rank draws the same batch order and takes its slice."""
        cfg, dev = self.config, self.device
        n = images.shape[0]
        rank, world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        if self.distributed and cfg.sync_bn and dev.type == "cuda":
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.encoder = self.net.encoder
        model = self.net
        if self.distributed:
            model = DistributedDataParallel(self.net, device_ids=[dev] if dev.type == "cuda" else None)
        forward = torch.compile(model) if cfg.compile else model
        opt = self.make_optimizer(self.net.parameters())
        steps = max(1, round(n / cfg.batch_size))  # near-equal global batches covering every image
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, cfg.warmup_epochs * steps, cfg.epochs * steps))
        order_gen = self.generator(0)  # the same on every rank
        aug_gen = self.generator(1, rank)  # own views per rank

        t0, seen, loss = time.perf_counter(), 0, float("nan")
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            losses = []
            for batch in torch.randperm(n, generator=order_gen, device=dev).tensor_split(steps):
                # Choice: cut the global batch to a multiple of the world size (equal shards to gather).
                batch = batch[: len(batch) // world * world]
                if len(batch) < 2 * world:
                    continue
                x = images[batch.tensor_split(world)[rank]]
                with self.autocast():
                    z = forward(self.to_net(train_views(x, cfg, aug_gen)))
                step_loss = contrastive_loss(z, cfg.tau, gather=cfg.gather_negatives)
                opt.zero_grad(set_to_none=True)
                step_loss.backward()
                opt.step()
                sched.step()
                losses.append(step_loss.detach())
                seen += len(batch)
            mean = torch.stack(losses).mean() if losses else torch.tensor(float("nan"), device=dev)
            if self.distributed:  # identical with gathered negatives; averaged otherwise
                dist.all_reduce(mean)
                mean /= world
            loss = float(mean)  # one host sync per epoch
            if on_epoch is not None:
                on_epoch(epoch, {"loss": loss, "lr": sched.get_last_lr()[0]})
        seconds = time.perf_counter() - t0
        if self.distributed:  # BatchNorm running stats: rank 0's everywhere, so every rank scores alike
            for buf in self.net.buffers():
                dist.broadcast(buf, src=0)
        return {"epochs": cfg.epochs, "steps": cfg.epochs * steps, "final_loss": loss, "world_size": world,
                "pretrain_seconds": seconds, "pretrain_images_per_second": seen / seconds if seconds > 0 else None}

    # ---- similarity features and Eq. (5)-(8) ------------------------------------------------------------

    def use_encoder(self, encoder: nn.Module) -> None:
        """Measure similarity with another network's features (e.g. a supervised classifier's penultimate
        layer, the paper's "Supervised" rows); calibrate() next."""
        self.net, self.encoder = None, encoder.to(self.device)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float views (N, C, H, W) -> unit features (N, D), eval mode."""
        with self.autocast():
            if self.net is not None and self.config.features == "projection":
                f = self.net(self.to_net(x))
            else:
                f = self.encoder(self.to_net(x))
        return F.normalize(f.float(), dim=1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """uint8 or float [0, 1] images (N, C, H, W), untransformed -> unit features (N, D) (the MMD kernel's)."""
        self.encoder.eval()
        if self.net is not None:
            self.net.eval()
        parts = [self.embed(normalize(as_unit_float(x.to(self.device)))) for x in images.split(chunk)]
        return torch.cat(parts)

    @torch.no_grad()
    def view_features(self, images: torch.Tensor, generator: torch.Generator, max_rows: int = 4096) -> torch.Tensor:
        """n_trs T_eval views of each image -> unit features (n_trs, N, D)."""
        cfg = self.config
        self.encoder.eval()
        if self.net is not None:
            self.net.eval()
        chunk = max(1, max_rows // cfg.n_trs)
        out = []
        for x in images.split(chunk):
            v = eval_views(as_unit_float(x.to(self.device)), cfg.n_trs, cfg.eval_crop_scale, cfg.eval_flip, generator)
            out.append(self.embed(v).view(cfg.n_trs, x.shape[0], -1))
        return torch.cat(out, dim=1)

    def combine(self, m_in: torch.Tensor, m_out: torch.Tensor) -> torch.Tensor:
        """Eq. (6) under the configured gamma rule: score_C = w_in * m_in + gamma * m_out."""
        if self.config.gamma_rule == "out_only":
            return m_out
        return m_in + self.gamma * m_out

    @torch.no_grad()
    def calibrate(self, val1: torch.Tensor, val2: torch.Tensor) -> dict:
        """Algorithm 2: X_val^(1) -> the reference mean feature; X_val^(2) -> m_in, m_out, gamma (Eq. 7) and
        the calibration scores that Eq. (8) ranks against."""
        cfg = self.config
        self.ref_mean = self.view_features(val1, self.generator(2)).mean(dim=(0, 1))  # (D,)
        m_in, m_out = in_out_similarities(self.view_features(val2, self.generator(3)), self.ref_mean)
        rule = cfg.gamma_rule
        self.gamma = {"variance": lambda: equalising_gamma(m_in, m_out), "fixed": lambda: cfg.gamma,
                      "in_only": lambda: 0.0, "out_only": lambda: 1.0}[rule]()
        self.calibration = {"m_in": m_in, "m_out": m_out, "score": self.combine(m_in, m_out)}
        return {"gamma": self.gamma, "n_val1": len(val1), "n_val2": len(val2),
                "val2_m_in_mean": float(m_in.mean()), "val2_m_out_mean": float(m_out.mean()),
                "val2_m_in_var": float(m_in.var()), "val2_m_out_var": float(m_out.var())}

    @torch.no_grad()
    def statistics(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Algorithm 3 for each image (uint8, or float [0, 1] for unquantised adversarial images) -> m_in,
        m_out, score (score_C, Eq. 6) and p_value (Eq. 8), tensors (N,). Same images, same result."""
        if self.ref_mean is None:
            raise RuntimeError("CADet: fit() (or calibrate()) before scoring")
        m_in, m_out = in_out_similarities(self.view_features(images, self.generator(4)), self.ref_mean)
        score = self.combine(m_in, m_out)
        return {"m_in": m_in, "m_out": m_out, "score": score,
                "p_value": calibrated_p_values(score, self.calibration["score"])}

    # ---- the Method interface ---------------------------------------------------------------------------

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Pre-train on the training images (labels ignored) and calibrate (Algorithm 2). X_val^(1) and
        X_val^(2) are disjoint random subsets, held out of pre-training when calib_holdout."""
        cfg = self.config
        t0 = time.perf_counter()
        images = train.images.to(self.device)
        n = images.shape[0]
        n1, n2 = calibration_sizes(n, cfg)
        order = torch.randperm(n, generator=self.generator(5), device=self.device)
        val1, val2 = images[order[:n1]], images[order[n1:n1 + n2]]
        pretrain_images = images[order[n1 + n2:]] if cfg.calib_holdout else images
        self.net = self.build_net(images.shape[1])
        self.encoder = self.net.encoder
        summary = self.pretrain(pretrain_images, on_epoch)
        summary.update(self.calibrate(val1, val2))
        summary.update(n_pretrain=int(pretrain_images.shape[0]), fit_seconds=time.perf_counter() - t0)
        return summary

    def score(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N,) float: -score_C (Eq. 6), higher = more anomalous."""
        return (-self.statistics(images)["score"]).double().cpu().numpy()

    def p_values(self, images: torch.Tensor) -> np.ndarray:
        """Eq. (8): small = anomalous; flagging p <= alpha gives a false positive rate of about alpha."""
        return self.statistics(images)["p_value"].cpu().numpy()
