"""CADet's experiments (/work/shared/papers/004_fea3bd5cd4f38a35.txt) as scenario runners: one trial trains
once and returns many result rows (see orchestrator.runner.train_loop).

``twosample`` (Sec. 4.2, Tables 1-2): MMD and MMD-CC two-sample tests with the learned cosine similarity
between a small in-distribution sample and a sample of each shift, for sample sizes 3 to 20. Per sample size
and shift, ``n_samplings`` draws of disjoint S_P^(1), S_P^(2) and a clean S_Q' from the in-distribution test
images, and of S_Q from the shift; each test gives a p-value from ``n_perm`` permutations. A row (shift x
size x statistic) holds the detection AUROC of 1 - p (clean S_Q' = negatives, shifted S_Q = positives) in
``auroc_pooled``, the clean samples' rejection rate at alpha (the test's false positive rate) in
``fpr_at_alpha``, and in ``extra`` the shifted samples' rejection rate (Table 1's "rejection rate of h_0")
and the AUROC of the raw MMD estimate. Shifts: ``unknown`` (the dataset's other classes), ``pgd`` (PGD
examples against a classifier the trial trains on the in-distribution data) and other datasets by
name or ImageFolder path (resized to the in-distribution shape with orchestrator.runner.to_shape).

``adversarial`` (Sec. 5.1, Table 4; Table 5's m_in / m_out): a supervised classifier trained here on the
in-distribution data is attacked on the in-distribution test images by PGD (L_inf), CW (L2) and FGSM
(L_inf); CADet scores each clean image and its attacked copy (paired: only the perturbation differs). One
row per attack x statistic (CADet's score_C, m_in, m_out): AUROC, the false positive rate of Eq. (8)'s
p-values at alpha on the clean images, and in ``extra`` the detection rate at alpha, the attack's success
rate, the AUROC on successful attacks only, and the statistics' means and variances (Table 5).

In-distribution classes: ``normal_class`` c and the ``in_classes`` - 1 classes after it (mod the number of
classes); ``in_classes = 0`` means every class. The quick profile takes half of digits (c = 0: digits 0-4;
the other five are the ``unknown`` shift), the paper profile all of CIFAR-10 (then c plays no part and the
shifts are other datasets and attacks). The scenarios run c = 0 only unless --normal-classes asks for more.

Grid axis ``training`` (the paper's "SimCLRv2" and "Supervised" rows): ``contrastive`` fits CADet (pre-training
+ calibration); ``supervised`` measures similarity with the classifier's penultimate features instead, and
calibrates the same way. Runner settings (sample sizes, samplings, attack budgets, classifier) come from
the profile (``SETTINGS``); an axis of the same name in the scenario replaces one.

Attacks are written here in a few lines of torch rather than taken from a library: torchattacks 3.5.1
(last release 2023) pins requests~=2.25.1 and would downgrade requests/urllib3 for everything else in the
environment (and ships a top-level ``robustbench``), and adversarial-robustness-toolbox needs ``packaging``
installed without declaring it (/work/shared/notes/ray-2.60.md). PGD and FGSM are the textbook updates;
CW is Carlini-Wagner's L2 objective ||delta||^2 + c * max(Z_y - max_{j != y} Z_j, -kappa) optimised with
Adam, keeping the smallest successful perturbation, with delta projected onto an L2 ball of the budget
(our reading of Abusnaina et al.'s "CW: L2, delta = 0.10"). Pixels are in [0, 1]; adversarial images stay
float (not re-quantised to 8 bits) and CADet scores them as such.

Budgets. The paper (ImageNet, 224x224x3, from Abusnaina et al. 2021): PGD L_inf 0.02, step 0.002, 50 steps;
CW L2 0.10, lr 0.03, 50 steps; FGSM L_inf 0.05.
- paper profile (CIFAR-10, 32x32x3): L_inf budgets are per pixel and stay as they are; the L2 budget keeps
  the paper's per-pixel RMS, 0.10 * sqrt(32*32*3 / (224*224*3)) = 0.0143.
- quick profile (digits, 8x8x1, 17 grey levels): the paper's budgets barely move a digits classifier
  (measured, classifier on digits 0-4, 1 seed: test error 0.7 % clean, 1.0 % under PGD 0.02, 4.0 % under
  FGSM 0.05, 1.0 % under CW at L2 0.10, 0.2 % at the RMS-rescaled 0.002), so the L_inf budgets are 5x the
  paper's (PGD 0.10, step 0.01, 50 steps: 29 % error; FGSM 0.25) and CW gets an L2 ball of 1.0 (66 %),
  a per-pixel RMS of 0.125, the scale of the L_inf budgets.

Measured, quick profile, seeds 0-2 (mean over seeds; each sweep about 20 s on 2 shared cores):
- twosample, AUROC (%) at n = 3 / 5 / 10 / 20: unknown classes 5-9, MMD-CC + contrastive 64.5 / 67.6 / 86.1 /
  95.4, MMD-CC + supervised 53.3 / 65.3 / 75.6 / 87.8; PGD 49.9 / 49.1 / 52.7 / 53.9 (contrastive) and
  49.2 / 56.9 / 58.4 / 68.0 (supervised). Rejection rates at alpha .05 on clean samples 0.04-0.07.
- adversarial, AUROC (%) of CADet + contrastive: PGD 49.0, CW 54.5, FGSM 64.8; m_in alone 54.7 / 57.8 / 73.9,
  m_out alone 43.5 / 48.4 / 45.9 (Table 5's pattern: m_in carries the adversarial signal). Success rates of
  the attacks: PGD 30 %, CW 66 %, FGSM 94 % (clean accuracy 99.4 %). Supervised features score attacked
  images as MORE typical (AUROC 24-41 %). 8x8 digits and a 3-layer CNN are a smoke scale, not the paper's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from methods.augment import normalize, resized_crop_flip, to_float
from methods.base import TrainSet
from methods.cadet import (
    CADet,
    CADetConfig,
    build_backbone,
    calibrated_p_values,
    calibration_sizes,
    cosine_kernel,
    mmd_cc_null,
    mmd_test,
    mmd_u2,
    permutation_p_value,
)
from orchestrator.data.datasets import DatasetError, load_dataset
from orchestrator.runner import device_name, pick_device, to_shape
from orchestrator.grid.scenarios import trial_key
from orchestrator.data.splits import stable_seed

TRAININGS = ("contrastive", "supervised")


@dataclass(frozen=True)
class Settings:
    """What an experiment runs besides the method's own Config; per profile in SETTINGS."""

    in_classes: int = 0
    """in-distribution classes: normal_class and the in_classes - 1 after it; 0 = every class"""
    sample_sizes: tuple[int, ...] = (3, 5, 10, 20)
    n_samplings: int = 100
    n_perm: int = 500
    alpha: float = 0.05
    shifts: tuple[str, ...] = ("unknown", "pgd")
    """twosample shifts: "unknown" (the other classes), "pgd", or dataset names / ImageFolder paths"""
    attacks: tuple[str, ...] = ("pgd", "cw", "fgsm")
    pgd_eps: float = 0.02
    pgd_step: float = 0.002
    pgd_steps: int = 50
    cw_l2: float = 0.10
    cw_lr: float = 0.03
    cw_steps: int = 50
    cw_c: float = 1.0
    """CW's trade-off constant c (fixed: no binary search)"""
    cw_kappa: float = 0.0
    fgsm_eps: float = 0.05
    clf_net: str = "cnn_small"
    clf_epochs: int = 30
    clf_batch_size: int = 64
    clf_optimizer: str = "adam"
    clf_lr: float = 1e-3
    clf_weight_decay: float = 0.0
    clf_crop_scale_min: float = 1.0
    """classifier training crops (area fraction in [this, 1]) and flips when < 1; 1 = no augmentation"""
    chunk: int = 250
    """samplings per batched computation (memory: chunk x n_perm x 2n floats)"""


