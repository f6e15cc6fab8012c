"""A reproducibility audit: re-run a seeded sample of a store's ok trials from their stored configs and say
how far the re-run's numbers are from the stored ones.

Each picked row's `config` is the whole Trial (orchestrator/grid/trial.py) that its key hashes, so the re-run
is the same experiment with the same seed: `get_kind(trial.kind).run(trial, data)`, as a sweep's train_loop
runs it, in this process with one CPU thread (a sweep's default: --cpus-per-trial 1). The code is today's:
when a row's `git_sha` differs from the checkout's, the audit says so (a difference then need not be
non-determinism). Where the store keeps per-sample test scores beside the rows, they are compared too.

On a CPU the re-run is bit-identical: every method builds its network from a seeded generator and draws its
batches and augmentations from generators seeded by the trial (methods/trainer.py), and the CPU kernels a
trial uses are deterministic at a fixed thread count. On a GPU the audit reports whatever spread there is
(cuDNN and atomics-based kernels need not repeat bit for bit); nothing is made deterministic here, so the
spread is the one a re-run sweep would see.

Nothing is written to the store unless asked: `record` writes a small JSON (the store's `_audit.json` by
default, which Parquet readers skip like `_sweeps/`), read by the reproduction report's audit line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.data.datasets import DataSource
from orchestrator.store import connect, load_rows

RECORD_NAME = "_audit.json"  # in the store's folder; the leading underscore hides it from Parquet readers
MEASURED = {"auroc_pooled", "auroc_known", "auroc_mean_1v1", "auroc_val", "fpr_at_alpha"}


@dataclass
class Audit:
    """Per re-run row: the stored and re-run metric and their difference; and what was run where."""

    metric: str
    lines: pd.DataFrame
    device: str
    code: str  # this checkout's git sha
    sample: int
    seed: int
    candidates: int  # ok trials the sample was drawn from
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        d = self.lines["difference"].dropna().abs()
        return float(d.max()) if len(d) else float("nan")

    @property
    def identical(self) -> int:
        return int((self.lines["difference"] == 0).sum())

    def summary_line(self) -> str:
        n_rows, n_trials = len(self.lines), self.lines["trial_key"].nunique()
        rows = f" ({n_rows} rows)" if n_rows != n_trials else ""
        other_code = int((~self.lines["same_code"]).sum())
        code = (f"; {other_code} row(s) stored by other code than this checkout's ({self.code})" if other_code
                else f"; same code ({self.code})")
        return (f"{n_trials} trials re-run{rows} on {self.device}, max |Δ {self.metric}| = {self.max_abs_diff:.3g}, "
                f"bit-identical: {self.identical} of {n_rows}{code}")

    def record(self, store_name: str) -> dict:
        """The JSON the reproduction report reads (numbers only; no dates, so it is a function of the run)."""
        trials = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in line.items()}
                  for line in self.lines.to_dict("records")]
        return {"store": store_name, "metric": self.metric, "sample": self.sample, "seed": self.seed,
                "candidates": self.candidates, "device": self.device, "code": self.code,
                "max_abs_diff": None if np.isnan(self.max_abs_diff) else self.max_abs_diff,
                "identical": self.identical, "rows": len(self.lines), "trials": trials}


def pick(rows: pd.DataFrame, sample: int, seed: int = 0) -> list[str]:
    """`sample` distinct trial keys of the ok rows, drawn with numpy's generator seeded by `seed`, sorted."""
    keys = sorted(rows.loc[rows["status"] == "ok", "trial_key"].unique())
    if sample < 1:
        raise ValueError(f"--sample must be at least 1, got {sample}")
    if sample > len(keys):
        raise ValueError(f"--sample {sample}: the store has only {len(keys)} ok trial(s) matching")
    chosen = np.random.default_rng(seed).choice(len(keys), size=sample, replace=False)
    return sorted(keys[i] for i in chosen)


def _identity(values: dict) -> dict:
    """The fields that tell one row of a multi-row trial from another (test dataset, sample size, attack...):
    strings and integers, not measurements."""
    return {k: v for k, v in values.items()
            if isinstance(v, (str, int, np.integer)) and not isinstance(v, bool) and not k.startswith("n_")}


def _match(stored: pd.DataFrame, reruns: list[dict]) -> list[tuple[pd.Series, dict]]:
    """Pairs (stored row, re-run values) of one trial."""
    if len(stored) == 1 and len(reruns) == 1:
        return [(stored.iloc[0], reruns[0])]
    pairs = []
    for values in reruns:
        ident = {k: v for k, v in _identity(values).items() if k in stored}
        mask = np.ones(len(stored), dtype=bool)
        for k, v in ident.items():
            mask &= (stored[k] == v).to_numpy()
        if mask.sum() == 1:
            pairs.append((stored[mask].iloc[0], values))
    return pairs


def _stored_scores(storage: str, key: str) -> np.ndarray | None:
    try:
        got = connect(storage).sql(
            f"SELECT score FROM scores WHERE trial_key = '{key}' ORDER BY sample_index").df()
    except Exception:  # a store without a score store beside it
        return None
    return got["score"].to_numpy() if len(got) else None


