"""HSCL: Hierarchical Semi-Supervised Contrastive Learning for Contamination-Resistant Anomaly Detection
(Wang, Zhan, Wang, Song, Nahrstedt, ECCV 2022; /work/shared/papers/001_cf8c822604185d3a.txt).

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

Measured (quick profile, torch 2.14.1, 1 CPU thread on the 2-core CI machine): one fit + score on
sklearn digits (~125 normal + 5 pollution + 7 labeled anomaly 8x8 images; 540 test images) takes
1.6-1.8 s. AUROC over 10 (normal, anomaly) digit pairs x 4 seeds: 0.90 +- 0.07 (n = 40, range
0.67-0.99); the same model untrained (epochs=0): 0.50 (n = 20).

Same seed, same device -> same result: on CPU bit for bit (tests/test_hscl.py); on CUDA only as far
as cuDNN's kernels are deterministic (we do not force torch.use_deterministic_algorithms).
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

from methods.augment import normalize, rotations, simclr_augment, to_float
from methods.base import TrainSet
from methods.networks import ENCODERS, build_encoder, projection_head
from methods.training import SMALL_CIFAR, ContrastiveConfig


@dataclass(frozen=True)
class HSCLConfig(ContrastiveConfig):
    """HSCL hyper-parameters; defaults are the paper's (Sec. 4.2) unless said otherwise. The shared
    contrastive fields (net, proj_dim = D, tau of Eq. 1 and 6, batch, schedule, SimCLR augmentations,
    rotations as CSI's shifting transformation, amp / channels_last / compile) come from
    methods/training.py; HSCL trains 250 epochs and adds its own weights and ablation switches."""

    epochs: int = 250
    lambda1: float = 1.0
    """weight of L_S-P in Eq. (8)"""
    lambda2: float = 1.0
    """weight of L_N-A in Eq. (8)"""
    n_prototypes: int = 1
    """K, the number of prototypes (Fig. 4 right: K = 1 is best)"""
    w_delta: float = 0.4
    """Eq. (7) threshold: only samples with weight w > w_delta are drawn for N-A (Fig. 4 left)"""
    use_ss: bool = True
    """Table 5 ablation: the sample-to-sample loss"""
    use_sp: bool = True
    """Table 5 ablation: prototypes and the S-P loss; without them the score is k-NN (Sec. 4.4)"""
    use_na: bool = True
    """Table 5 ablation: the normal-to-abnormal loss"""
    sp_pos: bool = True
    """Table 5 ablation: the first (normal) term of Eq. (4)"""
    sp_neg: bool = True
    """Table 5 ablation: the second (anomaly) term of Eq. (4)"""

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
# The losses, as pure functions of unit-norm embeddings (tests check them on hand-computed inputs).
# --------------------------------------------------------------------------------------------------


def info_nce_pairs(z: torch.Tensor, partner: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (1)-(2) with one positive per anchor: z (M, D) unit rows, partner (M,) the row index of
    each row's positive (its other view); every other row is a negative. Mean over the M anchors.

        L = -1/M sum_i log( exp(z_i.z_p(i) / tau) / sum_{j != i} exp(z_i.z_j / tau) )
    """
    logits = z @ z.T / tau  # (M, M) cosine similarities / tau
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # a sample is not its own negative
    return F.cross_entropy(logits, partner)


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


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up over warmup_steps (Goyal et al.), then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


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


class HSCL:
    """HSCL as a method: fit(TrainSet) trains encoder + prototypes, score(images) = -Eq. (9)."""

    name = "hscl"
    Config = HSCLConfig
    uses_labels = True  # X_n and X_a enter S-P and N-A
    # quick: sized so one fit + score on ~140 8x8 digits takes 1.6-1.8 s on one CPU thread (80 Adam
    # steps of ~70 images x 2 views x 4 rotations). Crops keep >= 25% of an 8x8 digit (at 0.08 a
    # crop is a 2x2-pixel blob); lr 3e-3 because so few steps at 1e-3 learned less (60 steps, 5 digit
    # pairs: AUROC 0.75 at 1e-3, 0.82 at 3e-3).
    profiles = {
        "quick": {"net": "cnn_small", "epochs": 40, "batch_size": 64, "warmup_epochs": 4,
                  "crop_scale_min": 0.25, "lr": 3e-3},
        "small": SMALL_CIFAR,  # methods/training.py: CIFAR-10, quarter-width ResNet-18, 3 epochs, bf16 on CPU
        "paper": {},
    }

    def __init__(self, config: HSCLConfig, device: torch.device, seed: int):
        self.config = config
        self.device = torch.device(device)
        self.seed = int(seed)
        fast = self.device.type == "cuda" or config.cpu_bf16  # on the CPU only when asked (see the field)
        self.amp = config.amp and fast
        self.channels_last = config.channels_last and fast
        self.net: HSCLNet | None = None
        self.train_features: torch.Tensor | None = None  # k-NN score bank when use_sp=False

    # ---- plumbing -------------------------------------------------------------------------------

    def _build_net(self, in_channels: int) -> HSCLNet:
        # Initialise from the seed on the CPU (same weights on any device) without touching the
        # caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = HSCLNet(self.config, in_channels)
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def _embed(self, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """uint8 (N, C, H, W) on the device -> unit z (N, D), eval mode, no augmentation."""
        self.net.eval()
        out = []
        for part in images.split(chunk):
            with self._autocast():
                out.append(self.net(self._to_net(normalize(to_float(part)))))
        return torch.cat(out)

    # ---- one training step: Eq. (8) ---------------------------------------------------------------

    def loss(self, forward: Callable, x: torch.Tensor, kind: torch.Tensor, g: torch.Generator) -> dict:
        """x uint8 (B, C, H, W), kind int8 (B,) on the device -> {"loss", "loss_ss", "loss_sp", "loss_na"}."""
        cfg = self.config
        b = x.shape[0]
        # Two SimCLR views of every image: rows [0, B) view 1, [B, 2B) view 2.
        views = simclr_augment(x.repeat(2, 1, 1, 1), cfg.crop_scale_min, cfg.jitter, cfg.jitter_p,
                               cfg.gray_p, generator=g)  # (2B, C, H, W)
        # CSI shifting transformation: rotate the augmented views by k * 90 degrees.
        # Choice: rotation after augmentation, so the 4 copies of a view share its crop (the paper
        # and CSI rotate first; with square images and these augmentations the two differ only in
        # flip direction); the rotated copies enter S-S only, S-P and N-A use the upright views
        # (the paper does not say whether rotated copies are normals, anomalies or neither).
        n_rot = cfg.rotations if cfg.use_ss else 1
        views = rotations(views, n_rot)  # (R * 2B, C, H, W), row = k * 2B + view * B + i
        with self._autocast():
            z = forward(self._to_net(views))  # (R * 2B, D) unit rows, float32
        zero = z.sum() * 0  # a 0 that keeps the graph (DDP wants every parameter in every step)

        # S-S, Eq. (1)-(2): positive = the same image, same rotation, other view. Choice (CSI):
        # every rotated copy is an instance of its own, so (x, k) and (x, k') are negatives.
        if cfg.use_ss:
            partner = torch.arange(z.shape[0], device=z.device).view(n_rot, 2, b).flip(1).reshape(-1)
            loss_ss = info_nce_pairs(z, partner, cfg.tau)
        else:
            loss_ss = zero

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

    # ---- fit / score --------------------------------------------------------------------------------

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Train from scratch. on_epoch(epoch, {"loss", "loss_ss", "loss_sp", "loss_na", "lr"}) after
        each epoch (1-based; under DDP on every rank, with losses averaged over the ranks)."""
        cfg, dev = self.config, self.device
        t0 = time.perf_counter()
        # The whole training set moves to the device once, as uint8; batches are index gathers.
        images = train.images.to(dev)  # uint8 (N, C, H, W)
        kind = train.kind.to(dev, torch.int8)  # (N,)
        n = images.shape[0]
        self.net = self._build_net(images.shape[1])

        # DDP: every rank draws the same permutation and takes its own slice of each global batch.
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        model = self.net
        if distributed:
            model = DistributedDataParallel(self.net, device_ids=[dev] if dev.type == "cuda" else None)
        forward = torch.compile(model) if cfg.compile else model

        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Near-equal batches of about batch_size that use every sample each epoch (130 -> 65 + 65).
        steps_per_epoch = max(1, round(n / cfg.batch_size))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch))
        perm_gen = torch.Generator(device=dev).manual_seed(self.seed)  # shared by all ranks
        aug_seed = int(np.random.SeedSequence([self.seed % 2**64, rank]).generate_state(1)[0])
        aug_gen = torch.Generator(device=dev).manual_seed(aug_seed)  # own augmentations per rank

        keys = ("loss", "loss_ss", "loss_sp", "loss_na")
        history: dict[str, float] = {k: float("nan") for k in keys}
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            step_losses = []
            perm = torch.randperm(n, generator=perm_gen, device=dev)
            for batch in perm.tensor_split(steps_per_epoch):
                idx = batch.tensor_split(world)[rank]
                parts = self.loss(forward, images[idx], kind[idx], aug_gen)
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                opt.step()
                sched.step()
                step_losses.append(torch.stack([parts[k].detach() for k in keys]))
            means = torch.stack(step_losses).mean(0)
            if distributed:
                dist.all_reduce(means)
                means /= world
            lr = sched.get_last_lr()[0]
            history = dict(zip(keys, means.tolist(), strict=True))  # the one host sync per epoch
            if on_epoch is not None:
                on_epoch(epoch, {**history, "lr": lr})

        if distributed:  # BatchNorm running stats: take rank 0's, so every rank scores the same
            for buf in self.net.buffers():
                dist.broadcast(buf, src=0)
        if not cfg.use_sp:  # k-NN bank (Sec. 4.4): the normal and unlabeled training samples
            self.train_features = self._embed(images[kind != TrainSet.ANOMALY])
        return {
            "epochs": cfg.epochs,
            "steps": cfg.epochs * steps_per_epoch,
            "final_loss": history["loss"],
            **{f"final_{k}": history[k] for k in keys[1:]},
            "world_size": world,
            "fit_seconds": time.perf_counter() - t0,
        }

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N,) float: -Eq. (9), higher = more anomalous. Without S-P:
        minus the largest cosine similarity to the training features (k-NN with k = 1, CSI's)."""
        if self.net is None:
            raise RuntimeError("HSCL.score() called before fit()")
        z = self._embed(images.to(self.device))
        if self.config.use_sp:
            s = normality(z, self.net.unit_prototypes())
        else:
            s = (z @ self.train_features.T).amax(dim=1)
        return (-s).float().cpu().numpy()
