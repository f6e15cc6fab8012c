"""One trial on Ray: a Tune trial wraps a Train `TorchTrainer`, which runs the trial's kind of experiment
(orchestrator/experiments) and returns its measured values; the Tune trial writes the row.

Three layers, each usable alone:

- ``KINDS[trial.kind].run(trial, data)``: plain Python, no Ray. Debug a grid point with it directly.
- ``train_loop(config)``: the function a Ray Train ``TorchTrainer`` runs on each worker (in the
  trial's own process with ``num_workers=0``, or in DDP worker actors with ``--workers N``).
- ``tune_trial(config)``: the Ray Tune function trainable. It builds and fits the ``TorchTrainer``
  (Ray 2.60 Train V2 wraps Train in Tune this way) and writes the row to the store, ``ok`` or
  ``failed``, so a finished trial is saved the moment it ends.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from methods.registry import get_method
from orchestrator.data.datasets import DataSource
from orchestrator.experiments import get_kind
from orchestrator.grid.trial import Trial
from orchestrator.store import ResultStore, ScoreStore


@dataclass
class Context:
    """How a sweep runs its trials (the same for all of them, and not part of any trial's key)."""

    storage: str
    scores_storage: str | None = None
    data: DataSource = field(default_factory=DataSource)
    sweep: str | None = None
    params_source: str | None = None
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_trial: float = 0.0
    report_epochs: bool = False
    package_version: str | None = None
    git_sha: str | None = None
    train_storage: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Context:
        return cls(**{**d, "data": DataSource(**d["data"])})


def now() -> datetime:
    return datetime.now(timezone.utc)


def base_row(trial: Trial, ctx: Context) -> dict:
    """Everything a row says about what was run (the rest is what was measured)."""
    return {
        **{k: getattr(trial, k) for k in ("profile", "scenario", "method", "variant", "dataset", "normal_class",
                                          "anomaly_class", "gamma_l", "gamma_p", "gamma_l_normal", "val_fraction",
                                          "seed", "labeled_anomalies", "params")},
        "trial_key": trial.key,
        "config": trial.to_dict(),
        "uses_labels": bool(getattr(get_method(trial.method), "uses_labels", True)),
        "sweep": ctx.sweep,
        "kind": "sweep",
        "experiment": trial.kind,
        "params_source": ctx.params_source,
        "workers": ctx.workers,
        "package_version": ctx.package_version,
        "git_sha": ctx.git_sha,
        "hostname": socket.gethostname(),
    }


def train_loop(config: dict):
    """Runs on every Ray Train worker; worker 0's return value becomes the trial's result."""
    ctx = Context.from_dict(config["ctx"])
    torch.set_num_threads(max(1, int(ctx.cpus_per_worker)))
    on_epoch = None
    if ctx.report_epochs and ctx.workers == 0:
        # Local mode: the trial's own process, so per-epoch metrics go straight to Tune (for
        # schedulers). Off by default: a sweep needs only the final row.
        import ray.tune

        def on_epoch(epoch, metrics):
            ray.tune.report({"epoch": epoch, **metrics})

    trial = Trial.from_dict(config["trial"])
    return get_kind(trial.kind).run(trial, ctx.data, on_epoch)


def tune_trial(config: dict) -> dict:
    """The Ray Tune trainable: one grid point as one TorchTrainer run, one row (or one file of rows) in the store."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    trial, ctx = Trial.from_dict(config["trial"]), Context.from_dict(config["ctx"])
    row = base_row(trial, ctx)
    row["node_id"] = ray.get_runtime_context().get_node_id()
    row["started_at"] = now()
    try:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=ctx.workers,
                use_gpu=ctx.workers > 0 and ctx.gpus_per_trial > 0,
                resources_per_worker=(
                    {"CPU": ctx.cpus_per_worker, "GPU": ctx.gpus_per_trial} if ctx.workers > 0 else None
                ),
            ),
            run_config=ray.train.RunConfig(
                name=f"train-{row['trial_key']}",
                storage_path=ctx.train_storage or tempfile.gettempdir(),
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        row.update(trainer.fit().return_value)
        scores = row.pop("test_scores", None)
        if ctx.scores_storage and scores is not None:
            # Scores first: an ok result row always has its scores beside it.
            labels = ctx.data.load(trial.dataset).test_labels.numpy()
            ScoreStore(ctx.scores_storage).write(row, scores, labels, trial.normal_class)
        row["status"] = "ok"
    except Exception as exc:  # a failed trial is a row, and the sweep goes on
        row["status"] = "failed"
        # The one-line cause first, then the end of the traceback for debugging.
        row["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
    row["finished_at"] = now()
    rows = row.pop("rows", None)
    if rows:  # several result rows from one training (cross_dataset, two_sample, adversarial), in one file
        ResultStore(ctx.storage).write_rows([{**row, **values} for values in rows])
    else:
        ResultStore(ctx.storage).write(row)
    return {
        "status": row["status"],
        "auroc_pooled": row.get("auroc_pooled") if row["status"] == "ok" else float("nan"),
        "trial_key": row["trial_key"],
        "train_seconds": row.get("train_seconds", 0.0),
    }
