"""The Parquet store: one row per key, readable by pandas, pyarrow and DuckDB, never half-written."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from orchestrator.store import ResultStore


def _row(key, method="hscl", auroc=0.9, status="ok", **extra):
    return {"trial_key": key, "profile": "quick", "scenario": "scenario2", "method": method, "dataset": "digits",
            "normal_class": 0, "anomaly_class": 1, "gamma_p": 0.05, "gamma_l": 0.05, "seed": 0,
            "params": {"tau": 0.5}, "status": status, "auroc_pooled": auroc,
            "started_at": datetime.now(timezone.utc), **extra}


def test_rows_read_back_the_same_through_pandas_pyarrow_and_duckdb(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.write(_row("k1", auroc=0.8))
    store.write(_row("k2", method="other", auroc=0.6, status="failed", error="boom"))
    by_pandas = pd.read_parquet(tmp_path / "results").set_index("trial_key").sort_index()
    by_arrow = pads.dataset(tmp_path / "results", partitioning="hive").to_table().to_pandas()
    by_duck = duckdb.sql(
        f"SELECT trial_key, method, status, auroc_pooled FROM read_parquet('{tmp_path}/results/**/*.parquet', "
        "hive_partitioning = true) ORDER BY trial_key").df()
    assert list(by_pandas.index) == ["k1", "k2"]
    assert list(by_pandas["method"]) == ["hscl", "other"]  # partition columns come back from the paths
    assert sorted(by_arrow["auroc_pooled"]) == [0.6, 0.8]
    assert list(by_duck["auroc_pooled"]) == [0.8, 0.6] and list(by_duck["status"]) == ["ok", "failed"]
    assert by_pandas.loc["k1", "params"] == '{"tau": 0.5}'
    assert store.statuses() == {"k1": "ok", "k2": "failed"}


def test_writing_a_key_again_replaces_its_row(tmp_path):
    store = ResultStore(tmp_path)
    store.write(_row("k1", status="failed"))
    store.write(_row("k1", status="ok", auroc=0.7))
    table = store.read()
    assert table.num_rows == 1 and table["status"].to_pylist() == ["ok"]


def test_an_empty_store_reads_as_no_rows(tmp_path):
    assert ResultStore(tmp_path / "nothing-yet").statuses() == {}


def test_a_writer_killed_mid_write_leaves_only_whole_files(tmp_path):
    # A process rewrites the same key as fast as it can; SIGKILL it at an arbitrary moment.
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.getcwd()!r})
        from tests.test_store import _row
        from orchestrator.store import ResultStore
        store = ResultStore({str(tmp_path)!r})
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            store.write(_row("k1", auroc=i / 1e6, error="x" * 100_000))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    row_file = ResultStore(tmp_path).path_for(_row("k1"))

    def rewrites_on_disk() -> int:  # write i stores auroc i / 1e6
        if not os.path.exists(row_file):
            return 0
        return round(pq.read_table(row_file, columns=["auroc_pooled"])["auroc_pooled"][0].as_py() * 1e6)

    try:
        assert proc.stdout.readline().strip() == "ready"
        # Kill it well into its loop (its row already replaced a few times) while a write is under way
        # (its temp file is on disk).
        deadline = time.monotonic() + 60
        while not (rewrites_on_disk() >= 3 and any(tmp_path.rglob(".k1.*.tmp"))):
            assert proc.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline, f"the writer rewrote its row {rewrites_on_disk()} times in 60 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Whatever was caught mid-write is a hidden temp file that no reader sees.
    assert pd.read_parquet(tmp_path).shape[0] == 1
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/**/*.parquet')").fetchall()[0][0] == 1
