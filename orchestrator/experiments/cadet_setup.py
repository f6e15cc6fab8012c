"""What CADet's two experiment kinds (two_sample.py, adversarial.py; CADet, ../shared/papers/004_*.txt)
share: their settings, the supervised classifier (the attacked model, and the "Supervised" rows'
similarity) and the set-up of one trial (data, classifier, detector).

In-distribution classes: `normal_class` c and the `in_classes` - 1 classes after it (mod the number of
classes); `in_classes = 0` means every class. The quick profile takes half of digits (c = 0: digits 0-4;
the other five are the `unknown` shift), the paper profile all of CIFAR-10 (then c plays no part and the
shifts are other datasets and attacks).

Setting `training` (a scenario axis, the paper's "SimCLRv2" and "Supervised" rows): `contrastive` fits CADet
(pre-training + calibration); `supervised` measures similarity with the classifier's penultimate features
instead and calibrates the same way. All settings of a profile are in the trial (and so in its key).

Budgets (in [0, 1] pixel space). The paper (ImageNet, 224x224x3): PGD L_inf 0.02, step 0.002, 50 steps; CW L2
0.10, lr 0.03, 50 steps; FGSM L_inf 0.05.
- paper and small profiles (CIFAR-10, 32x32x3), the same budgets: PGD and FGSM as the paper's (L_inf is per
  pixel); CW as Carlini-Wagner define it (binary search over c, 5 rounds of 50 Adam steps at lr 0.03, first
  c = 1) inside an L2 ball of 0.5. Why 0.5 and not 0.10 (or 0.10 scaled to 0.0143, which moved a CIFAR
  classifier's accuracy 0.468 -> 0.455): attacks.py's docstring, with the measurements.
- quick profile (digits, 8x8x1, 17 grey levels): the paper's budgets barely move a digits classifier
  (measured, classifier on digits 0-4, 1 seed: test error 0.7 % clean, 1.0 % under PGD 0.02, 4.0 % under
  FGSM 0.05, 1.0 % under CW at L2 0.10), so the L_inf budgets are 5x the paper's (PGD 0.10, step 0.01,
  50 steps: 29 % error; FGSM 0.25) and CW gets an L2 ball of 1.0 (66 %), a per-pixel RMS of 0.125.

The small profile (CIFAR-10 on a CPU): every class in distribution and the paper profile's shifts and attack
budgets; the classifier is the CADet small profile's network and optimiser (quarter-width ResNet-18, Adam
1e-3, batch 128, 5 epochs, the paper profile's crops), and 500 samplings per sample size instead of 5,000.
Every row's `extra` records its attack's success rate and perturbation norms, and flags an attack that
fooled fewer than half of the correctly classified images (attacks.SUCCESS_THRESHOLD).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from methods.augment import normalize, resized_crop_flip, to_float
from methods.base import TrainSet
from methods.cadet import CADet, calibration_sizes
from methods.networks import build_backbone
from methods.optim import make_optimizer, warmup_cosine
from methods.trainer import fit, seeded, world
from orchestrator.data.datasets import DataSource, ImageData
from orchestrator.data.splits import stable_seed
from orchestrator.experiments.fitting import build_method, device_name, pick_device
from orchestrator.grid.trial import Trial

TRAININGS = ("contrastive", "supervised")


@dataclass(frozen=True)
class Settings:
    """What a CADet experiment runs besides the method's own Config; per profile in SETTINGS."""

    in_classes: int = 0
    """in-distribution classes: normal_class and the in_classes - 1 after it; 0 = every class"""
    sample_sizes: tuple[int, ...] = (3, 5, 10, 20)
    n_samplings: int = 100
    n_perm: int = 500
    alpha: float = 0.05
    shifts: tuple[str, ...] = ("unknown", "pgd")
    """two_sample shifts: "unknown" (the other classes), "pgd", or dataset names / ImageFolder paths"""
    attacks: tuple[str, ...] = ("pgd", "cw", "fgsm")
    pgd_eps: float = 0.02
    pgd_step: float = 0.002
    pgd_steps: int = 50
    """PGD: L_inf budget, step and steps"""
    cw_l2: float = 0.10
    cw_lr: float = 0.03
    cw_steps: int = 50
    cw_c: float = 1.0
    cw_kappa: float = 0.0
    cw_search_steps: int = 5
    """CW: L2 budget, Adam's learning rate and steps per round, the first round's constant c, kappa, and the
    rounds of the binary search over c"""
    fgsm_eps: float = 0.05
    n_attacked: int = 0
    """in-distribution test images attacked (a seeded subset); 0 = all. CW's binary search costs about 250
    classifier passes an image, so the CPU profile attacks a subset"""
    clf_net: str = "cnn_small"
    clf_epochs: int = 30
    clf_batch_size: int = 64
    """the classifier: its encoder, epochs and batch"""
    clf_optimizer: str = "adam"
    clf_lr: float = 1e-3
    clf_weight_decay: float = 0.0
    clf_crop_scale_min: float = 1.0
    """its optimiser, learning rate (cosine to 0), weight decay, and training crops (area fraction in [this,
    1]) with flips when < 1 (1 = no augmentation)"""
    chunk: int = 250
    """samplings per batched computation at most (fewer at large n: methods/mmd.samplings_per_batch keeps a
    batch under a fixed memory budget)"""
    training: str = "contrastive"
    """the detector's features: CADet's contrastive pre-training or the classifier's ("supervised")"""


