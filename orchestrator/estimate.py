"""What will a sweep cost? Trial-hours per device kind and the wall time at a concurrency, before anything runs.

`estimate(trials, store, concurrency=...)` prices every planned trial from, in this order:

1. the store: the measured span (started_at to finished_at: the trial, its Ray Train start-up and its row)
   of the `ok` rows of the same method and profile, on the same dataset where there are such rows; the median,
   per device kind (a row's `device`: "cpu:2cores", "cuda:NVIDIA H200"), the training part scaled by
   planned epochs / the row's epochs when a trial trains longer or shorter (`--set epochs=...`);
2. else the benchmark records: a record (benchmarks/records/*.json) with a "trial_estimates" list of
   {"method", "profile", "device", "epochs", "trial_seconds"} (benchmarks/gpu_check.py and
   benchmarks/compile_cpu.py write them), scaled by epochs the same way;
3. else it says it has no basis for that method and profile.

The wall time, from the sweep's first write (its manifest) to its last row, is a list schedule of the priced
trials in planned order onto `concurrency` slots (the sweep's order and its max_concurrent_trials), plus the
sweep's start-up (Ray, Tune) and a warm-up of each slot's first trial (a fresh process loads the data): both
measured in the store's manifests and rows, else from benchmarks/records/ray_overhead.json. The command's own
Python start and planning before that first write (seconds) are not in it. What it cannot know: a trial on
more (or fewer) training images than the measured ones (time grows about linearly with n_train), another
machine's load, trials without a basis.

>>> from orchestrator.grid.trial import Trial
>>> est = estimate([Trial("one_class", "scenario2", "quick", "digits", "hscl", 0, 1)], None, records=None)
>>> est.kinds, est.unpriced
({}, {'hscl/quick': 1})
"""

from __future__ import annotations

import heapq
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.grid.trial import Trial

RECORDS = Path(__file__).resolve().parent.parent / "benchmarks" / "records"
COLUMNS = ["method", "profile", "dataset", "device", "status", "trial_seconds", "train_seconds", "started_at",
           "finished_at", "epochs"]


@dataclass
class Basis:
    """What one (method, profile) costs on one device kind: seconds per trial at `epochs`, and where from."""

    seconds: float
    train_seconds: float
    epochs: int
    source: str  # "store: 12 rows (dataset imagefolder:cifar10-jpeg)" or "record: gpu_check.json"

    def price(self, planned_epochs: int | None) -> float:
        """Seconds for a trial of planned_epochs: the training part scales with epochs, the rest stays."""
        if not planned_epochs or not self.epochs or planned_epochs == self.epochs:
            return self.seconds
        return self.seconds - self.train_seconds + self.train_seconds * planned_epochs / self.epochs


@dataclass
class KindEstimate:
    """One device kind: the trials it can price, their trial-hours and the sweep's wall time there."""

    device: str
    trials: int = 0
    trial_seconds: float = 0.0
    wall_seconds: float = 0.0
    startup_seconds: float = 0.0
    warmup_seconds: float = 0.0
    concurrency: int = 1
    bases: dict[str, Basis] = field(default_factory=dict)  # "method/profile" -> its basis

    @property
    def trial_hours(self) -> float:
        return self.trial_seconds / 3600


@dataclass
class SweepEstimate:
    planned: int
    kinds: dict[str, KindEstimate]  # device kind -> its estimate
    unpriced: dict[str, int]  # "method/profile" -> trials that no device kind could price


def device_family(device: str) -> str:
    """ "cuda:NVIDIA H200" -> "cuda", "cpu:2cores" -> "cpu" (the key of a concurrency per family)."""
    return str(device).split(":", 1)[0]


def _store_rows(store):
    if store is None:
        return None
    from orchestrator.store import ResultStore

    store = ResultStore(store) if isinstance(store, str) else store
    rows = store.read(COLUMNS).to_pandas()
    return rows[rows["status"] == "ok"]


def _store_bases(rows, method: str, profile: str, dataset: str) -> dict[str, Basis]:
    """device -> Basis from the ok rows of method/profile (the same dataset's rows when there are any)."""
    if rows is None or rows.empty:
        return {}
    mine = rows[(rows["method"] == method) & (rows["profile"] == profile)]
    same = mine[mine["dataset"] == dataset]
    picked, where = (same, f"dataset {dataset}") if len(same) else (mine, "other datasets")
    bases = {}
    for device, group in picked.groupby("device"):
        span = (group["finished_at"] - group["started_at"]).dt.total_seconds()
        span = span.where(span.notna() & (span > 0), group["trial_seconds"])
        bases[device] = Basis(float(span.median()), float(group["train_seconds"].median()),
                              int(group["epochs"].median()), f"store: {len(group)} rows ({where})")
    return bases


def _record_bases(records: Path | None) -> dict[tuple[str, str], dict[str, Basis]]:
    """(method, profile) -> device -> Basis from the benchmark records' "trial_estimates" lists."""
    out: dict[tuple[str, str], dict[str, Basis]] = defaultdict(dict)
    if records is None or not Path(records).is_dir():
        return out
    for path in sorted(Path(records).glob("*.json")):
        try:
            entries = json.loads(path.read_text()).get("trial_estimates", [])
        except (OSError, ValueError, AttributeError):
            continue
        for e in entries:
            key = (e["method"], e["profile"])
            seconds = float(e["trial_seconds"])
            if e["device"] not in out[key]:
                out[key][e["device"]] = Basis(seconds, float(e.get("train_seconds", seconds)), int(e.get("epochs", 0)),
                                              f"record: {path.name}")
    return out


