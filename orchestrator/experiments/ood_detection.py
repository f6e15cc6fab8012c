"""ood_detection: CADet Sec. 5.1, Table 3 (unknown-class detection from single images) and Figure 2 (AUROC
against the number of transformations). ../shared/papers/004_fea3bd5cd4f38a35.txt.

The paper: ImageNet in distribution, ResNet-50; OOD = iNaturalist (plants) and ImageNet-O. Ours, on data this
machine has: the in-distribution classes are `in_classes` classes of the trial's dataset (c and the ones after
it: CIFAR-10 classes 0-5 in the small and paper profiles, digits 0-4 in quick), used for pre-training, the
classifier and calibration; near OOD = the dataset's other classes (`unknown`), far OOD = the MNIST test set
(`mnist`, resized and turned RGB) and any set the user names with --test-datasets (an ImageFolder tree, or a
set orchestrator/data/datasets.load_shift_images reads: imagenet-o, inaturalist, cifar10.1, images:/path). A set
this machine lacks, and `unknown` when every class is in distribution, is named in every row's
`extra.skipped_shifts`, never dropped silently.

One trial per `training` (the scenario axis; the paper's "Training" column):
- contrastive: CADet pre-trained here (SimCLR, methods/cadet.py), calibrated (Algorithm 2), scored by -score_C.
- supervised: a classifier trained on the same in-distribution classes with the repo's one trainer
  (cadet_setup.train_classifier, methods/trainer.py), calibration images held out of it as CADet holds them out
  of pre-training; CADet with its penultimate features as the similarity; and the paper's post-hoc baselines on
  that classifier, from pytorch-ood: MSP, Energy, ODIN, MaxLogit, KL matching, ReAct, Mahalanobis, ViM, and
  Residual (ViM's residual norm alone, Wang et al. 2022; computed from pytorch-ood's fitted ViM subspace). The
  baselines that fit anything (KL matching, ReAct, Mahalanobis, ViM / Residual) fit on the classifier's own
  training images (at most `baseline_fit_max`), as their papers do.
Rows: one per detector x OOD set, `variant` "<detector> + <training>", `test_dataset` the set ("unknown classes
6-9", "mnist", ...), `auroc_pooled` the AUROC of in-distribution test images (negatives) against that set;
`extra`: the set's role (near / far), FPR at 95 % TPR, and for CADet the false positive rate of Eq. (8)'s
p-values at alpha on the in-distribution test images (`fpr_at_alpha`), the detection rate at alpha, and Table 5's
means and variances of m_in and m_out on the clean test images (`clean`) and on the set (`ood_moments`).

Figure 2: `n_trs_curve` (the cadet-transforms scenario) scores CADet again with each listed number of
transformations, recalibrated (gamma and the X_val^(2) scores depend on it) on the same network: rows
"CADet n_trs=k + <training>". One pre-training serves every point of the curve: the network does not depend
on n_trs, only the test does (the trial's own n_trs is the Table 3 row).

Measured, quick profile (digits 0-4 in distribution, 8x8, the profiles' default epochs), seeds 0-2, AUROC (%):
near OOD (digits 5-9) CADet + contrastive 78.0 +- 1.8, CADet + supervised 36.7 +- 9.0, the baselines 94.4
(Residual) to 98.1 (Mahalanobis), all softmax ones 97.3-97.5; "far" OOD (MNIST test digits shrunk to 8x8)
CADet + contrastive 39.0 +- 17.4, + supervised 11.3 +- 6.2, baselines 96.8-98.3. On digits MNIST is no far OOD:
the same ten digits, smoother after the resize, so CADet's views agree MORE on them than on sklearn's digits
(an AUROC under 50 %: CADet scores them as more typical), while a classifier is unsure of their classes. CADet's
p-values flagged 3.3-9.4 % of the clean test digits at alpha = .05. 8-12 s a trial on one shared thread.

Choices (the paper is silent): ODIN at pytorch-ood's defaults (T = 1000, eps = 0.0014 in [0, 1] pixel units;
ODIN's tuning needs OOD data, which the paper's setting forbids); ReAct at its paper's 90th percentile with the
energy score; ViM's principal dimension `vim_dim` (0 = half the feature size; ViM uses 1,000 of 2,048).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from methods.augment import normalize, to_float
from methods.cadet import CADet
from orchestrator.data.datasets import DatasetError, DataSource, load_shift_images
from orchestrator.experiments.cadet_setup import (
    SETTINGS,
    Settings,
    Setup,
    add_shifts,
    auroc,
    generator,
    json_safe,
    measured,
    prepare,
    settings_of,
    summary_extra,
    unknown_classes,
)
from orchestrator.experiments.kind import Kind
from orchestrator.grid.trial import Trial

BASELINES = ("MSP", "Energy", "ODIN", "MaxLogit", "KL Matching", "ReAct", "Mahalanobis", "Residual", "ViM")


@dataclass(frozen=True)
class OODSettings(Settings):
    """Settings (cadet_setup.py) plus Table 3's own; `shifts` are the OOD sets: "unknown" (near) or set names."""

    baselines: tuple[str, ...] = BASELINES
    """post-hoc detectors on the classifier (supervised trials), from pytorch-ood"""
    baseline_fit_max: int = 10_000
    """classifier training images the fitted baselines see at most (a seeded subset)"""
    vim_dim: int = 0
    """ViM's principal subspace dimension; 0 = half the feature size"""
    n_trs_curve: tuple[int, ...] = ()
    """Figure 2: CADet also scored with each of these numbers of transformations"""
    max_test: int = 0
    """test images per set at most (a seeded subset; 0 = all): the CPU profile's cost is n_trs forward passes
    per image"""