# The CIFAR-10 profiles' attack budgets in [0, 1] pixel space (the paper's PGD and FGSM; CW: attacks.py).
CIFAR_ATTACKS = {"pgd_eps": 0.02, "pgd_step": 0.002, "pgd_steps": 50, "cw_l2": 0.5, "cw_lr": 0.03, "cw_steps": 50,
                 "cw_c": 1.0, "cw_kappa": 0.0, "cw_search_steps": 5, "fgsm_eps": 0.05}

SETTINGS = {
    "quick": Settings(in_classes=5, pgd_eps=0.10, pgd_step=0.01, cw_l2=1.0, fgsm_eps=0.25),
    # CIFAR-10 on a CPU: the paper profile's data, shifts and attacks; the CADet small profile's classifier
    # recipe (methods/cadet.py) with the paper profile's crops; 500 samplings; 1,000 attacked test images.
    "small": Settings(in_classes=0, n_samplings=500, shifts=("cifar100", "svhn", "pgd"), **CIFAR_ATTACKS,
                      n_attacked=1000, clf_net="resnet18_narrow", clf_epochs=5, clf_batch_size=128,
                      clf_optimizer="adam", clf_lr=1e-3, clf_weight_decay=0.0, clf_crop_scale_min=0.6),
    # CIFAR-10: every class in-distribution; shifts are other datasets (skipped, and named in `extra`, when
    # absent) and PGD. 5000 samplings as Sec. 4.2; the rejection rates come from the same draws.
    "paper": Settings(in_classes=0, n_samplings=5000, shifts=("cifar100", "svhn", "pgd"), **CIFAR_ATTACKS,
                      clf_net="resnet18", clf_epochs=30, clf_batch_size=256, clf_optimizer="sgd", clf_lr=0.1,
                      clf_weight_decay=5e-4, clf_crop_scale_min=0.6),
}


def profile_settings(profile: str) -> dict:
    """The profile's settings as plain JSON data (what a trial carries)."""
    return json_safe(dataclasses.asdict(SETTINGS.get(profile, Settings())))


