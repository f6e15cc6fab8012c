"""one_class: the papers' main experiment (HSCL Tables 1-3 and 5, MIL-convex Tables 1-3). One class of a
dataset is normal; the training set is the DeepSAD split of one grid point (orchestrator/data/splits.py:
unlabeled normals plus pollution at gamma_p, labeled anomalies of the known class at gamma_l, labeled
normals at gamma_l_normal); the method fits it, scores the whole test split, and the row holds the AUROCs
(orchestrator/data/metrics.py) and a validation AUROC from held-out training images."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from methods.base import TrainSet
from orchestrator.data.datasets import DataSource
from orchestrator.data.metrics import test_aurocs
from orchestrator.data.splits import Split, make_split
from orchestrator.experiments.fitting import build_method, fit_choices, fit_fields, fit_method, pick_device
from orchestrator.experiments.kind import Kind
from orchestrator.grid.trial import Trial


def split_of(trial: Trial, data: DataSource) -> Split:
    dataset = data.load(trial.dataset)
    return make_split(dataset.train_labels.numpy(), trial.split_spec(), dataset.num_classes)


def training_set(trial: Trial, data: DataSource) -> tuple[TrainSet, Split]:
    """The grid point's training images with their labels (unlabeled, labeled normal, labeled anomaly).

    A label-free method's training set follows ``trial.labeled_anomalies``: "dropped" leaves the labeled
    anomalies out (the papers' unsupervised columns: gamma_p = 0 is the clean one-class result), "unlabeled"
    keeps them in as pollution (the method ignores their labels)."""
    split = split_of(trial, data)
    dropped = trial.labeled_anomalies == "dropped"
    parts = [split.unlabeled, split.labeled_normal, split.labeled_anomaly[:0] if dropped else split.labeled_anomaly]
    index = torch.from_numpy(np.concatenate(parts)).long()
    kind = torch.cat([torch.full((len(p),), k, dtype=torch.int8)
                      for p, k in zip(parts, (TrainSet.UNLABELED, TrainSet.NORMAL, TrainSet.ANOMALY), strict=True)])
    return TrainSet(images=data.load(trial.dataset).train_images[index], kind=kind), split


_CHECKED: set = set()


def check(trial: Trial, data: DataSource) -> None:
    """The grid point's split must be possible (each distinct split is solved once)."""
    point = (trial.dataset, trial.split_spec())
    if point not in _CHECKED:
        split_of(trial, data)
        _CHECKED.add(point)


def run(trial: Trial, data: DataSource, on_epoch: Callable | None = None, *, evaluate_test: bool = True,
        val_every: int = 0) -> dict:
    """Train and evaluate one grid point -> the measured part of its row.

    ``evaluate_test=False`` (searches) never touches the test split: only the validation part of the
    training data is scored. ``val_every=k`` adds the validation AUROC to the metrics passed to
    ``on_epoch`` every k epochs (for early stopping), where the method can score mid-training.
    """
    device = pick_device()
    started = time.perf_counter()
    dataset = data.load(trial.dataset)
    train, split = training_set(trial, data)

    # Validation: held-out training images of every class, never the test split.
    val_images = dataset.train_images[torch.from_numpy(np.concatenate([split.val_normal, split.val_anomaly])).long()]
    val_is_anomaly = np.r_[np.zeros(len(split.val_normal)), np.ones(len(split.val_anomaly))]
    has_val = len(split.val_normal) > 0 and len(split.val_anomaly) > 0
    method = build_method(trial, device)

    def val_auroc() -> float:
        return float(roc_auc_score(val_is_anomaly, method.score(val_images)))

    epoch_callback = on_epoch
    if on_epoch is not None and val_every > 0 and has_val:
        def epoch_callback(epoch, metrics):
            if epoch % val_every == 0:
                try:
                    metrics = {**metrics, "auroc_val": val_auroc()}
                except (RuntimeError, AttributeError):  # this method can only score after fit()
                    pass
            on_epoch(epoch, metrics)

    summary, train_seconds = fit_method(method, train, epoch_callback)
    row = {"auroc_val": val_auroc() if has_val else None, "score_seconds": 0.0}
    if fit_choices(summary):
        row["extra"] = fit_choices(summary)
    if evaluate_test:
        t0 = time.perf_counter()
        test_scores = method.score(dataset.test_images)
        row["score_seconds"] = time.perf_counter() - t0
        row.update(test_aurocs(test_scores, dataset.test_labels.numpy(), trial.normal_class, trial.anomaly_class))
        row["n_test"] = len(test_scores)
        row["test_scores"] = np.asarray(test_scores, dtype=np.float32)  # kept per sample in the score store
    row.update(split.counts(), n_train=len(train.kind))
    row.update(fit_fields(summary, train_seconds, device), trial_seconds=time.perf_counter() - started)
    return row


KIND = Kind(run=run, check=check)
