"""The Parquet result store: one small file per trial, hive-partitioned, written whole or not at all.

Layout under the storage path (a local folder, ``s3://bucket/prefix`` or ``gs://bucket/prefix``)::

    profile=quick/scenario=scenario2/method=hscl/<trial_key>.parquet

Why one file per trial, named by its key:
- a re-run, a retried failure or a second sweep writing the same key replaces that one file, so
  the store can never hold two rows for one key, with no lock and no merge step;
- a finished trial is on disk the moment it ends: a crash, a killed node or Ctrl-C loses
  nothing that finished;
- a file appears whole or not at all: written under a temporary name and renamed (local), or
  uploaded in one request that completes on close (object stores).

Readers need nothing from this module::

    pandas.read_parquet("results")
    pyarrow.dataset.dataset("results", partitioning="hive")
    duckdb.sql("SELECT * FROM read_parquet('results/**/*.parquet', hive_partitioning = true)")
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# The partition columns live in the directory names, not inside the files (readers add them back).
PARTITION_COLUMNS = ("profile", "scenario", "method")

SCHEMA = pa.schema(
    [
        ("trial_key", pa.string()),
        ("sweep", pa.string()),
        ("kind", pa.string()),  # "sweep": a grid point with test AUROCs; "search": a search trial (validation only)
        ("experiment", pa.string()),  # the trial's kind of experiment: one_class, cross_dataset, two_sample, ...
        ("params_source", pa.string()),  # where non-default params came from, e.g. a search's best-params YAML
        ("profile", pa.string()),
        ("scenario", pa.string()),
        ("method", pa.string()),
        ("variant", pa.string()),  # named ablation / sensitivity setting, null for none
        ("dataset", pa.string()),
        ("test_dataset", pa.string()),  # Scenario-3: the dataset whose test split gave the anomalies
        ("normal_class", pa.int32()),
        ("anomaly_class", pa.int32()),  # null when no known anomaly class is used
        ("gamma_l", pa.float64()),
        ("gamma_p", pa.float64()),
        ("gamma_l_normal", pa.float64()),
        # What the method's training set did with the labeled anomalies: used (a method that uses labels),
        # dropped / unlabeled (a label-free method trained without them / with them as pollution), none.
        ("labeled_anomalies", pa.string()),
        ("val_fraction", pa.float64()),
        ("seed", pa.int32()),
        ("params", pa.string()),  # the method's full config, JSON
        ("uses_labels", pa.bool_()),  # False: an unsupervised method that ignored the labels it was given
        ("config", pa.string()),  # the whole trial config that trial_key hashes, JSON
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),
        ("auroc_pooled", pa.float64()),  # normal class vs all anomaly classes together
        ("auroc_known", pa.float64()),  # normal class vs the known anomaly class only
        ("auroc_mean_1v1", pa.float64()),  # mean over anomaly classes of normal-vs-that-class
        ("auroc_per_class", pa.string()),  # JSON {class: AUROC} behind auroc_mean_1v1
        ("auroc_val", pa.float64()),  # pooled AUROC on the validation part (model selection)
        ("sample_size", pa.int32()),  # two-sample tests: images per sample
        ("fpr_at_alpha", pa.float64()),  # false positive rate at a p-value threshold (CADet)
        ("extra", pa.string()),  # JSON: further measurements of experiment runners (e.g. rejection rates)
        ("n_unlabeled", pa.int32()),
        ("n_pollution", pa.int32()),
        ("n_labeled_normal", pa.int32()),
        ("n_labeled_anomaly", pa.int32()),
        ("n_val", pa.int32()),
        ("n_train", pa.int32()),  # images the method trained on (without the labeled anomalies it dropped)
        ("n_test", pa.int32()),
        ("epochs", pa.int32()),
        ("final_loss", pa.float64()),
        ("train_seconds", pa.float64()),
        ("score_seconds", pa.float64()),
        ("trial_seconds", pa.float64()),
        ("device", pa.string()),
        ("hostname", pa.string()),
        ("node_id", pa.string()),  # the Ray node the trial ran on
        ("workers", pa.int32()),  # Ray Train workers asked for (0: the trial's own process)
        ("world_size", pa.int32()),  # processes that trained together (DDP ranks)
        ("package_version", pa.string()),
        ("git_sha", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _normalise(row: dict) -> dict:
    """A row as the schema's columns; a key the schema has no column for is a bug, never silently dropped."""
    unknown = sorted(set(row) - set(SCHEMA.names))
    if unknown:
        raise ValueError(f"the result store has no column for {unknown}: add it to SCHEMA or drop it")
    out = {name: row.get(name) for name in SCHEMA.names}
    for name in ("params", "config", "auroc_per_class", "extra"):
        if out[name] is not None and not isinstance(out[name], str):
            out[name] = json.dumps(out[name], sort_keys=True)
    return out


