"""cross_dataset: HSCL Scenario-3 (Table 4). All of the trial's dataset is normal; another dataset
(`settings["labeled"]`) supplies the labeled anomalies at gamma_l of the training set; each dataset in
`settings["test"]` is one set of test anomalies against the normal dataset's test split, one result row
each. Images of another shape are converted to the normal one (orchestrator/data/datasets.to_shape)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from methods.base import TrainSet
from orchestrator.data.datasets import DataSource, to_shape
from orchestrator.data.splits import SplitError, stable_seed
from orchestrator.experiments.fitting import build_method, fit_fields, fit_method, pick_device
from orchestrator.experiments.kind import Kind
from orchestrator.grid.trial import Trial


def _counts(trial: Trial, n_normal: int) -> tuple[int, int]:
    """(validation images, labeled anomalies): val_fraction of the normal training images are held out, and
    the labeled anomalies are gamma_l of what remains plus them."""
    n_val = int(round(trial.val_fraction * n_normal))
    n_known = int(round(trial.gamma_l / (1 - trial.gamma_l) * (n_normal - n_val)))
    return n_val, n_known


def check(trial: Trial, data: DataSource) -> None:
    """Before any work: every dataset exists and the labeled one holds enough training images."""
    for name in [trial.settings["labeled"], *trial.settings["test"]]:
        data.check(name)
    n_val, n_known = _counts(trial, len(data.load(trial.dataset).train_labels))
    have = len(data.load(trial.settings["labeled"]).train_labels)
    if n_known + n_val > have:
        raise SplitError(f"gamma_l={trial.gamma_l} needs {n_known + n_val} images of {trial.settings['labeled']} "
                         f"but it has {have}: lower gamma_l or use a larger labeled dataset")


def run(trial: Trial, data: DataSource, on_epoch: Callable | None = None) -> dict:
    device = pick_device()
    started = time.perf_counter()
    normal = data.load(trial.dataset)
    labeled = data.load(trial.settings["labeled"])
    shape = normal.image_shape
    rng = np.random.default_rng(stable_seed("cross-split", trial.settings, trial.dataset, trial.gamma_l,
                                            trial.val_fraction, trial.seed))
    # Validation: val_fraction of the normal training images against as many unused labeled-dataset images.
    order = rng.permutation(len(normal.train_labels))
    n_val, n_known = _counts(trial, len(order))
    val_idx, train_idx = order[:n_val], order[n_val:]
    other = rng.permutation(len(labeled.train_labels))
    check(trial, data)
    known = to_shape(labeled.train_images[torch.from_numpy(other[:n_known]).long()], shape)
    if trial.labeled_anomalies == "dropped":  # a label-free method trains on the normal images only
        known = known[:0]
    train = TrainSet(images=torch.cat([normal.train_images[torch.from_numpy(train_idx).long()], known]),
                     kind=torch.cat([torch.full((len(train_idx),), TrainSet.UNLABELED, dtype=torch.int8),
                                     torch.full((len(known),), TrainSet.ANOMALY, dtype=torch.int8)]))
    method = build_method(trial, device)
    summary, train_seconds = fit_method(method, train, on_epoch)

    t0 = time.perf_counter()
    normal_scores = method.score(normal.test_images)
    val_anomalies = to_shape(labeled.train_images[torch.from_numpy(other[n_known:n_known + n_val]).long()], shape)
    val_scores = method.score(torch.cat([normal.train_images[torch.from_numpy(val_idx).long()], val_anomalies]))
    rows = []
    for name in trial.settings["test"]:
        scores = method.score(to_shape(data.load(name).test_images, shape))
        is_anomaly = np.r_[np.zeros(len(normal_scores)), np.ones(len(scores))]
        rows.append({"auroc_pooled": float(roc_auc_score(is_anomaly, np.r_[normal_scores, scores])),
                     "n_test": len(is_anomaly), "test_dataset": name})
    return {
        "rows": rows,  # one result row per test dataset
        "auroc_val": float(roc_auc_score(np.r_[np.zeros(n_val), np.ones(n_val)], val_scores)) if n_val else None,
        "n_unlabeled": len(train_idx), "n_pollution": 0, "n_labeled_normal": 0, "n_labeled_anomaly": n_known,
        "n_val": 2 * n_val, "n_train": len(train.kind), **fit_fields(summary, train_seconds, device),
        "score_seconds": time.perf_counter() - t0, "trial_seconds": time.perf_counter() - started,
    }


def with_datasets(settings: dict, labeled: str | None, test: list[str] | None) -> dict:
    """--labeled-dataset and --test-datasets replace the scenario's."""
    return {**settings, **({"labeled": labeled} if labeled else {}), **({"test": list(test)} if test else {})}


KIND = Kind(run=run, class_grid=False, check=check, with_datasets=with_datasets)
