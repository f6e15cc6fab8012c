"""Cluster and faults: the shipped cluster config, several nodes, a killed node, S3 storage."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import yaml

from orchestrator.store import connect

ROOT = Path(__file__).resolve().parent.parent


def sweep_cmd(*args):
    return [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", *args]


def test_cluster_yaml_passes_rays_own_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a bad config
    assert any(t["node_config"]["InstanceType"].startswith("g") for t in config["available_node_types"].values())
    broken = {**config, "max_workers": "many"}
    with pytest.raises(Exception, match="many"):
        validate_config(prepare_config(broken))


@pytest.mark.slow  # 39 s: a three-node local Ray cluster
def test_trials_spread_over_nodes_and_survive_a_killed_node(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    store = tmp_path / "results"
    try:
        proc = subprocess.Popen(
            sweep_cmd("--normal-classes", "0,1", "--anomaly-classes", "2", "--storage", str(store),
                      "--address", cluster.address, "--set", "epochs=40"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Once trials are running on every node, kill a worker node without warning.
        deadline = time.monotonic() + 120
        while not list(store.rglob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.remove_node(workers[0], allow_graceful=False)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    finally:
        cluster.shutdown()
    rows = pd.read_parquet(store)
    assert len(rows) == 6 and rows["trial_key"].is_unique and (rows["status"] == "ok").all()
    assert rows["node_id"].nunique() >= 2  # the trials ran on more than one node


def test_two_sweeps_writing_to_one_store_at_once_corrupt_nothing(tmp_path):
    store = tmp_path / "results"
    args = ["--normal-classes", "0", "--anomaly-classes", "1,2", "--storage", str(store), "--set", "epochs=3",
            "--max-concurrent", "1"]
    first = subprocess.Popen(sweep_cmd(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(sweep_cmd(*args, "--gamma-p", "0.05,0.1"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    for proc in (first, second):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    rows = pd.read_parquet(store)
    # One file per key, each written whole: overlapping keys end as one row, never two.
    assert len(rows) == 6 and rows["trial_key"].is_unique and (rows["status"] == "ok").all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3 API (moto's server) on loopback, as its own process."""
    port = _free_port()
    server = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    import boto3

    deadline = time.monotonic() + 20
    while True:
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="sweeps")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield endpoint
    server.terminate()
    server.wait()


@pytest.mark.slow  # 30 s: a sweep into a local S3 server
def test_a_sweep_to_s3_reads_back_with_duckdb_and_pandas(s3_server):
    run = subprocess.run(sweep_cmd("--normal-classes", "0", "--anomaly-classes", "1", "--gamma-p", "0,0.1",
                                   "--storage", "s3://sweeps/adsweep/results", "--set", "epochs=3"),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    con = connect("s3://sweeps/adsweep/results")
    by_duckdb = con.sql("SELECT trial_key, status, auroc_pooled FROM results ORDER BY trial_key").df()
    assert len(by_duckdb) == 2 and (by_duckdb["status"] == "ok").all()
    assert con.sql("SELECT count(*) FROM scores").fetchall()[0][0] == 2 * 596
    fs = pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", access_key="test", secret_key="test",
                           region="us-east-1")
    by_pandas = pd.read_parquet("sweeps/adsweep/results", filesystem=fs)
    assert sorted(by_pandas["trial_key"]) == list(by_duckdb["trial_key"])
    # DuckDB without httpfs: hand it the Arrow dataset, as the README says.
    dataset = pads.dataset("sweeps/adsweep/results", filesystem=fs, partitioning="hive")
    assert len(duckdb.from_arrow(dataset).df()) == 2
    # Re-running finds the finished trials in the bucket and runs nothing.
    again = subprocess.run(sweep_cmd("--normal-classes", "0", "--anomaly-classes", "1", "--gamma-p", "0,0.1",
                                     "--storage", "s3://sweeps/adsweep/results", "--set", "epochs=3"),
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "2 done, 0 to run" in again.stdout


def test_storage_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = subprocess.run(sweep_cmd("--normal-classes", "0", "--anomaly-classes", "1", "--storage",
                                   str(blocker / "results")), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("error: cannot write to storage") and len(run.stderr.strip().splitlines()) == 1