SETTINGS = {
    "quick": Settings(in_classes=5, pgd_eps=0.10, pgd_step=0.01, cw_l2=1.0, fgsm_eps=0.25),
    # CIFAR-10: every class in-distribution; shifts are other datasets (skipped, and named in `extra`, when
    # absent) and PGD. 5000 samplings as Sec. 4.2; the rejection rates come from the same draws.
    "paper": Settings(in_classes=0, n_samplings=5000, shifts=("cifar100", "svhn", "pgd"), cw_l2=0.10 * 32 / 224,
                      clf_net="resnet18", clf_epochs=30, clf_batch_size=256, clf_optimizer="sgd", clf_lr=0.1,
                      clf_weight_decay=5e-4, clf_crop_scale_min=0.6),
}


def settings_for(trial: dict) -> Settings:
    """The profile's settings, with any scenario axis of the same name in its place."""
    base = SETTINGS.get(trial["profile"], Settings())
    names = {f.name for f in dataclasses.fields(Settings)}
    axes = {k: tuple(v) if isinstance(v, list) else v for k, v in (trial.get("axes") or {}).items() if k in names}
    settings = dataclasses.replace(base, **axes)
    # Datasets named on the command line (`sweep twosample --test-datasets a,b`) are further shifts.
    extra = tuple(d for d in trial.get("test_datasets") or () if d not in settings.shifts)
    return dataclasses.replace(settings, shifts=settings.shifts + extra) if extra else settings


