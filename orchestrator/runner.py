"""One trial on Ray: a Tune trial wraps a Train `TorchTrainer`, which runs the trial's kind of experiment
(orchestrator/experiments) and returns its measured values; the Tune trial writes the row.

Three layers, each usable alone:

- ``KINDS[trial.kind].run(trial, data)``: plain Python, no Ray. Debug a grid point with it directly.
- ``train_loop(config)``: the function a Ray Train ``TorchTrainer`` runs on each worker (in the
  trial's own process with ``num_workers=0``, or in DDP worker actors with ``--workers N``).
- ``tune_trial(config)``: the Ray Tune function trainable. For each of its grid points in turn (one,
  or a pack of short ones: Ray's cost is per Tune trial) it builds and fits a ``TorchTrainer`` (Ray 2.60
  Train V2 wraps Train in Tune this way) and writes the point's row to the store, ``ok`` or ``failed``,
  so a finished grid point is saved the moment it ends.
"""

from __future__ import annotations

import dataclasses
import json
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


def cap_gpu_memory(share: float) -> float | None:
    """Cap this process's CUDA memory to its share of the card; returns the cap in GiB (None without a GPU).

    Ray's fractional GPUs are bookkeeping only: without a cap, four trials at 0.25 each may take
    whatever they like, and the one that allocates last fails, whoever overran. With the cap, a
    trial that outgrows its share fails itself, with a message naming --gpus-per-trial. A process
    that Tune reuses for the next trial sets it again."""
    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    fraction = min(1.0, share) if share > 0 else 1.0
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    torch.cuda.reset_peak_memory_stats(device)
    return fraction * torch.cuda.get_device_properties(device).total_memory / 2**30


def _with_extra(values: dict, **more) -> dict:
    extra = values.get("extra")
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra or {})
    return {**values, "extra": {**extra, **more}}


def _result_with_extra(result: dict, **more) -> dict:
    """A kind's result with ``more`` in the extra of its row, or of each of its ``rows``."""
    if "rows" in result:
        return {**result, "rows": [_with_extra(values, **more) for values in result["rows"]]}
    return _with_extra(result, **more)


def gpu_oom(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it, e.g. inside a Ray Train worker) is CUDA running out of memory."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def oom_message(ctx: Context) -> str:
    share = ctx.gpus_per_trial
    if share <= 0:
        return ("out of GPU memory: this trial asked Ray for no GPU (--gpus-per-trial 0) but trained on one; "
                "give each trial a share, e.g. --gpus-per-trial 0.5")
    more = min(1.0, 2 * share) if share < 1 else share + 1
    return (f"out of GPU memory: each trial may use {share:g} of a GPU (--gpus-per-trial {share:g}) and this one "
            f"needed more; run fewer per GPU, e.g. --gpus-per-trial {more:g}")


def train_loop(config: dict):
    """Runs on every Ray Train worker; worker 0's return value becomes the trial's result."""
    ctx = Context.from_dict(config["ctx"])
    torch.set_num_threads(max(1, int(ctx.cpus_per_worker)))
    cap_gib = cap_gpu_memory(ctx.gpus_per_trial)
    on_epoch = None
    if ctx.report_epochs and ctx.workers == 0:
        # Local mode: the trial's own process, so per-epoch metrics go straight to Tune (for
        # schedulers). Off by default: a sweep needs only the final row.
        import ray.tune

        def on_epoch(epoch, metrics):
            ray.tune.report({"epoch": epoch, **metrics})

    trial = Trial.from_dict(config["trial"])
    result = get_kind(trial.kind).run(trial, ctx.data, on_epoch)
    if cap_gib is not None:  # the measured footprint sizes later sweeps' --gpus-per-trial (orchestrator/cluster.py)
        peak = {"gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3), "gpu_cap_gib": round(cap_gib, 3)}
        result = _result_with_extra(result, **peak)
    return result


def tune_trial(config: dict) -> dict:
    """The Ray Tune trainable. A sweep's Tune trial runs a pack of grid points (``config["trials"]``) one after
    another, each as its own TorchTrainer run writing its own row the moment it ends; ``config["trial"]`` is
    one grid point alone. Ray's cost is per Tune trial, so short points share it (orchestrator/sweep.py)."""
    if "trials" not in config:
        return run_point(config)
    import ray.tune

    tune_trial_id = ray.tune.get_context().get_trial_id()
    ok = failed = 0
    for point in config["trials"]:
        one = {"trial": point, "ctx": config["ctx"]}
        if stored_ok(one):  # Tune re-runs a trial whose process died: what it already stored stays as it is
            ok += 1
            continue
        outcome = run_point(one, {"tune_trial": tune_trial_id, "points_in_tune_trial": len(config["trials"])})
        ok += outcome["status"] == "ok"
        failed += outcome["status"] != "ok"
    return {"points_ok": ok, "points_failed": failed}


def stored_ok(config: dict) -> bool:
    """Whether the store already holds an ``ok`` row for this grid point (reads one small file, if any)."""
    import pyarrow.parquet as pq

    trial, ctx = Trial.from_dict(config["trial"]), Context.from_dict(config["ctx"])
    store = ResultStore(ctx.storage)
    path = store.path_for({"profile": trial.profile, "scenario": trial.scenario, "method": trial.method,
                           "trial_key": trial.key})
    try:
        return "ok" in pq.read_table(path, columns=["status"], filesystem=store.fs)["status"].to_pylist()
    except (FileNotFoundError, OSError):
        return False


def run_point(config: dict, extra: dict | None = None) -> dict:
    """One grid point as one TorchTrainer run, one row (or one file of rows) in the store, ``ok`` or ``failed``."""
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
        result = trainer.fit().return_value
        if extra:
            result = _result_with_extra(result, **extra)
        row.update(result)
        scores = row.pop("test_scores", None)
        if ctx.scores_storage and scores is not None:
            # Scores first: an ok result row always has its scores beside it.
            labels = ctx.data.load(trial.dataset).test_labels.numpy()
            ScoreStore(ctx.scores_storage).write(row, scores, labels, trial.normal_class)
        row["status"] = "ok"
    except Exception as exc:  # a failed trial is a row, and the sweep goes on
        row["status"] = "failed"
        # The one-line cause first, then the end of the traceback for debugging.
        cause = oom_message(ctx) if gpu_oom(exc) else f"{type(exc).__name__}: {exc}"
        row["error"] = f"{cause}\n{traceback.format_exc()[-3000:]}"
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
