"""Training / validation / test splits for one grid point, following the DeepSAD protocol.

For normal class ``n`` and known anomaly class ``a`` (Ruff et al. 2019, followed by HSCL Sec. 4.1):

- the *unlabeled* set holds training images of class ``n`` plus pollution anomalies drawn from all
  other classes, so that anomalies are a fraction ``gamma_p`` of the unlabeled set;
- the *labeled anomalies* come from class ``a`` only and are a fraction ``gamma_l`` of the whole
  training set; optional *labeled normals* (Scenario-1) are a fraction ``gamma_l_normal`` of it;
- a *validation* part (``val_fraction`` of every class, default 5 %) is held out first, for model
  selection and searches: class ``n`` against all others;
- the *test* set is the dataset's whole test split: class ``n`` against all others. It needs no
  indices here and is never used for choices.

Everything is a pure function of the class labels and a seed. The seed is derived from the data
part of the grid point only (never the method), so every method sees the same split.

Worked example (CIFAR-10, 5,000 training images per class, n=0, a=1, gamma_p=0.10, gamma_l=0.05):
250 images of each class go to validation; the unlabeled set holds the other 4,750 planes plus
528 pollution anomalies (528 / 5,278 = 0.100); 278 cars are labeled anomalies (278 / 5,556 = 0.050).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np


class SplitError(ValueError):
    """A grid point the data cannot supply; the message is one line saying why and what to change."""


def stable_seed(*parts) -> int:
    """A 31-bit seed from any JSON-able parts, the same on every machine and Python version."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class SplitSpec:
    normal_class: int
    anomaly_class: int | None  # None: no known anomaly class (gamma_l must then be 0)
    gamma_p: float = 0.0
    gamma_l: float = 0.0
    gamma_l_normal: float = 0.0
    val_fraction: float = 0.05
    seed: int = 0


@dataclass
class Split:
    """Indices into the dataset's training split (the test split is used whole)."""

    unlabeled: np.ndarray  # class n (minus labeled normals) plus pollution anomalies
    labeled_normal: np.ndarray
    labeled_anomaly: np.ndarray
    val_normal: np.ndarray
    val_anomaly: np.ndarray
    n_pollution: int

    def counts(self) -> dict[str, int]:
        return {
            "n_unlabeled": len(self.unlabeled),
            "n_pollution": self.n_pollution,
            "n_labeled_normal": len(self.labeled_normal),
            "n_labeled_anomaly": len(self.labeled_anomaly),
            "n_val": len(self.val_normal) + len(self.val_anomaly),
        }


def _check_ratios(spec: SplitSpec, num_classes: int) -> None:
    def bad(msg: str):
        raise SplitError(msg)

    if not 0 <= spec.normal_class < num_classes:
        bad(f"normal class {spec.normal_class} is out of range: the dataset has classes 0..{num_classes - 1}")
    if not 0.0 <= spec.gamma_p < 1.0:
        bad(f"gamma_p={spec.gamma_p} is impossible: the pollution ratio must be in [0, 1)")
    if not 0.0 <= spec.gamma_l < 1.0 or not 0.0 <= spec.gamma_l_normal < 1.0:
        bad(f"gamma_l={spec.gamma_l}, gamma_l_normal={spec.gamma_l_normal}: labeled ratios must be in [0, 1)")
    if spec.gamma_l + spec.gamma_l_normal >= 1.0:
        bad(f"gamma_l + gamma_l_normal = {spec.gamma_l + spec.gamma_l_normal}: together they must stay below 1")
    if not 0.0 <= spec.val_fraction < 0.5:
        bad(f"val_fraction={spec.val_fraction} is impossible: use a value in [0, 0.5)")
    if spec.gamma_l > 0:
        if spec.anomaly_class is None:
            bad(f"gamma_l={spec.gamma_l} needs a known anomaly class; set anomaly_class or gamma_l=0")
        if not 0 <= spec.anomaly_class < num_classes:
            bad(f"anomaly class {spec.anomaly_class} is out of range: classes are 0..{num_classes - 1}")
        if spec.anomaly_class == spec.normal_class:
            bad(f"anomaly class {spec.anomaly_class} equals the normal class: pick another class")