def in_distribution(normal_class: int | None, in_classes: int, num_classes: int) -> list[int]:
    """normal_class and the in_classes - 1 classes after it, wrapping around; in_classes 0 (or >= all) = all.

    >>> in_distribution(0, 5, 10), in_distribution(8, 3, 10), in_distribution(3, 0, 10) == list(range(10))
    ([0, 1, 2, 3, 4], [8, 9, 0], True)
    """
    if in_classes <= 0 or in_classes >= num_classes:
        return list(range(num_classes))
    return [(int(normal_class or 0) + k) % num_classes for k in range(in_classes)]


def class_range(classes: list[int]) -> str:
    """[5, 6, 7, 8, 9] -> "5-9"; other lists comma-separated."""
    if len(classes) > 1 and classes == list(range(classes[0], classes[0] + len(classes))):
        return f"{classes[0]}-{classes[-1]}"
    return ",".join(map(str, classes))


# --------------------------------------------------------------------------------------------------
# DDP helpers (the runner runs on every Ray Train worker; torch.distributed is initialised with N > 1).
# --------------------------------------------------------------------------------------------------


def _world() -> tuple[int, int, bool]:
    on = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size(), True) if on else (0, 1, False)


def _generator(device, *parts) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stable_seed(*parts))


# --------------------------------------------------------------------------------------------------
# The supervised classifier (the attacked model, and the "Supervised" similarity).
# --------------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """encoder -> linear layer; takes float images in [0, 1] and normalises them itself (so attacks work
    in pixel space)."""

    def __init__(self, net: str, in_channels: int, n_classes: int):
        super().__init__()
        self.encoder, dim = build_backbone(net, in_channels)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(normalize(x01)))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, n_classes: int, s: Settings, seed: int,
                     device: torch.device) -> tuple[Classifier, dict]:
    """Cross-entropy training on uint8 images (N, C, H, W) with labels 0..n_classes-1; DDP when initialised
    (each global batch sharded by rank). -> (classifier in eval mode, summary)."""
    t0 = time.perf_counter()
    rank, world, distributed = _world()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = Classifier(s.clf_net, images.shape[1], n_classes)
    clf = clf.to(device)
    model = DistributedDataParallel(clf, device_ids=[device] if device.type == "cuda" else None) if distributed else clf
    if s.clf_optimizer == "sgd":
        opt = torch.optim.SGD(clf.parameters(), lr=s.clf_lr, momentum=0.9, weight_decay=s.clf_weight_decay,
                              nesterov=True)
    else:
        opt = torch.optim.Adam(clf.parameters(), lr=s.clf_lr, weight_decay=s.clf_weight_decay)
    images, labels = images.to(device), labels.to(device)
    n = images.shape[0]
    steps = max(1, round(n / s.clf_batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.clf_epochs * steps))
    order_gen = _generator(device, "clf-order", seed)
    aug_gen = _generator(device, "clf-aug", seed, rank)
    loss = torch.tensor(float("nan"))
    for _ in range(s.clf_epochs):
        clf.train()
        for batch in torch.randperm(n, generator=order_gen, device=device).tensor_split(steps):
            idx = batch[: len(batch) // world * world].tensor_split(world)[rank]
            x = to_float(images[idx])
            if s.clf_crop_scale_min < 1:
                x = resized_crop_flip(x, scale=(s.clf_crop_scale_min, 1.0), generator=aug_gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if distributed:
        for buf in clf.buffers():
            dist.broadcast(buf, src=0)
    clf.eval()
    return clf, {"clf_final_loss": float(loss.detach()), "clf_seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict(clf: Classifier, x01: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([clf(x).argmax(1) for x in x01.split(chunk)])


# --------------------------------------------------------------------------------------------------
# Attacks, on float images in [0, 1] with their true labels (untargeted).
# --------------------------------------------------------------------------------------------------


def _input_grad(clf: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(clf(x), y, reduction="sum"), x)
    return grad


def fgsm(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2014), L_inf: x + eps * sign(grad_x CE)."""
    return (x + eps * _input_grad(clf, x, y).sign()).clamp(0, 1)


