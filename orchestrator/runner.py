"""One trial: split the data, train the method, score the test split, write one result row.

Three layers, each usable alone:

- ``run_trial(trial)``: plain Python, no Ray. Debug a grid point with it directly.
- ``train_loop(config)``: the function a Ray Train ``TorchTrainer`` runs on each worker (in the
  trial's own process with ``num_workers=0``, or in DDP worker actors with ``--workers N``).
- ``tune_trial(config)``: the Ray Tune function trainable. It builds and fits the
  ``TorchTrainer`` (Ray 2.60 Train V2 wraps Train in Tune this way) and writes the row to the
  store, ``ok`` or ``failed``, so a finished trial is saved the moment it ends.
"""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
import time
import traceback
from datetime import datetime, timezone

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from methods.base import TrainSet
from methods.registry import get_method
from orchestrator.data.datasets import load_dataset
from orchestrator.metrics import test_aurocs
from orchestrator.grid.scenarios import trial_key
from orchestrator.data.splits import SplitError, SplitSpec, make_split, stable_seed
from orchestrator.store import ResultStore, ScoreStore


def _now() -> datetime:
    return datetime.now(timezone.utc)


def pick_device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs (none when it asked for none).
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def split_for(trial: dict, train_labels, num_classes: int):
    spec = SplitSpec(
        normal_class=trial["normal_class"],
        anomaly_class=trial["anomaly_class"],
        gamma_p=trial["gamma_p"],
        gamma_l=trial["gamma_l"],
        gamma_l_normal=trial["gamma_l_normal"],
        val_fraction=trial["val_fraction"],
        seed=trial["seed"],
    )
    return make_split(train_labels, spec, num_classes)


def run_trial(trial: dict, *, data_root: str | None = None, download: bool = False,
              device: torch.device | None = None, on_epoch=None, evaluate_test: bool = True,
              val_every: int = 0) -> dict:
    """Train and evaluate one grid point; returns the measured part of a result row.

    ``evaluate_test=False`` (searches) never touches the test split: only the validation part
    of the training data is scored. ``val_every=k`` adds the validation AUROC to the metrics
    passed to ``on_epoch`` every k epochs (for early stopping), where the method can score
    mid-training.
    """
    device = device or pick_device()
    started = time.perf_counter()
    data = load_dataset(trial["dataset"], data_root, download)
    train_images, train_labels = data.train_images, data.train_labels.numpy()
    split = split_for(trial, train_labels, data.num_classes)

    parts = [split.unlabeled, split.labeled_normal, split.labeled_anomaly]
    index = torch.from_numpy(np.concatenate(parts)).long()
    kind = torch.cat([torch.full((len(p),), k, dtype=torch.int8) for p, k in zip(parts, (0, 1, -1), strict=True)])
    train = TrainSet(images=train_images[index], kind=kind)

    # Validation: held-out training images of every class, never the test split.
    val_index = torch.from_numpy(np.concatenate([split.val_normal, split.val_anomaly])).long()
    val_images = train_images[val_index]
    val_is_anomaly = np.r_[np.zeros(len(split.val_normal)), np.ones(len(split.val_anomaly))]
    has_val = len(split.val_normal) > 0 and len(split.val_anomaly) > 0

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

    cls = get_method(trial["method"])
    method = cls(cls.Config(**trial["params"]), device, training_seed(trial))
    t0 = time.perf_counter()
    summary = method.fit(train, on_epoch=epoch_callback)
    train_seconds = time.perf_counter() - t0
    if summary.get("epochs", 0) > 0 and not np.isfinite(summary.get("final_loss", 0.0)):
        raise FloatingPointError(f"training diverged: final loss {summary['final_loss']}")

    row = {"auroc_val": val_auroc() if has_val else None}
    score_seconds = 0.0
    if evaluate_test:
        t0 = time.perf_counter()
        test_scores = method.score(data.test_images)
        score_seconds = time.perf_counter() - t0
        row.update(test_aurocs(test_scores, data.test_labels.numpy(), trial["normal_class"], trial["anomaly_class"]))
        row["n_test"] = len(test_scores)
        row["test_scores"] = np.asarray(test_scores, dtype=np.float32)  # kept per sample in the score store

    row.update(split.counts())
    row.update(
        epochs=int(summary.get("epochs", 0)),
        world_size=int(summary.get("world_size", 1)),
        final_loss=float(summary.get("final_loss", float("nan"))),
        train_seconds=train_seconds,
        score_seconds=score_seconds,
        trial_seconds=time.perf_counter() - started,
        device=device_name(device),
    )
    return row