def deepsad_counts(n_normal: int, gamma_p: float, gamma_l: float, gamma_l_normal: float) -> dict[str, int]:
    """How many images of each kind, as DeepSAD's ``create_semisupervised_setting`` solves it.

    Unknowns: known normals kn, unlabeled normals un, unlabeled (pollution) anomalies uo, known
    anomalies ko, with T = kn + un + uo + ko and
        kn + un = n_normal        (all normal training images are used)
        kn = gamma_l_normal * T,  ko = gamma_l * T,  uo = gamma_p * (un + uo).
    """
    a = np.array(
        [
            [1, 1, 0, 0],
            [1 - gamma_l_normal, -gamma_l_normal, -gamma_l_normal, -gamma_l_normal],
            [-gamma_l, -gamma_l, -gamma_l, 1 - gamma_l],
            [0, -gamma_p, 1 - gamma_p, 0],
        ]
    )
    kn, un, uo, ko = np.linalg.solve(a, np.array([n_normal, 0, 0, 0], dtype=float))
    # Rounding to the nearest image keeps the realised ratios closest to the requested ones.
    return {
        "labeled_normal": int(round(kn)),
        "unlabeled_normal": n_normal - int(round(kn)),
        "pollution": int(round(uo)),
        "labeled_anomaly": int(round(ko)),
    }


def _holdout(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class random hold-out; depends on the seed and fraction only, so gamma values share it."""
    rng = np.random.default_rng(stable_seed("holdout", val_fraction, seed))
    val_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(val_fraction * len(idx)))
        val_mask[rng.permutation(idx)[:n_val]] = True
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def make_split(train_labels, spec: SplitSpec, num_classes: int | None = None) -> Split:
    """Indices of every part for one grid point; raises ``SplitError`` if the data cannot supply it."""
    labels = np.asarray(train_labels)
    num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
    _check_ratios(spec, num_classes)

    pool, val = _holdout(labels, spec.val_fraction, spec.seed)
    rng = np.random.default_rng(stable_seed("split", asdict(spec)))

    normal_pool = rng.permutation(pool[labels[pool] == spec.normal_class])
    if len(normal_pool) == 0:
        raise SplitError(f"class {spec.normal_class} has no training images left after the validation hold-out")
    want = deepsad_counts(len(normal_pool), spec.gamma_p, spec.gamma_l, spec.gamma_l_normal)

    labeled_anomaly = np.array([], dtype=np.int64)
    if want["labeled_anomaly"] > 0:
        known_pool = pool[labels[pool] == spec.anomaly_class]
        if want["labeled_anomaly"] > len(known_pool):
            raise SplitError(
                f"gamma_l={spec.gamma_l} needs {want['labeled_anomaly']} labeled anomalies of class "
                f"{spec.anomaly_class} but the training data has {len(known_pool)}: lower gamma_l"
            )
        labeled_anomaly = rng.permutation(known_pool)[: want["labeled_anomaly"]]

    # Pollution: drawn uniformly from all other classes (the known class included, as in DeepSAD),
    # never reusing an image already chosen as a labeled anomaly.
    other_pool = pool[(labels[pool] != spec.normal_class) & ~np.isin(pool, labeled_anomaly)]
    if want["pollution"] > len(other_pool):
        raise SplitError(
            f"gamma_p={spec.gamma_p} needs {want['pollution']} pollution anomalies but only "
            f"{len(other_pool)} other-class training images exist: lower gamma_p"
        )
    pollution = rng.permutation(other_pool)[: want["pollution"]]

    n_kn = want["labeled_normal"]
    return Split(
        unlabeled=np.sort(np.concatenate([normal_pool[n_kn:], pollution])),
        labeled_normal=np.sort(normal_pool[:n_kn]),
        labeled_anomaly=np.sort(labeled_anomaly),
        val_normal=val[labels[val] == spec.normal_class],
        val_anomaly=val[labels[val] != spec.normal_class],
        n_pollution=len(pollution),
    )