# Per-sample test scores of ok trials (issue: keep every trial's scores), a dataset of its own.
SCORE_SCHEMA = pa.schema(
    [
        ("trial_key", pa.string()),
        ("profile", pa.string()),
        ("scenario", pa.string()),
        ("method", pa.string()),
        ("sample_index", pa.int32()),  # position in the dataset's test split
        ("label", pa.int16()),  # the test image's class
        ("is_anomaly", pa.bool_()),
        ("score", pa.float32()),  # higher = more anomalous, for every method
    ]
)


def scores_uri_for(results_uri: str) -> str:
    """Where scores go by default: beside the results, ``.../results`` -> ``.../scores``."""
    head, _, last = str(results_uri).rstrip("/").rpartition("/")
    name = "scores" if last == "results" else f"{last}-scores"
    return f"{head}/{name}" if head else name


class PartitionedStore:
    """A hive-partitioned Parquet dataset of one file per trial key, each written atomically."""

    def __init__(self, uri: str, schema: pa.Schema):
        self.uri = str(uri)
        if "://" in self.uri:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(self.uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.schema = schema
        self.file_schema = pa.schema([f for f in schema if f.name not in PARTITION_COLUMNS])

    @property
    def location(self) -> str:
        return self.uri if "://" in self.uri else self.root

    def path_for(self, row: dict) -> str:
        parts = [f"{col}={row[col]}" for col in PARTITION_COLUMNS]
        return "/".join([self.root, *parts, f"{row['trial_key']}.parquet"])

    def write_table(self, row: dict, table: pa.Table) -> str:
        """Write ``table`` as the file of ``row``'s key and partitions; whole or not at all."""
        for col in PARTITION_COLUMNS + ("trial_key",):
            if not row.get(col):
                raise ValueError(f"a stored row needs '{col}'")
        final = self.path_for(row)
        directory = final.rsplit("/", 1)[0]
        if self.is_local:
            self.fs.create_dir(directory, recursive=True)
            # Temp name (hidden from readers by the leading dot) + atomic rename.
            tmp = f"{directory}/.{row['trial_key']}.{uuid.uuid4().hex}.tmp"
            pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
            os.replace(tmp, final)
        else:
            # Object stores: the object becomes visible only when the upload completes on close.
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            with self.fs.open_output_stream(final) as out:
                out.write(sink.getvalue())
        return final

    def _dataset(self):
        if self.fs.get_file_info(self.root).type == pafs.FileType.NotFound:
            return None
        partitioning = pads.partitioning(pa.schema([(c, pa.string()) for c in PARTITION_COLUMNS]), flavor="hive")
        # Temp files start with "."; anything starting with "_" is not ours either.
        return pads.dataset(self.root, format="parquet", filesystem=self.fs, partitioning=partitioning,
                            schema=self.schema, ignore_prefixes=[".", "_"])

    def read(self, columns: list[str] | None = None, filter=None) -> pa.Table:
        dataset = self._dataset()
        if dataset is None:
            empty = self.schema.empty_table()
            return empty.select(columns) if columns else empty
        return dataset.to_table(columns=columns, filter=filter)


class ResultStore(PartitionedStore):
    """One result row per trial key."""

    def __init__(self, uri: str):
        super().__init__(uri, SCHEMA)

    def write(self, row: dict) -> str:
        return self.write_rows([row])

    def write_rows(self, rows: list[dict]) -> str:
        """Rows of one trial (several only in Scenario-3, one per test dataset), as one file."""
        rows = [_normalise(r) for r in rows]
        if not all(r.get("status") for r in rows):
            raise ValueError("a result row needs 'status'")
        table = pa.Table.from_pylist([{k: r[k] for k in self.file_schema.names} for r in rows],
                                     schema=self.file_schema)
        return self.write_table(rows[0], table)

    def statuses(self) -> dict[str, str]:
        """trial_key -> status, for deciding what a sweep still has to run."""
        table = self.read(["trial_key", "status"])
        return dict(zip(table["trial_key"].to_pylist(), table["status"].to_pylist(), strict=True))


class ScoreStore(PartitionedStore):
    """One file of per-sample test scores per ok trial key."""

    def __init__(self, uri: str):
        super().__init__(uri, SCORE_SCHEMA)

    def write(self, row: dict, scores, labels, normal_class: int) -> str:
        labels = np.asarray(labels)
        table = pa.table(
            {
                "trial_key": pa.array([row["trial_key"]] * len(labels), pa.string()),
                "sample_index": pa.array(np.arange(len(labels), dtype=np.int32)),
                "label": pa.array(labels.astype(np.int16)),
                "is_anomaly": pa.array(labels != normal_class),
                "score": pa.array(np.asarray(scores, dtype=np.float32)),
            },
            schema=self.file_schema,
        )
        return self.write_table(row, table)


# Sweep manifests: which keys a sweep command asked for, so a summary can count what is missing.
# They live under "_sweeps/", which Parquet readers skip (the leading underscore).
MANIFEST_DIR = "_sweeps"


def write_manifest(store: PartitionedStore, manifest: dict) -> str:
    keys = sorted(manifest["keys"])
    name = f"{manifest['sweep']}-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:12]}.json"
    path = f"{store.root}/{MANIFEST_DIR}/{name}"
    if store.is_local:  # object stores have no folders (marker objects would confuse s3fs readers)
        store.fs.create_dir(f"{store.root}/{MANIFEST_DIR}", recursive=True)
    with store.fs.open_output_stream(path) as out:
        out.write(json.dumps({**manifest, "keys": keys}, indent=1).encode())
    return path


def read_manifests(store: PartitionedStore) -> list[dict]:
    selector = pafs.FileSelector(f"{store.root}/{MANIFEST_DIR}", allow_not_found=True)
    manifests = []
    for info in store.fs.get_file_info(selector):
        if info.is_file and info.path.endswith(".json"):
            with store.fs.open_input_stream(info.path) as f:
                manifests.append(json.loads(f.read()))
    return sorted(manifests, key=lambda m: m.get("created_at", ""))


# ----------------------------------------------------------------------------------------------
# Reading the stores with SQL (duckdb is imported here, not at the top: trial workers only write)


def connect(storage: str, scores: str | None = None):
    """A DuckDB connection with views `results` (and `scores` when present) over the stores.

    The stores are handed to DuckDB as Arrow datasets, so the same code reads a local folder,
    S3 or GCS (DuckDB itself needs no httpfs extension), with hive partitions as columns.
    """
    import duckdb

    con = duckdb.connect()
    result_store = ResultStore(storage)
    con.register("results", result_store._dataset() or result_store.read())
    score_store = ScoreStore(scores or scores_uri_for(result_store.location))
    con.register("scores", score_store._dataset() or score_store.read())
    return con


GRID_ROWS = "(kind IS NULL OR kind <> 'search')"  # search trials have no test AUROCs


def load_rows(storage: str, where: str | None = None, include_search: bool = False):
    """The result rows (a pandas DataFrame) matching the SQL filter ``where``; grid trials only unless
    ``include_search``."""
    con = connect(storage)
    clauses = [c for c in (where, None if include_search else GRID_ROWS) if c]
    query = "SELECT * FROM results" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    return con.sql(query).df()