def plan(storage: str, sample: int, seed: int = 0, where: str | None = None,
         data: DataSource | None = None) -> tuple[pd.DataFrame, list[str], DataSource, int]:
    """Validate and choose before any training: (the ok rows, the picked keys, the data source, candidates).
    Raises ValueError (one line) when the sample is impossible or a trial's data cannot be found."""
    from orchestrator.experiments import get_kind
    from orchestrator.grid.trial import Trial

    data = data or DataSource()
    rows = load_rows(storage, " AND ".join(filter(None, ["status = 'ok'", f"({where})" if where else None])))
    keys = pick(rows, sample, seed)
    for key in keys:
        config = rows.loc[rows["trial_key"] == key, "config"].iloc[0]
        if not config:
            raise ValueError(f"trial {key} has no stored config: it cannot be re-run")
        trial = Trial.from_dict(json.loads(config))
        kind = get_kind(trial.kind)
        data.check(trial.dataset)
        if kind.check is not None:
            kind.check(trial, data)
    return rows, keys, data, int(rows["trial_key"].nunique())


def audit(storage: str, sample: int, seed: int = 0, where: str | None = None, data: DataSource | None = None,
          metric: str = "auroc_pooled", threads: int = 1, progress=None) -> Audit:
    """Re-run `sample` ok trials of the store (seeded choice) and compare `metric` (and the stored scores)."""
    import torch

    from orchestrator.cli import git_sha
    from orchestrator.experiments import get_kind
    from orchestrator.experiments.fitting import device_name, pick_device
    from orchestrator.grid.trial import Trial

    if metric not in MEASURED:
        raise ValueError(f"unknown metric '{metric}'; choose from: {', '.join(sorted(MEASURED))}")
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    rows, keys, data, candidates = plan(storage, sample, seed, where, data)
    code = git_sha()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    lines = []
    try:
        for key in keys:
            stored = rows[rows["trial_key"] == key]
            trial = Trial.from_dict(json.loads(stored["config"].iloc[0]))
            result = get_kind(trial.kind).run(trial, data)
            reruns = result.pop("rows", None) or [result]
            scores = result.get("test_scores")
            score_diff = float("nan")
            if scores is not None:
                kept = _stored_scores(storage, key)
                if kept is not None and len(kept) == len(scores):
                    score_diff = float(np.max(np.abs(np.asarray(scores, dtype=np.float32) - kept)))
            for row, values in _match(stored, reruns):
                was, now = row[metric], {**result, **values}.get(metric)
                stored_sha = row.get("git_sha") or "unknown"
                line = {"trial_key": key, "scenario": row["scenario"], "method": row["method"],
                        "variant": row.get("variant"), "normal_class": row["normal_class"],
                        "anomaly_class": row["anomaly_class"], "gamma_p": row["gamma_p"], "seed": int(row["seed"]),
                        **({"test_dataset": row["test_dataset"]} if pd.notna(row.get("test_dataset")) else {}),
                        "stored": None if pd.isna(was) else float(was),
                        "rerun": None if now is None or pd.isna(now) else float(now),
                        "stored_device": row.get("device"), "stored_code": stored_sha,
                        "same_code": stored_sha == code, "max_abs_score_diff": score_diff}
                line["difference"] = (line["rerun"] - line["stored"] if None not in (line["rerun"], line["stored"])
                                      else float("nan"))
                lines.append(line)
            if progress:
                progress(lines[-1] if lines else None)
    finally:
        torch.set_num_threads(before)
    frame = pd.DataFrame(lines)
    if frame.empty:
        raise ValueError(f"no re-run row matched a stored row of {', '.join(keys)}")
    frame["difference"] = frame["difference"].astype(float)
    notes = []
    device = device_name(pick_device())
    elsewhere = sorted(d for d in set(frame["stored_device"].dropna()) if d.split(":")[0] != device.split(":")[0])
    if elsewhere:
        notes.append(f"stored rows ran on {', '.join(elsewhere)}, the re-run on {device}: floating-point results "
                     "need not be bit-identical across devices")
    other = sorted(set(frame.loc[~frame["same_code"], "stored_code"]))
    if other:
        notes.append(f"the stored rows were written by git {', '.join(other)}, this checkout is {code}: "
                     "a difference may come from the code, not from non-determinism")
    return Audit(metric=metric, lines=frame, device=device, code=code, sample=sample,
                 seed=seed, candidates=candidates, notes=notes)


def record_path(storage: str, path: str | None = None) -> Path:
    """Where the record goes: `path`, else the store's `_audit.json` (local stores)."""
    if path:
        return Path(path)
    if "://" in str(storage):
        raise ValueError("--record on an object store: name a local file, e.g. --record audit.json")
    return Path(storage) / RECORD_NAME


def write_record(result: Audit, storage: str, path: str | None = None) -> Path:
    from orchestrator.report.reproduction import shown_path

    out = record_path(storage, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.record(shown_path(storage)), indent=1, sort_keys=True, default=str) + "\n")
    return out


def read_record(storage: str) -> dict | None:
    """The audit record in the store's folder, or None."""
    if "://" in str(storage):
        return None
    path = Path(storage) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def record_line(record: dict | None, store: str = "STORE") -> str:
    """The report's one audit line."""
    if not record:
        return (f"No audit record in the store: `python -m orchestrator.results --storage {store} audit --sample K "
                "--record` re-runs K of its trials and writes one.")
    diff = record.get("max_abs_diff")
    other = sum(1 for t in record.get("trials", []) if not t.get("same_code", True))
    n = len({t["trial_key"] for t in record.get("trials", [])})
    return (f"{n} trials re-run from their stored configs on {record['device']}, max |Δ {record['metric']}| = "
            f"{'n/a' if diff is None else f'{diff:.3g}'} (bit-identical: {record['identical']} of {record['rows']} "
            f"rows; drawn with seed {record['seed']} from {record['candidates']} ok trials)"
            + (f"; {other} row(s) were stored by other code than the re-run's (git {record['code']})." if other
               else f"; same code as the stored rows (git {record['code']})."))