def pgd(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD (Madry et al. 2017), L_inf: a uniform random start in the eps-ball, then `steps` signed-gradient
    ascent steps on the cross-entropy, each projected back onto the ball and the pixel range."""
    noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
    adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step * _input_grad(clf, adv, y).sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


def cw_l2(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: float, lr: float, steps: int,
          c: float = 1.0, kappa: float = 0.0) -> torch.Tensor:
    """Carlini-Wagner L2 (2017): minimise ||delta||^2 + c * max(Z_y - max_{j != y} Z_j, -kappa) with Adam, delta
    projected onto the L2 ball of radius `budget`; returns the smallest successful perturbation seen,
    else the last iterate."""
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    best, best_norm = x.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
    is_true = F.one_hot(y, clf.fc.out_features).bool()
    for _ in range(steps):
        adv = (x + delta).clamp(0, 1)
        logits = clf(adv)
        true = logits[is_true]
        other = logits.masked_fill(is_true, float("-inf")).amax(1)
        norm = (adv - x).flatten(1).norm(dim=1)
        with torch.no_grad():  # keep the smallest successful example so far
            better = (other > true) & (norm < best_norm)
            best[better], best_norm[better] = adv[better], norm[better]
        loss = (norm**2 + c * (true - other + kappa).clamp_min(0)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            scale = (budget / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1)
            delta.mul_(scale.view(-1, *[1] * (x.ndim - 1)))
    last = (x + delta.detach()).clamp(0, 1)
    return torch.where(torch.isinf(best_norm).view(-1, *[1] * (x.ndim - 1)), last, best)


def attack(name: str, clf: Classifier, x01: torch.Tensor, y: torch.Tensor, s: Settings, seed: int,
           chunk: int = 512) -> torch.Tensor:
    """One of "pgd", "cw", "fgsm" with the profile's budget, in chunks; float [0, 1] out."""
    clf.eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    gen = _generator(x01.device, "attack", name, seed)
    out = []
    for xb, yb in zip(x01.split(chunk), y.split(chunk), strict=True):
        if name == "pgd":
            out.append(pgd(clf, xb, yb, s.pgd_eps, s.pgd_step, s.pgd_steps, gen))
        elif name == "cw":
            out.append(cw_l2(clf, xb, yb, s.cw_l2, s.cw_lr, s.cw_steps, s.cw_c, s.cw_kappa))
        elif name == "fgsm":
            out.append(fgsm(clf, xb, yb, s.fgsm_eps))
        else:
            raise ValueError(f"unknown attack '{name}'; known: pgd, cw, fgsm")
    for p in clf.parameters():
        p.requires_grad_(True)
    return torch.cat(out).detach()


def budget_of(name: str, s: Settings) -> dict:
    return {"pgd": {"norm": "Linf", "eps": s.pgd_eps, "step": s.pgd_step, "steps": s.pgd_steps},
            "cw": {"norm": "L2", "eps": s.cw_l2, "lr": s.cw_lr, "steps": s.cw_steps, "c": s.cw_c},
            "fgsm": {"norm": "Linf", "eps": s.fgsm_eps}}[name]


# --------------------------------------------------------------------------------------------------
# Shared set-up: data, classifier, detector.
# --------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    data: object
    classes: list[int]
    s: Settings
    training: str
    device: torch.device
    detector: CADet
    clf: Classifier | None
    summary: dict
    test_in: torch.Tensor  # uint8 in-distribution test images
    test_in_labels: torch.Tensor  # remapped to 0..k-1


def prepare(trial: dict, data_root: str | None, download: bool, need_classifier: bool) -> Setup:
    """Load the data, train the classifier if needed, build the detector (CADet pre-trained and calibrated,
    or calibrated on the classifier's features)."""
    device = pick_device()
    s = settings_for(trial)
    training = (trial.get("axes") or {}).get("training", "contrastive")
    if training not in TRAININGS:
        raise ValueError(f"training={training!r}: use one of {', '.join(TRAININGS)}")
    data = load_dataset(trial["dataset"], data_root, download)
    classes = in_distribution(trial["normal_class"], s.in_classes, data.num_classes)
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    train_mask = remap[data.train_labels] >= 0
    train_images, train_labels = data.train_images[train_mask], remap[data.train_labels[train_mask]]
    test_mask = remap[data.test_labels] >= 0

    cfg = CADetConfig(**trial["params"])
    detector = CADet(cfg, device, stable_seed("train", trial_key(trial)))
    # The supervised path holds the calibration images out of the classifier's training, as CADet.fit
    # holds them out of pre-training; the same split for both trainings (no trial key in the seed).
    base = (trial["dataset"], classes, trial["seed"])
    n1, n2 = calibration_sizes(len(train_labels), cfg)
    order = torch.randperm(len(train_labels), generator=_generator("cpu", "calibration", *base))
    val1, val2, fit_idx = order[:n1], order[n1:n1 + n2], order[n1 + n2:]

    summary: dict = {}
    clf = None
    if need_classifier or training == "supervised":
        clf, info = train_classifier(train_images[fit_idx], train_labels[fit_idx], len(classes), s,
                                     stable_seed("classifier", *base), device)
        summary.update(info)
        summary["clf_test_accuracy"] = float(
            (predict(clf, to_float(data.test_images[test_mask].to(device))).cpu()
             == remap[data.test_labels[test_mask]]).float().mean())
    t0 = time.perf_counter()
    if training == "contrastive":
        fit = detector.fit(TrainSet(train_images, torch.zeros(len(train_labels), dtype=torch.int8)))
        summary.update({k: v for k, v in fit.items() if isinstance(v, (int, float))})
    else:
        detector.use_encoder(clf.encoder)
        summary.update(detector.calibrate(train_images[val1].to(device), train_images[val2].to(device)))
        summary.update(epochs=s.clf_epochs, final_loss=summary["clf_final_loss"], world_size=_world()[1])
    summary["train_seconds"] = time.perf_counter() - t0 + summary.get("clf_seconds", 0.0)
    return Setup(data, classes, s, training, device, detector, clf, summary,
                 data.test_images[test_mask], remap[data.test_labels[test_mask]])


def measured(setup: Setup, started: float, rows: list[dict], n_test: int) -> dict:
    sm = setup.summary
    return {
        "rows": rows,
        "epochs": int(sm.get("epochs", 0)),
        "final_loss": float(sm.get("final_loss", float("nan"))),
        "train_seconds": float(sm["train_seconds"]),
        "trial_seconds": time.perf_counter() - started,
        "device": device_name(setup.device),
        "world_size": int(sm.get("world_size", _world()[1])),
        "n_unlabeled": int(sm.get("n_pretrain", 0)) or None,
        "n_val": int(sm.get("n_val1", 0) + sm.get("n_val2", 0)) or None,
        "n_test": n_test,
    }


def _summary_extra(setup: Setup) -> dict:
    keep = ("gamma", "n_val1", "n_val2", "n_pretrain", "clf_test_accuracy", "pretrain_images_per_second")
    return {k: setup.summary[k] for k in keep if k in setup.summary}


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(negatives)), np.ones(len(positives))], np.r_[negatives, positives]))


