"""The sweep end to end, as a user runs it: real Ray Tune + Train, real digits, real Parquet files."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import psutil
import pytest

from orchestrator.data.datasets import load_dataset
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.planner import expand
from orchestrator.store import ResultStore
from orchestrator.sweep import main

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--set", "epochs=3"]  # plumbing tests: a few epochs are enough


def sweep(*args, timeout=300, **popen):
    cmd = [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **popen)


def expected_keys(normal, anomaly, overrides=None):
    trials = expand(SCENARIOS["scenario2"], PROFILES["quick"], num_classes=10, methods=["hscl"],
                    normal_classes=normal, anomaly_classes=anomaly, overrides=overrides)
    return {t.key for t in trials}


def result_files(store: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in store.rglob("*.parquet")}


def processes_with(env: dict[str, str]) -> list[psutil.Process]:
    """The live processes (zombies do not count) whose environment holds all of `env`."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and env.items() <= p.environ().items():
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_sweep_writes_exactly_the_grid_and_a_rerun_writes_nothing(tmp_path):
    store = tmp_path / "results"
    run = sweep("--normal-classes", "0", "--anomaly-classes", "1", "--storage", str(store), *FAST)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3/3 trials" in run.stdout and "gamma_p=0.10" in run.stdout

    rows = pd.read_parquet(store)
    assert set(rows["trial_key"]) == expected_keys([0], [1], {"epochs": 3}) and len(rows) == 3
    assert (rows["status"] == "ok").all()
    assert sorted(rows["gamma_p"]) == [0.0, 0.05, 0.1]
    assert rows[["auroc_pooled", "auroc_known", "auroc_mean_1v1", "auroc_val"]].notna().all().all()
    assert rows["auroc_pooled"].between(0, 1).all()
    # Every row carries its config, seed, code version, device and timings.
    for col in ("params", "config", "git_sha", "package_version", "device", "started_at", "finished_at"):
        assert rows[col].notna().all(), col
    assert (rows["train_seconds"] > 0).all() and (rows["n_labeled_anomaly"] > 0).all()
    assert (rows.loc[rows["gamma_p"] > 0, "n_pollution"] > 0).all()

    duck = duckdb.sql(f"SELECT method, count(*) AS n FROM read_parquet('{store}/**/*.parquet', "
                      "hive_partitioning = true) GROUP BY method").df()
    assert duck.to_dict("records") == [{"method": "hscl", "n": 3}]

    before = result_files(store)
    scores_before = result_files(tmp_path / "scores")
    assert len(scores_before) == 3  # one score file per ok trial, beside the results
    again = sweep("--normal-classes", "0", "--anomaly-classes", "1", "--storage", str(store), *FAST)
    assert again.returncode == 0, again.stderr
    assert "3 done, 0 to run" in again.stdout
    assert result_files(store) == before  # nothing rewritten
    assert result_files(tmp_path / "scores") == scores_before