def _ood(**over) -> OODSettings:
    return OODSettings(**{"shifts": ("unknown", "mnist"), "attacks": (), **over})


_CLASSIFIER = ("clf_net", "clf_epochs", "clf_batch_size", "clf_optimizer", "clf_lr", "clf_weight_decay",
               "clf_crop_scale_min")
OOD_SETTINGS = {
    "quick": _ood(in_classes=5),
    # CIFAR-10 classes 0-5 in distribution (the usual 6 known / 4 unknown open-set split), the CADet profiles'
    # classifiers; small: at most 2,000 test images per set (n_trs = 10 views each on a CPU).
    "small": _ood(in_classes=6, max_test=2000, **{k: getattr(SETTINGS["small"], k) for k in _CLASSIFIER}),
    "paper": _ood(in_classes=6, **{k: getattr(SETTINGS["paper"], k) for k in _CLASSIFIER}),
}
CURVE = {"quick": (2, 5, 10, 20), "small": (2, 5, 10, 20), "paper": (2, 5, 10, 20, 50)}
"""Figure 2's numbers of transformations per profile (the paper's default is 50; small caps at 20 for CPU time)"""


def profile_settings(profile: str) -> dict:
    return json_safe(dataclasses.asdict(OOD_SETTINGS.get(profile, _ood())))


def curve_settings(profile: str) -> dict:
    return {**profile_settings(profile), "n_trs_curve": list(CURVE.get(profile, CURVE["quick"]))}


# --------------------------------------------------------------------------------------------------
# The post-hoc baselines (pytorch-ood) on the classifier.
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def classifier_features(clf, images: torch.Tensor, device, chunk: int = 1024) -> torch.Tensor:
    """uint8 images -> the classifier's penultimate features (N, D), float32 on the device."""
    return torch.cat([clf.encoder(normalize(to_float(x.to(device)))).float() for x in images.split(chunk)])


