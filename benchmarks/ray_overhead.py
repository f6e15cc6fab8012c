"""One quick trial under Ray Tune + Train against the same trainer called directly.

    python benchmarks/ray_overhead.py [--trials 6]

Both sides run the same grid points of the quick scenario2 one after another on one thread:
first directly (`orchestrator.runner.run_trial`, no Ray), then as a sweep through Ray Tune with a
Train `TorchTrainer` per trial (local mode, reused actor), writing real rows to a temporary store.
Ray's start (`ray.init`) is timed apart: it is paid once per sweep, not per trial.
Writes benchmarks/records/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.data.datasets import DataSource
from orchestrator.experiments import one_class
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.planner import expand

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    trials = expand(SCENARIOS["scenario2"], PROFILES["quick"], num_classes=10, normal_classes=[0, 1])[: args.trials]
    torch.set_num_threads(1)

    one_class.run(trials[0], DataSource())  # warm caches (dataset, kernels) so both sides start equal
    t0 = time.perf_counter()
    direct_own = [one_class.run(t, DataSource())["trial_seconds"] for t in trials]
    direct = time.perf_counter() - t0

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import logging

    import ray
    from ray import tune

    from orchestrator.runner import Context, tune_trial

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray_start = time.perf_counter() - t0
    store = tempfile.mkdtemp(prefix="adsweep-overhead-")
    ctx = Context(storage=store, sweep="bench", train_storage=store).to_dict()
    t0 = time.perf_counter()
    grid = tune.Tuner(
        tune.with_resources(tune_trial, {"cpu": 1}),
        param_space={"trial": tune.grid_search([t.to_dict() for t in trials]), "ctx": ctx},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True,
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(storage_path=store, verbose=0),
    ).fit()
    under_ray = time.perf_counter() - t0
    ray.shutdown()
    assert all(r.metrics["status"] == "ok" for r in grid), [r.metrics for r in grid]

    n = len(trials)
    # Steady state: the time between the first and the last trial's end, per trial. The first
    # trial also pays for starting the reused actor process (imports, dataset load) once per sweep.
    ends = sorted(r.metrics["timestamp"] for r in grid)
    steady = (ends[-1] - ends[0]) / (n - 1)
    record = {
        "trials": n,
        "direct_seconds_per_trial": round(direct / n, 3),
        "ray_seconds_per_trial_all": round(under_ray / n, 3),
        "ray_seconds_per_trial_steady": round(steady, 3),
        "overhead_ratio_steady": round(steady / (direct / n), 3),
        "overhead_ratio_all": round(under_ray / direct, 3),
        "first_trial_extra_seconds": round(under_ray - steady * n, 2),
        "ray_init_seconds": round(ray_start, 2),
        "direct_own_seconds_mean": round(sum(direct_own) / n, 3),
    }
    out = ROOT / "benchmarks" / "records" / "ray_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"one quick trial: {direct / n:.2f} s directly, {steady:.2f} s under Ray Tune + Train once the actor "
          f"runs (ratio {steady / (direct / n):.2f}); {under_ray / n:.2f} s counting the actor's start "
          f"(ratio {under_ray / direct:.2f}); ray.init once per sweep: {ray_start:.1f} s")


if __name__ == "__main__":
    main()