def to_shape(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, *shape): gray <-> RGB, then an antialiased resize (Scenario-3)."""
    channels, height, width = shape
    out = []
    for chunk in images.split(4096):  # bounded memory for large test sets
        x = chunk.float()
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-2:] != (height, width):
            x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, *shape))


def run_cross_trial(trial: dict, *, data_root: str | None = None, download: bool = False,
                    device: torch.device | None = None) -> dict:
    """Scenario-3: all of one dataset normal, labeled anomalies from another, one AUROC per test dataset."""
    device = device or pick_device()
    started = time.perf_counter()
    normal = load_dataset(trial["dataset"], data_root, download)
    labeled = load_dataset(trial["cross"]["labeled"], data_root, download)
    shape = normal.image_shape
    seed = stable_seed("cross-split", trial["cross"], trial["dataset"], trial["gamma_l"], trial["val_fraction"],
                       trial["seed"])
    rng = np.random.default_rng(seed)
    # Validation: val_fraction of the normal training images against as many unused labeled-dataset images.
    order = rng.permutation(len(normal.train_labels))
    n_val = int(round(trial["val_fraction"] * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    n_known = int(round(trial["gamma_l"] / (1 - trial["gamma_l"]) * len(train_idx)))  # gamma_l of the training set
    other = rng.permutation(len(labeled.train_labels))
    if n_known + n_val > len(other):
        raise SplitError(f"gamma_l={trial['gamma_l']} needs {n_known + n_val} images of {trial['cross']['labeled']} "
                         f"but it has {len(other)}: lower gamma_l")
    known = to_shape(labeled.train_images[torch.from_numpy(other[:n_known]).long()], shape)
    train = TrainSet(images=torch.cat([normal.train_images[torch.from_numpy(train_idx).long()], known]),
                     kind=torch.cat([torch.zeros(len(train_idx), dtype=torch.int8),
                                     torch.full((n_known,), -1, dtype=torch.int8)]))

    cls = get_method(trial["method"])
    method = cls(cls.Config(**trial["params"]), device, training_seed(trial))
    t0 = time.perf_counter()
    summary = method.fit(train)
    train_seconds = time.perf_counter() - t0
    if summary.get("epochs", 0) > 0 and not np.isfinite(summary.get("final_loss", 0.0)):
        raise FloatingPointError(f"training diverged: final loss {summary['final_loss']}")

    t0 = time.perf_counter()
    normal_scores = method.score(normal.test_images)
    val_anomalies = to_shape(labeled.train_images[torch.from_numpy(other[n_known:n_known + n_val]).long()], shape)
    val_scores = method.score(torch.cat([normal.train_images[torch.from_numpy(val_idx).long()], val_anomalies]))
    per_test = {}
    for name in trial["cross"]["test"]:
        test = load_dataset(name, data_root, download)
        scores = method.score(to_shape(test.test_images, shape))
        is_anomaly = np.r_[np.zeros(len(normal_scores)), np.ones(len(scores))]
        per_test[name] = {"auroc_pooled": float(roc_auc_score(is_anomaly, np.r_[normal_scores, scores])),
                          "n_test": len(is_anomaly), "test_dataset": name}
    return {
        "rows": list(per_test.values()),  # one result row per test dataset
        "auroc_val": float(roc_auc_score(np.r_[np.zeros(n_val), np.ones(n_val)], val_scores)) if n_val else None,
        "n_unlabeled": len(train_idx), "n_pollution": 0, "n_labeled_normal": 0, "n_labeled_anomaly": n_known,
        "n_val": 2 * n_val, "epochs": int(summary.get("epochs", 0)), "world_size": int(summary.get("world_size", 1)),
        "final_loss": float(summary.get("final_loss", float("nan"))), "train_seconds": train_seconds,
        "score_seconds": time.perf_counter() - t0, "trial_seconds": time.perf_counter() - started,
        "device": device_name(device),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()}cores"


def training_seed(trial: dict) -> int:
    """The seed of a trial's initialisation and augmentations: from the grid point and replicate
    only, not from the method's parameters, so ablation variants and searched parameters start
    from the same weights and see the same batches (paired comparisons, less seed noise)."""
    point = {k: trial.get(k) for k in ("method", "dataset", "normal_class", "anomaly_class", "gamma_p",
                                       "gamma_l", "gamma_l_normal", "val_fraction", "seed", "cross", "axes")}
    return stable_seed("train", point)


def base_row(trial: dict, ctx: dict) -> dict:
    """Everything a row says about what was run (the rest is what was measured)."""
    return {
        **{k: trial[k] for k in ("profile", "scenario", "method", "variant", "dataset", "normal_class",
                                 "anomaly_class", "gamma_l", "gamma_p", "gamma_l_normal", "val_fraction", "seed",
                                 "params")},
        "trial_key": trial_key(trial),
        "config": trial,
        "uses_labels": bool(getattr(get_method(trial["method"]), "uses_labels", True)),
        "sweep": ctx.get("sweep"),
        "kind": "sweep",
        "params_source": ctx.get("params_source"),
        "workers": ctx.get("workers", 0),
        "package_version": ctx.get("package_version"),
        "git_sha": ctx.get("git_sha"),
        "hostname": socket.gethostname(),
    }


def train_loop(config: dict):
    """Runs on every Ray Train worker; worker 0's return value becomes the trial's result."""
    torch.set_num_threads(max(1, int(config["ctx"].get("cpus_per_worker", 1))))
    on_epoch = None
    if config["ctx"].get("report_epochs") and config["ctx"].get("workers", 0) == 0:
        # Local mode: the trial's own process, so per-epoch metrics go straight to Tune (for
        # schedulers). Off by default: a sweep needs only the final row.
        import ray.tune

        def on_epoch(epoch, metrics):
            ray.tune.report({"epoch": epoch, **metrics})

    trial = config["trial"]
    if trial.get("runner"):
        # A scenario with its own experiment (e.g. CADet's two-sample tests): "module:function"
        # taking the trial and returning a dict of measured values, optionally with "rows".
        module, _, function = trial["runner"].partition(":")
        run = getattr(importlib.import_module(module), function)
        return run(trial, data_root=config["ctx"].get("data_root"), download=config["ctx"].get("download", False))
    if "cross" in trial:
        return run_cross_trial(config["trial"], data_root=config["ctx"].get("data_root"),
                               download=config["ctx"].get("download", False))
    return run_trial(config["trial"], data_root=config["ctx"].get("data_root"),
                     download=config["ctx"].get("download", False), on_epoch=on_epoch)


def tune_trial(config: dict) -> dict:
    """The Ray Tune trainable: one grid point as one TorchTrainer run, one row in the store."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    trial, ctx = config["trial"], config["ctx"]
    row = base_row(trial, ctx)
    row["node_id"] = ray.get_runtime_context().get_node_id()
    row["started_at"] = _now()
    workers = int(ctx.get("workers", 0))
    try:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"trial": trial, "ctx": ctx},
            scaling_config=ray.train.ScalingConfig(
                num_workers=workers,
                use_gpu=workers > 0 and ctx.get("gpus_per_trial", 0) > 0,
                resources_per_worker=(
                    {"CPU": ctx["cpus_per_worker"], "GPU": ctx.get("gpus_per_trial", 0)} if workers > 0 else None
                ),
            ),
            run_config=ray.train.RunConfig(
                name=f"train-{row['trial_key']}",
                storage_path=ctx.get("train_storage") or tempfile.gettempdir(),
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        row.update(trainer.fit().return_value)
        scores = row.pop("test_scores", None)
        if ctx.get("scores_storage") and scores is not None:
            # Scores first: an ok result row always has its scores beside it.
            labels = load_dataset(trial["dataset"], ctx.get("data_root")).test_labels.numpy()
            ScoreStore(ctx["scores_storage"]).write(row, scores, labels, trial["normal_class"])
        row["status"] = "ok"
    except Exception as exc:  # a failed trial is a row, and the sweep goes on
        row["status"] = "failed"
        # The one-line cause first, then the end of the traceback for debugging.
        row["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
    row["finished_at"] = _now()
    rows = row.pop("rows", None)
    if rows:  # several result rows from one training (Scenario-3, experiment runners), in one file
        ResultStore(ctx["storage"]).write_rows([{**row, **values} for values in rows])
    else:
        ResultStore(ctx["storage"]).write(row)
    return {
        "status": row["status"],
        "auroc_pooled": row.get("auroc_pooled") if row["status"] == "ok" else float("nan"),
        "trial_key": row["trial_key"],
        "train_seconds": row.get("train_seconds", 0.0),
    }