def json_safe(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def add_shifts(settings: dict, labeled: str | None, test: list[str] | None) -> dict:
    """`--test-datasets a,b` adds datasets to the shifts two_sample tests; --labeled-dataset has no role here."""
    if labeled:
        raise ValueError("--labeled-dataset has no role in CADet's experiments")
    return {**settings, "shifts": [*settings["shifts"], *(d for d in test or [] if d not in settings["shifts"])]}


def settings_of(trial: Trial, cls: type = Settings) -> Settings:
    """The trial's settings as `cls` (Settings, or a kind's subclass of it with fields of its own)."""
    s = {k: tuple(v) if isinstance(v, list) else v for k, v in trial.settings.items()}
    settings = cls(**s)
    if settings.training not in TRAININGS:
        raise ValueError(f"training={settings.training!r}: use one of {', '.join(TRAININGS)}")
    return settings


def in_distribution(normal_class: int | None, in_classes: int, num_classes: int) -> list[int]:
    """normal_class and the in_classes - 1 classes after it, wrapping around; in_classes 0 (or >= all) = all.

    >>> in_distribution(0, 5, 10), in_distribution(8, 3, 10), in_distribution(3, 0, 10) == list(range(10))
    ([0, 1, 2, 3, 4], [8, 9, 0], True)
    """
    if in_classes <= 0 or in_classes >= num_classes:
        return list(range(num_classes))
    return [(int(normal_class or 0) + k) % num_classes for k in range(in_classes)]


def unknown_classes(setup) -> tuple[str, torch.Tensor] | None:
    """The `unknown` shift: (its label, the test images of the classes not in distribution); None when every
    class is in distribution (the caller lists it in skipped_shifts)."""
    data = setup.data
    others = [c for c in range(data.num_classes) if c not in setup.classes]
    if not others:
        return None
    mask = ~torch.isin(data.test_labels, torch.tensor(setup.classes))
    return f"unknown classes {class_range(others)}", data.test_images[mask]


def class_range(classes: list[int]) -> str:
    """[5, 6, 7, 8, 9] -> "5-9"; other lists comma-separated."""
    if len(classes) > 1 and classes == list(range(classes[0], classes[0] + len(classes))):
        return f"{classes[0]}-{classes[-1]}"
    return ",".join(map(str, classes))


def generator(device, *parts) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stable_seed(*parts))


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(negatives)), np.ones(len(positives))], np.r_[negatives, positives]))


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
    """Cross-entropy training on uint8 images (N, C, H, W) with labels 0..n_classes-1, through the one fit
    loop (methods/trainer.py; DDP when initialised). -> (classifier in eval mode, summary)."""
    clf = seeded(lambda: Classifier(s.clf_net, images.shape[1], n_classes), seed).to(device)
    images, labels = images.to(device), labels.to(device)

    def step_loss(forward, rows, epoch, g):
        x = to_float(images[rows])
        if s.clf_crop_scale_min < 1:
            x = resized_crop_flip(x, scale=(s.clf_crop_scale_min, 1.0), generator=g)
        return {"loss": F.cross_entropy(forward(x), labels[rows])}

    result = fit(clf, step_loss, len(labels), epochs=s.clf_epochs, batch_size=s.clf_batch_size, seed=seed,
                 device=device, schedule=warmup_cosine(0, s.clf_epochs),
                 make_optimizer=lambda params: make_optimizer(s.clf_optimizer, params, s.clf_lr,
                                                              s.clf_weight_decay, nesterov=True))
    clf.eval()
    return clf, {"clf_final_loss": result.history["loss"], "clf_seconds": result.seconds}