def _startup_seconds(store, records: Path | None) -> tuple[float, float]:
    """(start-up, warm-up per slot) of a sweep, measured in the store: the median gap between a manifest's
    creation (the sweep's first write) and its first trial's start (Ray, Tune, the data); and how much longer
    the first wave of trials (those started before any finished: each in a fresh process that loads the data)
    took than the sweep's median trial. Without manifests: ray_overhead.json's Ray start-up and first-trial extra."""
    starts, warmups = [], []
    if store is not None:
        import pandas as pd

        from orchestrator.store import ResultStore, read_manifests

        store = ResultStore(store) if isinstance(store, str) else store
        spans = store.read(["trial_key", "started_at", "finished_at"]).to_pandas()
        spans = spans.dropna().set_index("trial_key")
        for manifest in read_manifests(store) if len(spans) else []:
            created = pd.Timestamp(manifest["created_at"])
            mine = spans[spans.index.isin(manifest["keys"]) & (spans["started_at"] >= created)]
            if mine.empty:
                continue
            starts.append((mine["started_at"].min() - created).total_seconds())
            seconds = (mine["finished_at"] - mine["started_at"]).dt.total_seconds()
            first_wave = seconds[mine["started_at"] < mine["finished_at"].min()]
            warmups.append(max(0.0, float(first_wave.mean() - seconds.median())))
    if starts:
        return float(statistics.median(starts)), float(statistics.median(warmups))
    path = Path(records) / "ray_overhead.json" if records is not None else None
    if path is not None and path.is_file():
        overhead = json.loads(path.read_text())
        return float(overhead.get("ray_init_seconds", 0.0)), float(overhead.get("first_trial_extra_seconds", 0.0))
    return 0.0, 0.0


def _makespan(seconds: list[float], slots: int, warmup: float = 0.0) -> float:
    """Wall time of running the trials in order, each on the first free one of `slots` (Tune's FIFO grid), the
    first trial of each slot `warmup` seconds longer."""
    free = [0.0] * max(1, slots)
    seconds = [s + warmup if i < len(free) else s for i, s in enumerate(seconds)]
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


def estimate(trials: list[Trial], store, *, concurrency: int | dict[str, int] = 1,
             records: Path | str | None = RECORDS) -> SweepEstimate:
    """Price the planned `trials` (what a sweep would run) per device kind: see the module docstring.
    store: a ResultStore, its URI or None; concurrency: trials at once (one number, or per device family,
    e.g. {"cpu": 2, "cuda": 4}); records: the benchmark records folder (None: not used)."""
    rows = _store_rows(store)
    from_records = _record_bases(Path(records) if records is not None else None)
    startup, warmup = _startup_seconds(store, Path(records) if records is not None else None)
    priced: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, KindEstimate] = {}
    unpriced: dict[str, int] = defaultdict(int)
    cache: dict[tuple[str, str, str], dict[str, Basis]] = {}
    for trial in trials:
        key = (trial.method, trial.profile, trial.dataset)
        if key not in cache:
            bases = _store_bases(rows, *key)
            for device, basis in from_records.get(key[:2], {}).items():
                bases.setdefault(device, basis)  # the store's measurement first
            cache[key] = bases
        if not cache[key]:
            unpriced[f"{trial.method}/{trial.profile}"] += 1
            continue
        for device, basis in cache[key].items():
            kind = kinds.setdefault(device, KindEstimate(device))
            kind.bases[f"{trial.method}/{trial.profile}"] = basis
            seconds = basis.price(trial.params.get("epochs"))
            kind.trials += 1
            kind.trial_seconds += seconds
            priced[device].append(seconds)
    for device, kind in kinds.items():
        slots = concurrency if isinstance(concurrency, int) else concurrency.get(device_family(device), 1)
        kind.concurrency, kind.startup_seconds, kind.warmup_seconds = max(1, int(slots)), startup, warmup
        kind.wall_seconds = startup + _makespan(priced[device], kind.concurrency, warmup)
    return SweepEstimate(len(trials), kinds, dict(unpriced))


def local_concurrency(cpus_per_trial: float = 1.0, gpus_per_trial: float | None = None, workers: int = 0,
                      max_concurrent: int | None = None, trials_per_gpu: int = 1) -> dict[str, int]:
    """Trials at once on this machine per device family, as the sweep's run() computes it for a local Ray."""
    import os

    import torch

    per_trial_cpus = cpus_per_trial * max(1, workers)
    cpu = max(1, int((os.cpu_count() or 1) // per_trial_cpus))
    out = {"cpu": min(cpu, max_concurrent or cpu)}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        gpt = gpus_per_trial or 1.0 / trials_per_gpu
        out["cuda"] = max(1, min(cpu, int(gpus // (gpt * max(1, workers))), max_concurrent or cpu))
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_estimate(est: SweepEstimate) -> str:
    """The estimate as a few lines for --dry-run."""
    lines = [f"estimated cost of the {est.planned} trials to run:"]
    if not est.kinds:
        lines.append("  no basis: the store has no measured trial of these methods and profiles, and no benchmark "
                     "record prices them")
    for device, kind in sorted(est.kinds.items()):
        lines.append(f"  {device}: {kind.trials} trials, {kind.trial_hours:.2f} trial-hours; wall "
                     f"{_hours(kind.wall_seconds)} at {kind.concurrency} at a time "
                     f"(start-up {kind.startup_seconds:.0f} s, first trial of a slot +{kind.warmup_seconds:.0f} s)")
        for name, basis in sorted(kind.bases.items()):
            lines.append(f"    {name}: {basis.seconds:.1f} s a trial at {basis.epochs} epochs ({basis.source})")
    missing = {k: v for k, v in est.unpriced.items() if v}
    if missing:
        lines.append("  no basis for " + ", ".join(f"{k} ({n} trials)" for k, n in sorted(missing.items()))
                     + ": not counted above")
    return "\n".join(lines)