# One grid point a Tune trial, or packs of 3 (slow tier: the default tier has the packed sweep below).
@pytest.mark.parametrize("per_tune_trial", ["1", pytest.param("3", marks=pytest.mark.slow)])
def test_a_sweep_killed_part_way_finishes_only_what_is_missing(tmp_path, per_tune_trial):
    store = tmp_path / "results"
    args = ["--normal-classes", "0,1", "--anomaly-classes", "2,3", "--storage", str(store), *FAST,
            "--points-per-trial", per_tune_trial]
    # Kill the driver and every process it started (its session) once two trials are saved.
    cmd = [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", *args]
    # Every process of this sweep (the driver, Ray's daemons, trial workers) inherits this marker.
    marker = {"ADSWEEP_TEST_SWEEP": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **marker},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(result_files(store)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Trial processes that Ray started outside the driver's process group notice their dead raylet
    # and exit within a few seconds; a trial finishing in that window may still save its row. The
    # store is final once none of the sweep's processes is left.
    deadline = time.monotonic() + 120
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for p in left:  # not to leak them into the next tests
        with contextlib.suppress(psutil.Error):
            names.append(p.name())
            p.kill()
    assert not left, f"still running 120 s after the sweep was killed: {names}"
    saved = result_files(store)
    assert 2 <= len(saved) < 12

    resumed = sweep(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(saved)} done, {12 - len(saved)} to run" in resumed.stdout
    rows = pd.read_parquet(store)
    assert len(rows) == 12 and rows["trial_key"].is_unique and (rows["status"] == "ok").all()
    assert set(rows["trial_key"]) == expected_keys([0, 1], [2, 3], {"epochs": 3})
    after = result_files(store)
    assert all(after[name] == mtime for name, mtime in saved.items())  # finished trials not re-run


def test_a_failing_trial_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    # lr=1e30 makes training diverge to NaN: each trial fails, the sweep still ends, rows say why.
    store = tmp_path / "results"
    run = sweep("--normal-classes", "0", "--anomaly-classes", "1", "--gamma-p", "0,0.1", "--storage", str(store),
                "--set", "epochs=2", "--set", "lr=1e30")
    assert run.returncode == 1
    rows = pd.read_parquet(store)
    assert len(rows) == 2 and (rows["status"] == "failed").all()
    assert rows["error"].str.len().gt(0).all() and rows["auroc_pooled"].isna().all()
    assert not result_files(tmp_path / "scores")  # a failed trial leaves no scores


def test_packed_grid_points_each_write_their_own_row_and_share_tune_trials(tmp_path):
    store = tmp_path / "results"
    run = sweep("--normal-classes", "0,1", "--anomaly-classes", "2", "--storage", str(store), *FAST,
                "--points-per-trial", "3", "--max-concurrent", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "up to 3 a Ray Tune trial" in run.stdout and "6/6 trials" in run.stdout
    rows = pd.read_parquet(store)
    assert set(rows["trial_key"]) == expected_keys([0, 1], [2], {"epochs": 3}) and (rows["status"] == "ok").all()
    extra = rows["extra"].map(json.loads)
    assert extra.map(lambda e: e["points_in_tune_trial"]).eq(3).all()
    per_tune_trial = extra.map(lambda e: e["tune_trial"]).value_counts()
    assert len(per_tune_trial) == 2 and (per_tune_trial == 3).all()
    # Each point has its own timings, one after another within its Tune trial.
    for _, points in rows.assign(tune=extra.map(lambda e: e["tune_trial"])).groupby("tune"):
        points = points.sort_values("started_at")
        assert (points["started_at"].iloc[1:].to_numpy() >= points["finished_at"].iloc[:-1].to_numpy()).all()


def test_a_retried_pack_does_not_train_again_what_it_stored(tmp_path):
    from orchestrator.runner import Context, stored_ok

    trials = expand(SCENARIOS["scenario2"], PROFILES["quick"], num_classes=10, methods=["hscl"],
                    normal_classes=[0], anomaly_classes=[1])
    store = ResultStore(str(tmp_path / "results"))
    ctx = Context(storage=store.location).to_dict()
    for trial, status in zip(trials, ["ok", "failed"], strict=False):
        store.write({"trial_key": trial.key, "profile": trial.profile, "scenario": trial.scenario,
                     "method": trial.method, "status": status})
    assert [stored_ok({"trial": t.to_dict(), "ctx": ctx}) for t in trials] == [True, False, False]


@pytest.mark.parametrize(
    "args, message",
    [
        (["scenario9"], "unknown scenario 'scenario9'"),
        (["scenario2", "--methods", "nope"], "unknown method 'nope'"),
        (["scenario2", "--dataset", "imagenet-xl"], "imagenet-xl"),
        (["scenario2", "--dataset", "/no/such/folder"], "/no/such/folder"),
        (["scenario2", "--profile", "huge"], "unknown profile 'huge'"),
        (["scenario2", "--methods", "deepsad", "--gamma-l", "0.6"], "lower gamma_l"),  # Deep SAD: no labeled normals
        (["scenario2", "--gamma-l", "0.6"], "together they must stay below 1"),  # HSCL: normals at gamma_l too
        (["scenario2", "--gamma-p", "1.5"], "gamma_p=1.5"),
        (["scenario2", "--set", "val_fraction=0.7"], "val_fraction=0.7"),
        (["scenario2", "--set", "epochs"], "KEY=VALUE"),
        (["scenario2", "--set", "tau_typo=1"], "unknown parameter"),
        (["scenario2", "--set", "epochs=many"], "expected a int"),
        (["scenario2", "--normal-classes", "12"], "classes 0..9"),
        (["scenario2", "--labeled-dataset", "digits"], "not scenario2"),
        (["scenario2", "--points-per-trial", "0"], "--points-per-trial must be at least 1"),
        (["scenario2", "--points-per-trial", "2", "--report-epochs"], "--points-per-trial 1"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, capsys, args, message):
    store = tmp_path / "results"
    assert main([*args, "--storage", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not store.exists()


@pytest.mark.parametrize("args", [["--seeds", "x"], ["--gamma-p", "a,b"], ["--max-concurrent", "two"], ["--nope"]])
def test_a_malformed_flag_is_one_line_and_exit_2_not_a_usage_block(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["scenario2", *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_dry_run_reports_the_grid_and_runs_nothing(tmp_path, capsys):
    store = tmp_path / "results"
    assert main(["scenario2", "--methods", "hscl", "--dry-run", "--storage", str(store)]) == 0
    out = capsys.readouterr().out
    assert "270 trials in the grid, 0 done, 270 to run" in out
    assert not store.exists()


def test_quick_default_dataset_is_digits():
    assert load_dataset(PROFILES["quick"].dataset).num_classes == 10


@pytest.mark.slow  # 50 s; DDP itself stays in the fast tier (test_hscl, test_unsupervised_methods, test_cadet)
def test_workers_run_a_trial_as_ddp_ray_train_workers(tmp_path):
    # Two Ray Train worker actors (gloo on CPU) train one grid point together.
    store = tmp_path / "results"
    run = sweep("--normal-classes", "0", "--anomaly-classes", "1", "--gamma-p", "0.1", "--workers", "2",
                "--storage", str(store), *FAST)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = pd.read_parquet(store)
    assert len(rows) == 1 and rows["status"].tolist() == ["ok"] and rows["workers"].tolist() == [2]
    assert rows["world_size"].tolist() == [2]
    assert rows["auroc_pooled"].iloc[0] > 0.7