# --------------------------------------------------------------------------------------------------
# twosample: Sec. 4.2 (Table 2 AUROCs) with Table 1's rejection rates.
# --------------------------------------------------------------------------------------------------


def two_sample_draws(f_clean: torch.Tensor, shifted: dict[str, torch.Tensor], n: int, s: Settings,
                     seed_parts: tuple) -> dict[str, dict[str, np.ndarray]]:
    """For sample size n: n_samplings draws of disjoint S_P^(1), S_P^(2), S_Q' (clean) from f_clean (N, D) and
    of S_Q from each shifted pool (M, D). -> {"clean" | shift: {"MMD": p (S,), "MMD-CC": p, "MMD est": ...}}.
    Every draw's tests run at once, in chunks of s.chunk draws, all permutations in one tensor op."""
    dev = f_clean.device
    gen = _generator(dev, "draws", *seed_parts, n)
    perm_gen = _generator(dev, "permutations", *seed_parts, n)
    out: dict[str, dict[str, list]] = {}

    def add(key, stat, value):
        out.setdefault(key, {}).setdefault(stat, []).append(value.cpu())

    for start in range(0, s.n_samplings, s.chunk):
        m = min(s.chunk, s.n_samplings - start)
        pick = torch.rand(m, f_clean.shape[0], generator=gen, device=dev).argsort(1)[:, : 3 * n]  # no replacement
        p1, p2, q0 = (f_clean[pick[:, k * n:(k + 1) * n]] for k in range(3))  # (m, n, D) each
        cc_null = mmd_cc_null(p1, p2, s.n_perm, perm_gen)  # Algorithm 1's null: clean samples only
        samples = {"clean": q0}
        for name, pool in shifted.items():
            samples[name] = pool[torch.rand(m, pool.shape[0], generator=gen, device=dev).argsort(1)[:, :n]]
        for name, q in samples.items():
            p_mmd, est, _ = mmd_test(p1, q, s.n_perm, perm_gen)
            est_cc = mmd_u2(cosine_kernel(p1), cosine_kernel(q), cosine_kernel(p1, q))
            add(name, "MMD", p_mmd)
            add(name, "MMD est", est)
            add(name, "MMD-CC", permutation_p_value(est_cc, cc_null))
            add(name, "MMD-CC est", est_cc)
    return {k: {stat: torch.cat(v).double().numpy() for stat, v in d.items()} for k, d in out.items()}


