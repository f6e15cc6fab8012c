"""Optuna search on validation data only: spaces, the no-test-split guarantee, a tiny real search."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import orchestrator.data.datasets as datasets
from orchestrator.data.datasets import load_dataset
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.planner import expand
from orchestrator.search import SpaceError, load_space, search_trainable

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("space", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load(space):
    loaded = load_space(str(space))
    assert loaded["params"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: hscl\nparams: {lamda1: {type: float, low: 0, high: 1}}", "params.lamda1: hscl has no parameter"),
        ("method: hscl\nparams: {tau: {type: float, low: 1, high: 0.1}}", "params.tau: low (1) must be below high"),
        ("method: hscl\nparams: {tau: {type: normal, low: 0, high: 1}}", "params.tau.type: must be one of"),
        ("method: hscl\nparams: {lr: {type: log, low: 0, high: 1}}", "params.lr.low: a log range must be positive"),
        ("method: hscl\nparams: {n_prototypes: {type: categorical}}", "params.n_prototypes.choices"),
        ("method: hscl\nparams: {tau: {type: float, low: 0, high: 1, stepp: 2}}", "unknown key 'stepp'"),
        ("method: hscl\nparams: {w_delta: {type: float, low: 0, high: 1, condition: {use_na: true}}}",
         "condition: 'use_na' must be a parameter listed before"),
        ("method: nope\nparams: {}", "method: unknown method 'nope'"),
        ("method: hscl\nparams: [tau: {", "not valid YAML"),
    ],
)
def test_bad_spaces_fail_with_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_space(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


class TrainOnly:
    """Digits whose test split raises on any access: proof that a code path never reads it."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        if name.startswith("test_"):
            raise AssertionError(f"the search read the test split ({name})")
        return getattr(self._data, name)


def test_a_search_trial_never_reads_the_test_split(monkeypatch):
    digits = load_dataset("digits")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: TrainOnly(digits))
    reports = []
    monkeypatch.setattr("ray.tune.report", lambda metrics: reports.append(metrics))
    trials = [t for n, a in [(0, 1), (3, 5)] for t in expand(
        SCENARIOS["scenario2"], PROFILES["quick"], methods=["hscl"], num_classes=10, normal_classes=[n],
        anomaly_classes=[a], gamma_p=[0.05], overrides={"epochs": 4})]
    ctx = {"trials": [t.to_dict() for t in trials], "pairs": [[0, 1], [3, 5]], "base_params": trials[0].params,
           "data": {"root": None, "download": False, "folders": {}}, "val_every": 2}
    out = search_trainable({"lambda1": 0.5}, ctx)
    assert 0.5 < out["auroc_val"] <= 1 and len(out["per_pair"]) == 2
    # ASHA gets a validation AUROC every second epoch of each pair, at increasing steps.
    assert [r["step"] for r in reports] == [2, 4, 6, 8]


@pytest.mark.slow  # 88 s: a whole Ray Tune + Optuna search, then a sweep
def test_a_tiny_search_improves_on_its_worst_trial_and_its_best_params_run_as_a_sweep(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"method": "hscl", "params": {
        "lr": {"type": "log", "low": 1e-6, "high": 1e-2}, "tau": {"type": "float", "low": 0.2, "high": 1.0}}}))
    common = ["--search-dir", str(tmp_path / "search"), "--storage", str(tmp_path / "results"), "--pairs", "0:1",
              "--set", "epochs=6", "--no-asha"]
    run = subprocess.run([sys.executable, "-m", "orchestrator.search", "hscl", "--space", str(space), "--trials", "3",
                          *common], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = pd.read_parquet(tmp_path / "results")
    assert (rows["kind"] == "search").all() and len(rows) == 3
    assert rows["auroc_pooled"].isna().all()  # no test AUROC during a search
    assert rows["auroc_val"].max() > rows["auroc_val"].min()
    best = yaml.safe_load((tmp_path / "search" / "hscl-best.yaml").read_text())
    assert np.isclose(best["auroc_val"], rows["auroc_val"].max())
    assert (tmp_path / "search" / "hscl-scenario2-quick-history.png").stat().st_size > 10_000

    # More trials later extend the same study.
    more = subprocess.run([sys.executable, "-m", "orchestrator.search", "hscl", "--space", str(space), "--trials", "2",
                           *common], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "(3 in the study already)" in more.stdout
    assert yaml.safe_load((tmp_path / "search" / "hscl-best.yaml").read_text())["trials_in_study"] == 5

    # The best parameters round-trip into a sweep, whose rows say where they came from.
    sweep = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl",
                            "--normal-classes", "0", "--anomaly-classes", "1", "--gamma-p", "0.05", "--params-from",
                            str(tmp_path / "search" / "hscl-best.yaml"), "--storage", str(tmp_path / "final"),
                            "--set", "epochs=6"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    final = pd.read_parquet(tmp_path / "final")
    params = json.loads(final["params"].item())
    chosen = yaml.safe_load((tmp_path / "search" / "hscl-best.yaml").read_text())["params"]
    assert all(np.isclose(params[k], v) for k, v in chosen.items())
    assert final["params_source"].item().endswith("hscl-best.yaml") and final["auroc_pooled"].notna().all()
