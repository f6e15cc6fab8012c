"""CADet: Fully Self-Supervised Anomaly Detection With Contrastive Learning (Guille-Escuret, Rodriguez,
Vazquez, Mitliagkas, Monteiro; ../shared/papers/004_fea3bd5cd4f38a35.txt).

Three parts, used by the `CADet` method below and by its experiments (orchestrator/experiments/):

1. Contrastive pre-training (Sec. 3): SimCLR's NT-Xent, Eq. (1), at tau = 0.1 over two augmented
   views, an encoder f and a 3-layer projection head h (SimCLRv2), LARS (lr 1.2, momentum 0.9,
   weight decay 1e-4), linear warm-up for 40 epochs then cosine to epoch 800, batch 1024 across all
   workers with the embeddings of every worker in the loss ("aggregating the embeddings computed by
   each GPU"). Training is methods/trainer.py's loop (DDP, per-step schedule, seeding); the similarity
   used everywhere afterwards is the cosine of ENCODER features (Sec. 3: "we use the features produced
   by the encoder without the contrastive head").
2. Two-sample tests (Sec. 4): MMD with the cosine kernel, Eq. (4), and MMD-CC (Algorithm 1), in
   methods/mmd.py.
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
- Under DDP the negatives of every worker enter each loss (`gather_negatives`, the paper's setting;
  methods/losses.py's gathered NT-Xent): after DDP's gradient averaging the update equals single-process
  training on the global batch (the trainer cuts a global batch to a multiple of the world size, so every
  worker gathers the same number of rows). BatchNorm is synchronised (`sync_bn`) on CUDA only: torch's
  SyncBatchNorm has no CPU kernel, so gloo workers keep local statistics.
- `net="resnet50"` is torchvision's ResNet-50 (ImageNet stem, `weights=None`; nothing is downloaded).
  `weights_path` loads user weights from a local file (torchvision / SimCLR-style state dicts, or one
  this class saved). The `paper` profile runs CIFAR-10 (32x32), where the ImageNet stem would shrink an
  image to 1x1 by the third stage, so it uses the CIFAR ResNet-18 and SimCLR's CIFAR augmentations
  (jitter strength 0.5, i.e. 0.4 here, no blur); `net=resnet50_cifar` gives a ResNet-50 with SimCLR's
  CIFAR stem (3x3 stride-1 conv, no max-pool).
- Precision: bf16 autocast on CUDA by default, as every other method here (the paper: "fp32 precision";
  `amp=False` gives it); on the CPU CADet computes in fp32 either way (no `cpu_bf16`).

Measured (2 shared CPU cores, torch 2.14.1): a quick fit (40 epochs on ~450 digits + calibration) takes about
3 s of one thread; single-sample AUROC of -score_C, digits 0-4 against 5-9, 0.80 +- 0.01 (3 seeds), 0.52
untrained (1 seed); held-out clean digits are flagged at p <= .05 / .10 / .20 in 4.2 / 8.6 / 18.2 % of cases (4 seeds,
|X_val^(2)| = 400). Pre-training throughput with 2 DDP workers over 1 (benchmarks/cadet_ddp.py): 2.13x for the
CIFAR ResNet-18 with LARS, 0.68x for the quick profile's 8x8 CNN, whose steps are too short for gloo's
collectives to pay off (measured before pre-training moved to methods/trainer.py, with its own seeding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.augment import as_unit_float, eval_views, normalize, simclr_views
from methods.base import NeuralMethod, TrainSet
from methods.losses import contrastive_loss
from methods.networks import BACKBONES, build_backbone, load_weights, simclr_v2_head
from methods.optim import OPTIMIZERS, make_optimizer
from methods.trainer import StepLoss

GAMMA_RULES = ("variance", "fixed", "in_only", "out_only")


@dataclass(frozen=True)
class CADetConfig:
    """CADet's hyper-parameters; defaults are the paper's (Sec. 3 and 5.1) unless said otherwise."""

    # Pre-training, Sec. 3
    net: str = "resnet50"
    """encoder: "resnet50" (torchvision, ImageNet stem), "resnet50_cifar", "resnet18" (CIFAR), "cnn_small\""""
    weights_path: str = ""
    """a local file of encoder (or whole-model) weights to start from; "" = random init. Never downloaded"""
    proj_dim: int = 128
    head_layers: int = 3
    """the projection head, SimCLRv2's: head_layers layers (3; hidden width = the encoder's feature size,
    BN + ReLU) with proj_dim outputs (128)"""
    tau: float = 0.1
    """NT-Xent temperature, Eq. (1)"""
    batch_size: int = 1024
    epochs: int = 800
    warmup_epochs: int = 40
    """the global batch (images per step across all DDP workers; each image gives 2 views); pre-training
    epochs (0 = none, e.g. with weights_path), the first warmup_epochs of them with a linear learning-rate
    warm-up, then a cosine decay to 0, per iteration"""
    optimizer: str = "lars"
    lr: float = 1.2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lars_eta: float = 0.001
    """"lars" (the paper: lr 1.2 at batch 1024; SimCLR's trust coefficient eta 0.001), "sgd" (momentum)
    or "adam". Weight decay: with LARS / SGD on weight matrices only (biases and BatchNorm excluded, as
    SimCLR), with Adam on all"""
    crop_scale_min: float = 0.08
    jitter: float = 0.8
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    """T_train, SimCLRv2's views: crops of an area fraction uniform in [crop_scale_min, 1] (the paper:
    [0.08, 1]); colour jitter of strength s (brightness/contrast/saturation in [1-s, 1+s], hue s/4;
    SimCLRv2 ImageNet: 0.8) with probability jitter_p; grayscale with probability gray_p; Gaussian blur
    (sigma in [0.1, 2], kernel 10 % of the side) with probability blur_p, 0 for small images"""
    gather_negatives: bool = True
    """DDP: all workers' embeddings in every loss (the paper); False = each worker's own batch only"""
    sync_bn: bool = True
    """DDP on CUDA: synchronised BatchNorm (the paper); ignored on CPU, where torch has no kernel for it"""
    # The CADet statistic, Sec. 5
    n_val1: int = 300
    n_val2: int = 2000
    """|X_val^(1)|, the in-distribution images m_out compares with, and |X_val^(2)|, those that gamma and
    the p-values are calibrated on"""
    n_trs: int = 50
    eval_crop_scale: float = 0.75
    eval_flip: bool = True
    """T_eval (Sec. 5.1, Algorithms 2-3): n_trs transformations per image, each a crop of a fixed area
    fraction and a horizontal flip (SimCLRv2's transforms keep it)"""
    gamma_rule: str = "variance"
    gamma: float = 1.0
    """"variance" (Eq. 7), "fixed" (use `gamma`), "in_only" (m_in alone), "out_only" (m_out alone)"""
    calib_holdout: bool = True
    max_calib_fraction: float = 0.5
    """hold X_val^(1) and X_val^(2) out of pre-training (see the module docstring); at most
    max_calib_fraction of the training images go to calibration, n_val1 and n_val2 shrink to fit"""
    features: str = "encoder"
    """similarity space: "encoder" (the paper) or "projection" (the head's output)"""
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    """bf16 autocast and the channels_last memory format, both on CUDA only; torch.compile the network on the
    CPU as well (on CUDA it is compiled anyway, methods/trainer.py HotPath)"""
    # choice: amp on (issue 24): the paper pre-trains in fp32; bf16 halves the activations of its 2,048-row
    # step (~11.7 GiB in fp32 at the paper profile, by estimate) and runs on the tensor cores. CPU numbers and
    # the quick / small profiles' CPU results are unchanged; CADet trial keys change (the Config is hashed).

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


