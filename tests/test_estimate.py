"""orchestrator/estimate.py: what a sweep will cost, from a real Parquet store's measured trials, the benchmark
records, or no basis; and (slow) the estimate of a real quick sweep against its measured wall time."""

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from orchestrator.data.datasets import DataSource
from orchestrator.estimate import estimate, format_estimate, local_concurrency
from orchestrator.grid.trial import Trial
from orchestrator.planner import Request, plan
from orchestrator.store import ResultStore, read_manifests, write_manifest
from tests.conftest import ROOT

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _row(key, method, device, start, span, train, epochs, dataset="digits", status="ok"):
    return {"trial_key": key, "profile": "quick", "scenario": "scenario2", "method": method, "dataset": dataset,
            "device": device, "status": status, "epochs": epochs, "train_seconds": train, "trial_seconds": span - 1,
            "started_at": T0 + timedelta(seconds=start), "finished_at": T0 + timedelta(seconds=start + span)}


def _trial(method="hscl", epochs=10, normal=0):
    return Trial("one_class", "scenario2", "quick", "digits", method, normal, 1, params={"epochs": epochs})


@pytest.fixture
def store(tmp_path):
    s = ResultStore(str(tmp_path / "results"))
    rows = [_row("a", "hscl", "cpu:2cores", 5, 10, 8, 10), _row("b", "hscl", "cpu:2cores", 15, 20, 18, 10),
            _row("c", "hscl", "cpu:2cores", 35, 30, 28, 10), _row("d", "hscl", "cuda:NVIDIA H200", 70, 2, 1.5, 10),
            _row("e", "hscl", "cpu:2cores", 80, 999, 990, 10, status="failed"),  # failures price nothing
            _row("f", "hscl", "cpu:2cores", 90, 100, 98, 10, dataset="mnist")]  # another dataset's, not used
    for r in rows:
        s.write(r)
    write_manifest(s, {"sweep": "x", "created_at": T0.isoformat(), "keys": ["a", "b", "c"]})  # started 5 s later
    return s


def test_store_medians_per_device_scaled_by_epochs(store):
    trials = [_trial(normal=c) for c in range(4)] + [_trial(epochs=20)] + [_trial("csi")]
    est = estimate(trials, store, concurrency={"cpu": 2, "cuda": 4}, records=None)
    cpu, gpu = est.kinds["cpu:2cores"], est.kinds["cuda:NVIDIA H200"]
    # cpu: median span 20 s (train 18 s) at 10 epochs; at 20 epochs 20 - 18 + 2 * 18 = 38 s
    assert cpu.trials == 5 and cpu.trial_seconds == pytest.approx(4 * 20 + 38)
    assert cpu.startup_seconds == pytest.approx(5.0)
    # 2 slots in planned order: 20 | 20, 20 | 20, then 38 on the first free one -> 20 + 20 + 38
    assert cpu.wall_seconds == pytest.approx(5 + 78)
    assert gpu.trial_seconds == pytest.approx(4 * 2 + (2 - 1.5 + 3.0)) and gpu.concurrency == 4
    assert est.unpriced == {"csi/quick": 1}
    text = format_estimate(est)
    assert "cpu:2cores: 5 trials" in text and "no basis for csi/quick (1 trials)" in text


def test_benchmark_records_price_what_the_store_has_not(store, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    (records / "gpu_check.json").write_text(json.dumps({"trial_estimates": [
        {"method": "csi", "profile": "quick", "device": "cuda:NVIDIA H200", "epochs": 10, "trial_seconds": 3.0,
         "train_seconds": 2.0},
        {"method": "hscl", "profile": "quick", "device": "cpu:2cores", "epochs": 10, "trial_seconds": 999.0}]}))
    est = estimate([_trial("csi", epochs=5), _trial()], store, concurrency=1, records=records)
    gpu = est.kinds["cuda:NVIDIA H200"]
    assert gpu.bases["csi/quick"].source == "record: gpu_check.json" and gpu.trials == 2
    assert gpu.trial_seconds == pytest.approx((3.0 - 2.0 + 1.0) + 2.0)  # csi from the record, hscl from the store
    assert est.kinds["cpu:2cores"].bases["hscl/quick"].source.startswith("store")  # the store wins over a record


def test_no_basis_says_so(tmp_path):
    est = estimate([_trial()], ResultStore(str(tmp_path / "empty")), records=None)
    assert est.kinds == {} and est.unpriced == {"hscl/quick": 1}
    assert "no basis" in format_estimate(est)
    assert local_concurrency(cpus_per_trial=1.0, max_concurrent=1)["cpu"] == 1


@pytest.mark.slow
def test_estimate_of_a_quick_sweep_is_within_2x_of_its_wall_time(small_store, tmp_path):
    """Priced from the session's real 6-trial sweep (conftest's small_store), a different 6-trial grid runs
    through the real CLI; its estimated wall time (from the sweep's first write, its manifest, to its last row)
    must be within a factor 2 of the measured one."""
    args = ["scenario2", "--methods", "hscl", "--normal-classes", "1", "--anomaly-classes", "2,3"]
    trials, _ = plan(Request("scenario2", methods=["hscl"], normal_classes=[1], anomaly_classes=[2, 3]),
                     DataSource())
    est = estimate(trials, str(small_store), concurrency=local_concurrency(), records=None)
    (kind,) = est.kinds.values()
    assert kind.trials == len(trials) == 6
    run = subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args, "--storage", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    new = ResultStore(str(tmp_path / "r"))
    (manifest,) = read_manifests(new)
    wall = (new.read(["finished_at"]).to_pandas()["finished_at"].max()
            - pd.Timestamp(manifest["created_at"])).total_seconds()
    assert 0.5 <= kind.wall_seconds / wall <= 2.0, (kind.wall_seconds, wall, format_estimate(est))