def run_twosample(trial: dict, *, data_root: str | None = None, download: bool = False) -> dict:
    """The `twosample` scenario's trial: rows (shift x sample size x {MMD, MMD-CC})."""
    started = time.perf_counter()
    s = settings_for(trial)
    setup = prepare(trial, data_root, download, need_classifier="pgd" in s.shifts)
    data, det, dev = setup.data, setup.detector, setup.device

    # In-distribution test images: half for the clean samples, half as originals of the PGD shift (so an
    # attacked image never meets its own clean original in one test).
    n_in = setup.test_in.shape[0]
    order = torch.randperm(n_in, generator=_generator("cpu", "halves", trial["dataset"], setup.classes, trial["seed"]))
    clean_idx, attack_idx = (order[: n_in // 2], order[n_in // 2:]) if "pgd" in s.shifts else (order, order[:0])
    f_clean = det.features(setup.test_in[clean_idx])

    shifted, labels, skipped = {}, {}, []
    for shift in s.shifts:
        if shift == "unknown":
            others = [c for c in range(data.num_classes) if c not in setup.classes]
            if not others:
                continue  # every class is in-distribution: no unknown classes
            mask = ~torch.isin(data.test_labels, torch.tensor(setup.classes))
            shifted[shift] = det.features(data.test_images[mask])
            labels[shift] = f"unknown classes {class_range(others)}"
        elif shift == "pgd":
            x = to_float(setup.test_in[attack_idx].to(dev))
            adv = attack("pgd", setup.clf, x, setup.test_in_labels[attack_idx].to(dev), s,
                         stable_seed("attack", trial["dataset"], setup.classes, trial["seed"]))
            shifted[shift], labels[shift] = det.features(adv), "PGD"
        else:
            try:
                other = load_dataset(shift, data_root, download)
            except DatasetError as exc:  # a dataset the user does not have: noted in every row, not fatal
                skipped.append(f"{shift}: {exc}")
                continue
            shifted[shift] = det.features(to_shape(other.test_images, data.image_shape))
            labels[shift] = shift.rstrip("/").rsplit("/", 1)[-1]

    rows = []
    tag = "contrastive" if setup.training == "contrastive" else "supervised"
    for n in s.sample_sizes:
        if n < 2 or f_clean.shape[0] < 3 * n or any(f.shape[0] < n for f in shifted.values()):
            raise ValueError(f"sample size {n} needs {3 * n} clean in-distribution test images (have "
                             f"{f_clean.shape[0]}) and {n} of every shift")
        res = two_sample_draws(f_clean, shifted, n, s, (trial_key(trial),))
        for shift, label in labels.items():
            for stat in ("MMD", "MMD-CC"):
                p_null, p_shift = res["clean"][stat], res[shift][stat]
                est_null, est_shift = res["clean"][f"{stat} est"], res[shift][f"{stat} est"]
                rows.append({
                    "test_dataset": label, "sample_size": n, "variant": f"{stat} + {tag}",
                    "auroc_pooled": _auroc(1 - p_null, 1 - p_shift),
                    "fpr_at_alpha": float((p_null <= s.alpha).mean()),
                    "n_test": 2 * s.n_samplings,
                    "extra": {"rejection_rate": float((p_shift <= s.alpha).mean()), "alpha": s.alpha,
                              "n_samplings": s.n_samplings, "n_perm": s.n_perm,
                              "auroc_statistic": _auroc(est_null, est_shift),
                              "median_p_shift": float(np.median(p_shift)), "training": tag,
                              "in_classes": setup.classes, "skipped_shifts": skipped, **_summary_extra(setup)},
                })
    if not rows:
        raise ValueError(f"no shift to test: {', '.join(skipped) or 'none given'}")
    return measured(setup, started, rows, n_test=int(f_clean.shape[0] + sum(f.shape[0] for f in shifted.values())))


# --------------------------------------------------------------------------------------------------
# adversarial: Sec. 5.1 (Table 4), with Table 5's m_in / m_out.
# --------------------------------------------------------------------------------------------------

STATISTICS = {"CADet": "score", "m_in": "m_in", "m_out": "m_out"}


def run_adversarial(trial: dict, *, data_root: str | None = None, download: bool = False) -> dict:
    """The `adversarial` scenario's trial: rows (attack x {CADet, m_in, m_out})."""
    started = time.perf_counter()
    setup = prepare(trial, data_root, download, need_classifier=True)
    s, det, dev, clf = setup.s, setup.detector, setup.device, setup.clf
    x = to_float(setup.test_in.to(dev))
    y = setup.test_in_labels.to(dev)
    clean_correct = predict(clf, x) == y
    clean = det.statistics(x)
    cal = det.calibration
    tag = "contrastive" if setup.training == "contrastive" else "supervised"

    rows = []
    for name in s.attacks:
        adv = attack(name, clf, x, y, s, stable_seed("attack", trial["dataset"], setup.classes, trial["seed"]))
        fooled = (predict(clf, adv) != y) & clean_correct  # success: a correct prediction turned wrong
        adv_stats = det.statistics(adv)
        for label, key in STATISTICS.items():
            # Low values are anomalous for all three; p-values rank against X_val^(2)'s values (Eq. 8).
            neg, pos = -clean[key].cpu().numpy(), -adv_stats[key].cpu().numpy()
            p_clean = calibrated_p_values(clean[key], cal[key]).cpu().numpy()
            p_adv = calibrated_p_values(adv_stats[key], cal[key]).cpu().numpy()
            ok = fooled.cpu().numpy()
            rows.append({
                "test_dataset": name.upper(), "variant": f"{label} + {tag}",
                "auroc_pooled": _auroc(neg, pos),
                "fpr_at_alpha": float((p_clean <= s.alpha).mean()),
                "n_test": 2 * len(neg),
                "extra": {"tpr_at_alpha": float((p_adv <= s.alpha).mean()), "alpha": s.alpha,
                          "auroc_successful": _auroc(neg, pos[ok]) if ok.any() else None,
                          "attack_success_rate": float(ok.mean()),
                          "clean_accuracy": float(clean_correct.float().mean()),
                          "adv_accuracy": float((predict(clf, adv) == y).float().mean()),
                          "budget": budget_of(name, s),
                          "mean_clean": float(clean[key].mean()), "mean_adv": float(adv_stats[key].mean()),
                          "var_clean": float(clean[key].var()), "var_adv": float(adv_stats[key].var()),
                          "training": tag, "in_classes": setup.classes, **_summary_extra(setup)},
            })
    return measured(setup, started, rows, n_test=2 * int(x.shape[0]))