class CADetNet(nn.Module):
    """Encoder f and SimCLRv2's projection head h (methods/networks.py); forward gives h(f(x)) (N, proj_dim),
    the pre-training output."""

    def __init__(self, cfg: CADetConfig, in_channels: int):
        super().__init__()
        self.encoder, self.feat_dim = build_backbone(cfg.net, in_channels)
        self.head = simclr_v2_head(self.feat_dim, cfg.proj_dim, cfg.head_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


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


class CADet(NeuralMethod):
    """CADet as a method: fit = contrastive pre-training + calibration (Algorithm 2) on the training images,
    score = -score_C (Eq. 6): higher = more anomalous. Unsupervised: TrainSet.kind is ignored."""

    name = "cadet"
    Config = CADetConfig
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
        super().__init__(config, device, seed)  # no cpu_bf16: amp and channels_last on CUDA only
        self.encoder: nn.Module | None = None  # the similarity's feature map (the net's encoder, or a given one)
        self.ref_mean: torch.Tensor | None = None  # (D,) mean unit feature of X_val^(1)'s views
        self.gamma: float | None = None
        self.calibration: dict[str, torch.Tensor] = {}  # m_in, m_out, score of X_val^(2)

    def generator(self, *parts) -> torch.Generator:
        """A generator seeded from (seed, parts): the same draws on every call and every rank."""
        seed = int(np.random.SeedSequence([self.seed % 2**32, *parts]).generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(seed)

    # ---- pre-training, Sec. 3 -------------------------------------------------------------------------

    def make_net(self, in_channels: int) -> CADetNet:
        """The seeded initialisation, then the user's weights if any."""
        net = CADetNet(self.config, in_channels)
        if self.config.weights_path:
            load_weights(net, self.config.weights_path)
        return net

    def optimizer(self, params: list) -> torch.optim.Optimizer:
        cfg = self.config
        return make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.lars_eta)

    def fit_options(self) -> dict:
        return {"compile": self.config.compile, "sync_bn": self.config.sync_bn}

    def step_loss(self, images: torch.Tensor, kind: torch.Tensor | None) -> StepLoss:
        cfg, precision = self.config, self.precision

        def step(forward: Callable, rows: torch.Tensor, epoch: int, g: torch.Generator) -> dict:
            # T_train: SimCLRv2's views, rows [view 0 of all; view 1 of all]
            views = simclr_views(images[rows], 2, cfg.crop_scale_min, cfg.jitter, cfg.jitter_p, cfg.gray_p,
                                 cfg.blur_p, g)
            with precision.autocast():
                z = forward(precision.to_net(views))
            return {"loss": contrastive_loss(z, cfg.tau, gather=cfg.gather_negatives)}  # Eq. (1)

        return step

    def pretrain(self, images: torch.Tensor, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """SimCLR pre-training of self.net (built already) on uint8 images (N, C, H, W) on the device."""
        result = self.train_net(images, None, on_epoch)
        return {**result.summary(), "pretrain_seconds": result.seconds,
                "pretrain_images_per_second": result.images_per_second}

    # ---- similarity features and Eq. (5)-(8) ------------------------------------------------------------

    def use_encoder(self, encoder: nn.Module) -> None:
        """Measure similarity with another network's features (e.g. a supervised classifier's penultimate
        layer, the paper's "Supervised" rows); calibrate() next."""
        self.net, self.encoder = None, encoder.to(self.device)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float views (N, C, H, W) -> unit features (N, D), eval mode."""
        self.encoder.eval()
        if self.net is not None:
            self.net.eval()
        with self.precision.autocast():
            if self.net is not None and self.config.features == "projection":
                f = self.net(self.precision.to_net(x))
            else:
                f = self.encoder(self.precision.to_net(x))
        return F.normalize(f.float(), dim=1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """uint8 or float [0, 1] images (N, C, H, W), untransformed -> unit features (N, D) (the MMD kernel's)."""
        parts = [self.embed(normalize(as_unit_float(x.to(self.device)))) for x in images.split(chunk)]
        return torch.cat(parts)

    @torch.no_grad()
    def view_features(self, images: torch.Tensor, generator: torch.Generator, max_rows: int = 4096) -> torch.Tensor:
        """n_trs T_eval views of each image -> unit features (n_trs, N, D)."""
        cfg = self.config
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
        self.gamma = {"variance": lambda: equalising_gamma(m_in, m_out), "fixed": lambda: cfg.gamma,
                      "in_only": lambda: 0.0, "out_only": lambda: 1.0}[cfg.gamma_rule]()
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