class Baselines:
    """pytorch-ood's detectors on one classifier, fitted on its training images; `scores` -> higher = more OOD."""

    def __init__(self, clf, names: tuple[str, ...], fit_images: torch.Tensor, fit_labels: torch.Tensor,
                 vim_dim: int, device):
        from pytorch_ood.detector import ODIN, KLMatching, Mahalanobis, ReAct, ViM

        unknown = sorted(set(names) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; known: {', '.join(BASELINES)}")
        self.clf, self.names, self.device = clf, names, device
        z = classifier_features(clf, fit_images, device)
        y = fit_labels.to(device)
        logits = clf.fc(z)
        d = vim_dim or z.shape[1] // 2
        self.kl = KLMatching(None).fit_logits(logits, y)
        self.react = ReAct(None, clf.fc, percentile=0.9).fit_feature_maps(z.cpu(), y.cpu())
        self.maha = Mahalanobis(None).fit_features(z, y)
        self.vim = ViM(None, d=d, w=clf.fc.weight, b=clf.fc.bias).fit_features(z, y)
        self.odin = ODIN(clf, eps=0.0014, temperature=1000.0)
        self.fitted = {"vim_dim": d, "react_threshold": float(self.react.threshold), "vim_alpha": self.vim.alpha,
                       "baseline_fit_images": int(len(y))}

    @torch.no_grad()
    def _from_features(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        from pytorch_ood.detector import EnergyBased, MaxLogit, MaxSoftmax

        logits = self.clf.fc(z)
        residual = ((z - self.vim.u) @ self.vim.principal_subspace).norm(dim=-1)
        return {"MSP": MaxSoftmax.score(logits), "Energy": EnergyBased.score(logits),
                "MaxLogit": MaxLogit.score(logits), "KL Matching": self.kl.predict_logits(logits),
                "ReAct": self.react.predict_feature_maps(z), "Mahalanobis": self.maha.predict_features(z),
                "ViM": self.vim.predict_features(z), "Residual": residual}

    def scores(self, images: torch.Tensor, chunk: int = 512) -> dict[str, np.ndarray]:
        out: dict[str, list] = {n: [] for n in self.names}
        for p in self.clf.parameters():
            p.requires_grad_(False)
        for x in images.split(chunk):
            x01 = to_float(x.to(self.device))
            z = classifier_features(self.clf, x, self.device)
            by_name = self._from_features(z)
            if "ODIN" in self.names:
                by_name["ODIN"] = self.odin.predict(x01)  # needs the input's gradient: no no_grad here
            for n in self.names:
                out[n].append(by_name[n].detach().double().cpu())
        return {n: torch.cat(v).numpy() for n, v in out.items()}


def fpr_at_tpr(negatives: np.ndarray, positives: np.ndarray, tpr: float = 0.95) -> float:
    """The share of in-distribution images flagged at the threshold that flags `tpr` of the OOD images.

    >>> fpr_at_tpr(np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.5, 3.5, 4.0, 5.0]))
    0.25
    """
    threshold = np.quantile(positives, 1 - tpr, method="lower")
    return float((negatives >= threshold).mean())


# --------------------------------------------------------------------------------------------------
# One trial.
# --------------------------------------------------------------------------------------------------


def ood_sets(trial: Trial, source: DataSource, setup: Setup, s: OODSettings) -> tuple[dict, list[str]]:
    """-> ({label: (uint8 images at the dataset's shape, "near" | "far")}, skipped shifts with the reason)."""
    data = setup.data
    sets, skipped = {}, []
    for shift in s.shifts:
        if shift == "unknown":
            if (unknown := unknown_classes(setup)) is None:
                skipped.append("unknown: every class is in-distribution")
                continue
            sets[unknown[0]] = (unknown[1], "near")
        elif shift in ("pgd", "cw", "fgsm"):
            raise ValueError(f"shift '{shift}': attacks are the adversarial scenario's, not Table 3's")
        else:
            try:
                images = load_shift_images(shift, source, data.image_shape)
            except DatasetError as exc:  # a set this machine does not have: named in every row
                skipped.append(str(exc) if str(exc).startswith(shift) else f"{shift}: {exc}")
                continue
            label = shift.removeprefix("imagefolder:").removeprefix("images:").rstrip("/").rsplit("/", 1)[-1]
            sets[label] = (images, "far")
    return sets, skipped


def subset(images: torch.Tensor, most: int, *parts) -> torch.Tensor:
    """At most `most` images (a seeded subset, same for every detector); 0 = all."""
    if most <= 0 or len(images) <= most:
        return images
    return images[torch.randperm(len(images), generator=generator("cpu", "subset", *parts))[:most]]


def cadet_detectors(det: CADet, setup: Setup, s: OODSettings) -> dict[str, CADet]:
    """The trial's CADet ("CADet"), and for Figure 2 a copy per n_trs of the curve, recalibrated on the same
    X_val^(1), X_val^(2) and network."""
    out = {"CADet": det}
    val1 = setup.train_in[setup.parts["val1"]].to(setup.device)
    val2 = setup.train_in[setup.parts["val2"]].to(setup.device)
    for k in s.n_trs_curve:
        other = copy.copy(det)
        other.config = dataclasses.replace(det.config, n_trs=int(k))
        other.calibrate(val1, val2)
        out[f"CADet n_trs={k}"] = other
    return out


def run(trial: Trial, source: DataSource, on_epoch: Callable | None = None) -> dict:
    """One trial: rows (detector x OOD set)."""
    started = time.perf_counter()
    s = settings_of(trial, OODSettings)
    setup = prepare(trial, source, need_classifier=s.training == "supervised", settings=s)
    sets, skipped = ood_sets(trial, source, setup, s)
    if not sets:
        raise ValueError(f"no OOD set to test: {'; '.join(skipped) or 'none given'}")
    base = (trial.dataset, setup.classes, trial.seed)
    test_in = subset(setup.test_in, s.max_test, "in", *base)
    sets = {label: (subset(x, s.max_test, label, *base), role) for label, (x, role) in sets.items()}

    # Scores, higher = more OOD: CADet's -score_C (and its p-values), the baselines' outlier scores.
    scores: dict[str, dict[str, np.ndarray]] = {}  # detector -> {"in" | set label: scores}
    p_values: dict[str, dict[str, np.ndarray]] = {}
    moments: dict[str, dict[str, dict]] = {}  # CADet -> {"in" | set label: Table 5's means and variances}
    for name, det in cadet_detectors(setup.detector, setup, s).items():
        for label, x in [("in", test_in), *((lb, x) for lb, (x, _) in sets.items())]:
            st = det.statistics(x)
            scores.setdefault(name, {})[label] = (-st["score"]).double().cpu().numpy()
            p_values.setdefault(name, {})[label] = st["p_value"].cpu().numpy()
            moments.setdefault(name, {})[label] = {f"{k}_{f}": float(getattr(st[k].double(), f)())
                                                   for k in ("m_in", "m_out") for f in ("mean", "var")}
    extra_fit = {}
    if s.training == "supervised" and s.baselines:
        fit = setup.parts["fit"]
        fit = fit[torch.randperm(len(fit), generator=generator("cpu", "baseline-fit", *base))[: s.baseline_fit_max]]
        baselines = Baselines(setup.clf, s.baselines, setup.train_in[fit], setup.train_in_labels[fit], s.vim_dim,
                              setup.device)
        extra_fit = baselines.fitted
        for label, x in [("in", test_in), *((lb, x) for lb, (x, _) in sets.items())]:
            for name, v in baselines.scores(x).items():
                scores.setdefault(name, {})[label] = v

    rows = []
    for name, by_set in scores.items():
        for label, (_, role) in sets.items():
            neg, pos = by_set["in"], by_set[label]
            extra = {"ood": role, "fpr_at_95_tpr": fpr_at_tpr(neg, pos), "n_in": len(neg), "n_ood": len(pos),
                     "skipped_shifts": skipped, **summary_extra(setup)}
            fpr = None
            if name in p_values:
                fpr = float((p_values[name]["in"] <= s.alpha).mean())
                extra.update(alpha=s.alpha, tpr_at_alpha=float((p_values[name][label] <= s.alpha).mean()),
                             clean=moments[name]["in"], ood_moments=moments[name][label])
                if name.startswith("CADet n_trs="):
                    extra["n_trs"] = int(name.split("=")[1])
            else:
                extra.update(extra_fit)
            rows.append({"test_dataset": label, "variant": f"{name} + {s.training}", "auroc_pooled": auroc(neg, pos),
                         "fpr_at_alpha": fpr, "n_test": len(neg) + len(pos), "extra": extra})
    return measured(setup, started, rows, n_test=len(test_in) + sum(len(x) for x, _ in sets.values()))


KIND = Kind(run=run, class_grid=True, settings=profile_settings, with_datasets=add_shifts)
CURVE_KIND = Kind(run=run, class_grid=True, settings=curve_settings, with_datasets=add_shifts)