@torch.no_grad()
def predict(clf: Classifier, x01: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([clf(x).argmax(1) for x in x01.split(chunk)])


# --------------------------------------------------------------------------------------------------
# One trial's set-up: data, classifier, detector.
# --------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    data: ImageData
    classes: list[int]
    s: Settings
    device: torch.device
    detector: CADet
    clf: Classifier | None
    summary: dict
    test_in: torch.Tensor  # uint8 in-distribution test images
    test_in_labels: torch.Tensor  # remapped to 0..k-1
    train_in: torch.Tensor | None = None  # uint8 in-distribution training images (holdout excluded)
    train_in_labels: torch.Tensor | None = None  # remapped
    parts: dict | None = None  # indices into train_in: "val1", "val2" (calibration), "fit" (the classifier's)
    holdout: torch.Tensor | None = None  # uint8 training images no network saw (`holdout` of prepare)
    holdout_labels: torch.Tensor | None = None  # their original class labels


def prepare(trial: Trial, source: DataSource, need_classifier: bool, settings: Settings | None = None,
            holdout: int = 0) -> Setup:
    """Load the data, train the classifier if needed, build the detector (CADet pre-trained and calibrated,
    or calibrated on the classifier's features). `holdout` > 0 first sets that many in-distribution training
    images (seeded) aside from everything: no pre-training, classifier or calibration sees them."""
    device = pick_device()
    s = settings or settings_of(trial)
    data = source.load(trial.dataset)
    classes = in_distribution(trial.normal_class, s.in_classes, data.num_classes)
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    train_mask = remap[data.train_labels] >= 0
    train_images, train_labels = data.train_images[train_mask], remap[data.train_labels[train_mask]]
    test_mask = remap[data.test_labels] >= 0
    held = held_labels = None
    if holdout > 0:
        if holdout >= len(train_labels) // 2:
            raise ValueError(f"a holdout of {holdout} training images leaves too few of {len(train_labels)} "
                             "to train on")
        order = torch.randperm(len(train_labels), generator=generator("cpu", "holdout", trial.dataset, classes,
                                                                      trial.seed))
        held, held_labels = train_images[order[:holdout]], data.train_labels[train_mask][order[:holdout]]
        train_images, train_labels = train_images[order[holdout:]], train_labels[order[holdout:]]

    detector: CADet = build_method(trial, device)
    # The supervised path holds the calibration images out of the classifier's training, as CADet.fit
    # holds them out of pre-training; the same split for both trainings.
    base = (trial.dataset, classes, trial.seed)
    n1, n2 = calibration_sizes(len(train_labels), detector.config)
    order = torch.randperm(len(train_labels), generator=generator("cpu", "calibration", *base))
    val1, val2, fit_idx = order[:n1], order[n1:n1 + n2], order[n1 + n2:]

    summary: dict = {}
    clf = None
    if need_classifier or s.training == "supervised":
        clf, info = train_classifier(train_images[fit_idx], train_labels[fit_idx], len(classes), s,
                                     stable_seed("classifier", *base), device)
        summary.update(info)
        summary["clf_test_accuracy"] = float(
            (predict(clf, to_float(data.test_images[test_mask].to(device))).cpu()
             == remap[data.test_labels[test_mask]]).float().mean())
    t0 = time.perf_counter()
    if s.training == "contrastive":
        fitted = detector.fit(TrainSet(train_images, torch.zeros(len(train_labels), dtype=torch.int8)))
        summary.update({k: v for k, v in fitted.items() if isinstance(v, (int, float))})
    else:
        detector.use_encoder(clf.encoder)
        summary.update(detector.calibrate(train_images[val1].to(device), train_images[val2].to(device)))
        summary.update(epochs=s.clf_epochs, final_loss=summary["clf_final_loss"], world_size=world()[1])
    summary["train_seconds"] = time.perf_counter() - t0 + summary.get("clf_seconds", 0.0)
    return Setup(data, classes, s, device, detector, clf, summary, data.test_images[test_mask],
                 remap[data.test_labels[test_mask]], train_images, train_labels,
                 {"val1": val1, "val2": val2, "fit": fit_idx}, held, held_labels)


def measured(setup: Setup, started: float, rows: list[dict], n_test: int) -> dict:
    """The trial's measured fields around its rows."""
    sm = setup.summary
    return {
        "rows": rows,
        "epochs": int(sm.get("epochs", 0)),
        "final_loss": float(sm.get("final_loss", float("nan"))),
        "train_seconds": float(sm["train_seconds"]),
        "trial_seconds": time.perf_counter() - started,
        "device": device_name(setup.device),
        "world_size": int(sm.get("world_size", world()[1])),
        "n_unlabeled": int(sm.get("n_pretrain", 0)) or None,
        "n_val": int(sm.get("n_val1", 0) + sm.get("n_val2", 0)) or None,
        "n_test": n_test,
    }


def summary_extra(setup: Setup) -> dict:
    keep = ("gamma", "n_val1", "n_val2", "n_pretrain", "clf_test_accuracy", "pretrain_images_per_second")
    return {"training": setup.s.training, "in_classes": setup.classes,
            **{k: setup.summary[k] for k in keep if k in setup.summary}}
