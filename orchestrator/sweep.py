"""Run a scenario's whole grid on Ray: ``python -m orchestrator.sweep scenario2``.

Every grid point (a "trial" in the store and the progress lines) runs one Ray Train ``TorchTrainer``
inside a Ray Tune trial and writes its row to the Parquet store the moment it ends. A Tune trial runs
one grid point, or a pack of a few short ones in turn (the quick profile: Ray's cost is per Tune trial).
Before any work starts the sweep checks all input (scenario, profile, methods, dataset, ``--set`` keys,
whether the data can supply every ratio) and reads the store: keys already ``ok`` are skipped, ``failed``
ones run again. So the same command, run again after a crash or Ctrl-C, finishes only what is missing.

Examples::

    python -m orchestrator.sweep scenario2                                  # quick: digits on a laptop
    python -m orchestrator.sweep scenario2 --normal-classes 0 --anomaly-classes 1,2 --set epochs=5
    python -m orchestrator.sweep scenario2 --dry-run                        # what is done, what would run
    python -m orchestrator.sweep scenario2 --profile paper --address auto --storage s3://bucket/sweeps
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

from pyarrow import ArrowException

from methods.registry import METHODS
from orchestrator.cli import (
    Parser,
    UserError,
    anomaly_classes,
    fail,
    float_list,
    git_sha,
    int_list,
    name_list,
    package_version,
    parse_overrides,
    read_params_file,
)
from orchestrator.cluster import declared_footprint, read_capacity, resolve
from orchestrator.data.datasets import DatasetError, DataSource
from orchestrator.data.splits import SplitError
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.grid.trial import Trial
from orchestrator.planner import Request, plan
from orchestrator.report.tables import print_table, row_order
from orchestrator.runner import Context
from orchestrator.store import ResultStore, scores_uri_for, write_manifest

# choice: trials per Tuner run. The driver's memory grows with the trials one Tuner holds (about
# 0.24 MB a trial measured, issue 23), so a grid runs as equal batches of at most this many; a
# batch's start costs a few seconds (benchmarks/driver_scale.py measures both).
TRIALS_PER_TUNER = 500
# How long after the store holds every row of a batch the driver still waits for Ray to return.
RAY_GRACE_S = 60.0
TRIM_EVERY_S = 30.0  # how often the waiting driver hands freed memory back (release_freed_memory)


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="python -m orchestrator.sweep", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", help=f"one of: {', '.join(SCENARIOS)}")
    p.add_argument("--profile", default="quick", help=f"one of: {', '.join(PROFILES)} (default quick)")
    p.add_argument("--methods", default=None, type=name_list, help="comma-separated methods (default: the scenario's)")
    p.add_argument("--dataset", default=None, help="override the profile's dataset (a name or an ImageFolder path)")
    p.add_argument("--labeled-dataset", default=None, help="scenario3: the dataset of the labeled anomalies")
    p.add_argument("--test-datasets", default=None, type=name_list,
                   help="scenario3: datasets whose test splits are the test anomalies; twosample: further shifts")
    p.add_argument("--data-root", default=None, help="folder holding a local copy of the dataset")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--normal-classes", type=int_list, default=None, help="e.g. 0,1 (default: all)")
    p.add_argument("--anomaly-classes", type=anomaly_classes, default=None,
                   help="known anomaly classes, e.g. 1,2 (default: all), or 'next': one per normal class, "
                        "(normal + 1) mod C")
    p.add_argument("--gamma-p", type=float_list, default=None, help="pollution ratios (default: the scenario's)")
    p.add_argument("--gamma-l", type=float_list, default=None, help="labeled anomaly ratios (default: the scenario's)")
    p.add_argument("--seeds", type=int_list, default=[0], help="comma-separated replicate seeds (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method parameter (e.g. --set epochs=5 --set lambda1=0.5); repeatable")
    p.add_argument("--params-from", default=None, metavar="YAML",
                   help="a method's parameters from a file, e.g. a search's best (search/hscl-best.yaml)")
    p.add_argument("--storage", default="results", help="result store: a folder, s3://... or gs://...")
    p.add_argument("--scores-storage", default=None,
                   help="where per-sample test scores go (default: beside the results, results -> scores)")
    p.add_argument("--no-scores", action="store_true", help="do not keep per-sample test scores")
    p.add_argument("--sweep-name", default=None, help="label stored in every row (default SCENARIO-PROFILE)")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (per worker with --workers)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share per trial, e.g. 0.25 packs 4 trials on a GPU; each trial's GPU memory is capped "
                        "to its share (default: from the card's memory and the trials' footprint, 0 on a cluster "
                        "that has and can launch no GPU)")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="memory of one GPU of the cluster, for the default --gpus-per-trial (default: a GPU on this "
                        "machine, else the accelerator type Ray reports, else 24)")
    p.add_argument("--trials-per-tuner", type=int, default=TRIALS_PER_TUNER,
                   help=f"run the grid as Tuner runs of at most this many trials (default {TRIALS_PER_TUNER}): "
                        "keeps the driver's memory flat")
    p.add_argument("--points-per-trial", type=int, default=None,
                   help="grid points one Ray Tune trial runs in turn, each its own row (default: up to the "
                        "profile's maximum, 5 for quick and 1 otherwise, while every slot still gets 8 Tune trials)")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray Train workers per trial: 0 = the trial's own process (fastest for one device); "
                        "N >= 1 = N DDP worker actors")
    p.add_argument("--address", default=None,
                   help="Ray address ('auto' on a cluster node); default: the job's cluster inside `ray job submit` "
                        "(RAY_ADDRESS), else a new local Ray")
    p.add_argument("--report-epochs", action="store_true", help="report per-epoch metrics to Tune (for schedulers)")
    p.add_argument("--dry-run", action="store_true", help="print the grid, what is done and what would run")
    return p.parse_args(argv)


@dataclasses.dataclass
class Plan:
    trials: list[Trial]  # the whole grid
    todo: list[Trial]  # what still has to run
    done: int
    failed_before: int
    store: ResultStore
    ctx: Context


def check_resources(args: argparse.Namespace) -> None:
    if args.workers < 0 or args.cpus_per_trial <= 0 or (args.gpus_per_trial or 0) < 0:
        raise UserError("--workers must be >= 0, --cpus-per-trial > 0 and --gpus-per-trial >= 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial > 1 and args.gpus_per_trial != int(args.gpus_per_trial):
        raise UserError(f"--gpus-per-trial {args.gpus_per_trial:g}: a share above 1 must be a whole number of GPUs")
    if (args.gpu_memory_gib is not None and args.gpu_memory_gib <= 0) or args.trials_per_tuner < 1:
        raise UserError("--gpu-memory-gib must be > 0 and --trials-per-tuner at least 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError("--max-concurrent must be at least 1")
    if args.points_per_trial is not None and args.points_per_trial < 1:
        raise UserError("--points-per-trial must be at least 1")
    if (args.points_per_trial or 1) > 1 and args.report_epochs:
        raise UserError("--report-epochs reports one training's epochs to Tune: use it with --points-per-trial 1")


def request_from(args: argparse.Namespace) -> Request:
    """The command line as a planner request (--set and --params-from typed against the methods' Configs)."""
    if args.scenario not in SCENARIOS:
        raise UserError(f"unknown scenario '{args.scenario}'; choose from: {', '.join(SCENARIOS)}")
    methods = args.methods or list(SCENARIOS[args.scenario].methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}'; known methods: {', '.join(METHODS)}")
    method_over, split_over = parse_overrides(args.overrides, methods)
    return Request(scenario=args.scenario, profile=args.profile, methods=methods, dataset=args.dataset,
                   seeds=args.seeds, normal_classes=args.normal_classes, anomaly_classes=args.anomaly_classes,
                   gamma_p=args.gamma_p, gamma_l=args.gamma_l, overrides=method_over,
                   method_overrides=read_params_file(args.params_from, methods) if args.params_from else {},
                   labeled_dataset=args.labeled_dataset, test_datasets=args.test_datasets, **split_over)


def build_plan(args: argparse.Namespace) -> Plan:
    """Validate everything and decide what to run. Raises UserError / DatasetError / SplitError."""
    check_resources(args)
    source = DataSource(root=os.path.abspath(args.data_root) if args.data_root else None, download=args.download)
    trials, source = plan(request_from(args), source)
    store = ResultStore(args.storage)
    keys = {t.key for t in trials}
    rows = read_rows(store, keys, ["trial_key", "status"])
    statuses = dict(zip(rows["trial_key"], rows["status"], strict=True))
    todo = [t for t in trials if statuses.get(t.key) != "ok"]
    ctx = Context(
        storage=store.location,
        scores_storage=None if args.no_scores else (args.scores_storage or scores_uri_for(store.location)),
        data=source, sweep=args.sweep_name or f"{args.scenario}-{args.profile}",
        workers=args.workers, cpus_per_worker=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial or 0.0,
        report_epochs=args.report_epochs,
        params_source=os.path.abspath(args.params_from) if args.params_from else None,
        package_version=package_version(), git_sha=git_sha())
    failed_before = sum(statuses.get(t.key) == "failed" for t in trials)
    return Plan(trials, todo, len(trials) - len(todo), failed_before, store, ctx)


class Progress:
    """Concise progress: trials done / total, failures, ETA; at most one line every few seconds."""

    def __init__(self, total: int, every_s: float = 5.0):
        from ray import tune

        class _Callback(tune.Callback):  # a Tune trial reports how many of its grid points ended ok / failed
            def on_trial_complete(cb, iteration, trials, trial, **info):
                result = trial.last_result or {}
                self.update(ok=result.get("points_ok", 0), failed=result.get("points_failed", 0))

            def on_trial_error(cb, iteration, trials, trial, **info):
                self.update(ok=0, failed=len(trial.config.get("trials", [None])))

        self.callback = _Callback()
        self.total, self.every_s = total, every_s
        self.ok = self.failed = 0  # updated only from the Tuner's thread
        self.start = self.last = time.monotonic()

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def update(self, ok: int, failed: int):
        self.ok += ok
        self.failed += failed
        now, done = time.monotonic(), self.done
        if now - self.last >= self.every_s or done == self.total:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / done * (self.total - done)
            print(f"  {done}/{self.total} trials  ok {self.ok}  failed {self.failed}  "
                  f"elapsed {_fmt(elapsed)}  eta {_fmt(eta)}", flush=True)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def measured_footprint(store: ResultStore, profile: str, methods: list[str]) -> float | None:
    """The largest GPU peak (GiB) stored rows of this profile and these methods measured, if any."""
    import pyarrow.compute as pc

    table = store.read(["method", "profile", "status", "extra"],
                       filter=(pc.field("profile") == profile) & pc.field("method").isin(methods))
    peaks = []
    for extra, status in zip(table["extra"].to_pylist(), table["status"].to_pylist(), strict=True):
        if status == "ok" and extra and "gpu_peak_gib" in extra:
            peaks.append(float(json.loads(extra)["gpu_peak_gib"]))
    return max(peaks) if peaks else None


# choice: measured (issue 23): reading a store of 2,700 one-row files in one scan raised the driver's peak
# memory by 358 MB (per-file overhead, whatever the columns), more than the whole Tune run of those trials.
# The driver lists file names to see which keys are stored, and reads rows in chunks of this many files.
FILES_PER_READ = 250


def stored_files(store: ResultStore) -> dict[str, str]:
    """trial_key -> path of its file, from a listing (no file is opened)."""
    import pyarrow.fs as pafs

    if store.fs.get_file_info(store.root).type == pafs.FileType.NotFound:
        return {}
    infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True))
    return {i.base_name[:-len(".parquet")]: i.path for i in infos
            if i.is_file and i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_"))}


def read_rows(store: ResultStore, keys=None, columns: list[str] | None = None):
    """The stored rows of ``keys`` (all when None) as a pandas DataFrame, read FILES_PER_READ files at a time."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from orchestrator.store import PARTITION_COLUMNS

    paths = [p for k, p in stored_files(store).items() if keys is None or k in keys]
    columns = [c for c in (columns or store.schema.names) if c in store.schema.names]
    partitioning = pads.partitioning(pa.schema([(c, pa.string()) for c in PARTITION_COLUMNS]), flavor="hive")
    tables = []
    for i in range(0, len(paths), FILES_PER_READ):
        chunk = pads.dataset(paths[i:i + FILES_PER_READ], format="parquet", filesystem=store.fs,
                             partitioning=partitioning, partition_base_dir=store.root, schema=store.schema)
        tables.append(chunk.to_table(columns=columns))
        release_freed_memory()
    return (pa.concat_tables(tables) if tables else store.schema.empty_table().select(columns)).to_pandas()


# choice: packing leaves at least this many Tune trials per slot, so no slot idles long at the end of a batch.
TUNE_TRIALS_PER_SLOT = 8


def points_per_tune_trial(args: argparse.Namespace, points: int, concurrent: int) -> int:
    """How many grid points one Tune trial runs: --points-per-trial, else as many as the profile allows
    while each of the ``concurrent`` slots still gets TUNE_TRIALS_PER_SLOT trials (1 with --report-epochs,
    whose per-epoch metrics are one training's, and with --workers, whose trials are long DDP runs)."""
    if args.points_per_trial:
        return args.points_per_trial
    if args.report_epochs or args.workers > 0:
        return 1
    return max(1, min(PROFILES[args.profile].max_points_per_tune_trial, points // (concurrent * TUNE_TRIALS_PER_SLOT)))


def packs_of(trials: list[Trial], size: int) -> list[list[Trial]]:
    """Consecutive grid points of one method and kind, at most ``size`` in each (so a pack's points cost alike)."""
    packs: list[list[Trial]] = []
    for trial in trials:
        last = packs[-1] if packs else None
        if last and len(last) < size and (last[-1].method, last[-1].kind) == (trial.method, trial.kind):
            last.append(trial)
        else:
            packs.append([trial])
    return packs


def batches_of(trials: list, size: int) -> list[list]:
    """Equal batches of at most ``size`` trials, so no batch is a short tail."""
    count = max(1, math.ceil(len(trials) / size))
    per = math.ceil(len(trials) / count)
    return [trials[i:i + per] for i in range(0, len(trials), per)]


# choice: measured (benchmarks/driver_scale.py, issue 23): the driver's resident memory grew by about
# 0.3 MB a trial and stayed there across Tuner batches (876 MB at 270 trials, 1,461 MB at 2,700 in 6
# batches) while its Python objects did not grow: glibc kept what Ray's threads had freed. With
# malloc_trim after each of 3 batches of 54 trials: 825 -> 802 MB, and flat from batch to batch.
def release_freed_memory(collect: bool = False) -> None:
    """Hand the memory Ray and Tune have freed back to the OS (glibc keeps it otherwise)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back this way
        pass


def wait_for_fit(fit: threading.Thread, store: ResultStore, keys: set[str], progress: Progress,
                 grace_s: float = RAY_GRACE_S, poll_s: float = 5.0, store_every_s: float = 120.0) -> bool:
    """Wait until ``fit`` returns, or until the store holds a row for every key and ``fit`` still has
    not returned ``grace_s`` later. Returns True when Ray did not return (the driver goes on without it).

    The store is read when the progress callbacks say the batch is done, else every ``store_every_s``:
    reading a large store on every poll would cost more than the trials."""
    done_before, last_read, complete_since = progress.done, time.monotonic(), None
    last_trim = last_read
    while True:
        fit.join(timeout=poll_s)
        if not fit.is_alive():
            return False
        now = time.monotonic()
        if now - last_trim >= TRIM_EVERY_S:  # keeps the driver flat within a batch too
            release_freed_memory()
            last_trim = now
        if complete_since is None and (progress.done - done_before >= len(keys) or now - last_read >= store_every_s):
            last_read = now
            if keys <= set(stored_files(store)):
                complete_since = now
        if complete_since is not None and now - complete_since >= grace_s:
            print(f"note: the store holds every row of this batch but Ray has not returned {grace_s:.0f} s later; "
                  "going on without it", flush=True)
            return True


def run(plan: Plan, args: argparse.Namespace) -> bool:
    """Run the plan's trials on Ray Tune, in bounded batches; every trial writes its own row.

    Returns True when Ray did not return from a batch whose rows were all stored (main then exits
    without waiting on Ray's threads)."""
    # Tune's per-trial CSV/JSON/TensorBoard loggers cost time and files; the store is the record.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Tune's own console output (config box, per-trial tables) would drown the progress lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    for noisy in ("ray.tune.analysis.experiment_analysis", "ray._private.authentication"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    # Inside `ray job submit` Ray sets RAY_ADDRESS to the job's cluster; elsewhere a new local Ray.
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    hung = False
    try:
        capacity = read_capacity()
        methods = sorted({t.method for t in plan.todo})
        footprint = None
        if args.gpus_per_trial is None and capacity.most("GPU") > 0:
            footprint = measured_footprint(plan.store, args.profile, methods)
        request, concurrent, notes = resolve(
            args.cpus_per_trial, args.gpus_per_trial, args.workers, args.max_concurrent, capacity,
            footprint or declared_footprint(args.profile, methods), args.gpu_memory_gib)
        concurrent = min(concurrent, len(plan.todo))
        plan.ctx.gpus_per_trial = request.gpus
        plan.ctx.cpus_per_worker = request.cpus_per_worker
        batches = batches_of(plan.todo, args.trials_per_tuner)
        per_tune_trial = points_per_tune_trial(args, len(batches[0]), concurrent)
        packing = f", up to {per_tune_trial} a Ray Tune trial" if per_tune_trial > 1 else ""
        print(f"running {len(plan.todo)} trials, {concurrent} at a time{packing}, in {len(batches)} batch(es) "
              f"({request.describe()}; the cluster can grow to {capacity.most('CPU'):g} CPUs, "
              f"{capacity.most('GPU'):g} GPUs: {capacity.source})", flush=True)
        for note in notes:
            print(f"note: {note}", flush=True)
        progress = Progress(len(plan.todo))
        for batch in batches:
            hung |= run_batch(batch, plan, request, concurrent, progress, per_tune_trial)
            release_freed_memory(collect=True)
    finally:
        if hung:  # Ray's shutdown may hang the same way: give it a bounded time
            stopper = threading.Thread(target=ray.shutdown, daemon=True)
            stopper.start()
            stopper.join(timeout=RAY_GRACE_S)
        else:
            ray.shutdown()
    return hung


def run_batch(batch: list[Trial], plan: Plan, request, concurrent: int, progress: Progress,
              per_tune_trial: int = 1) -> bool:
    """One Tuner over a bounded batch: the driver's memory follows the batch, not the grid. Each Tune
    trial runs a pack of ``per_tune_trial`` grid points (orchestrator/runner.py: tune_trial)."""
    from ray import tune

    from orchestrator.runner import base_row, tune_trial

    tune_dir = tempfile.mkdtemp(prefix="adsweep-tune-")
    plan.ctx.train_storage = tune_dir
    packs = [[t.to_dict() for t in pack] for pack in packs_of(batch, per_tune_trial)]
    tuner = tune.Tuner(
        tune.with_resources(tune_trial, request.tune_resources()),
        param_space={"trials": tune.grid_search(packs), "ctx": plan.ctx.to_dict()},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=min(concurrent, len(packs)),
            reuse_actors=True,  # one process serves many trials: no start-up per trial
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name="adsweep",
            storage_path=tune_dir,
            verbose=0,
            callbacks=[progress.callback],
            # A trial whose process or node died is re-run elsewhere (twice at most).
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
    outcome = {}

    def fit():
        try:
            outcome["grid"] = tuner.fit()
        except BaseException as exc:  # raised again in the driver's thread below
            outcome["error"] = exc

    fitting = threading.Thread(target=fit, name="tuner-fit", daemon=True)
    fitting.start()
    hung = wait_for_fit(fitting, plan.store, {t.key for t in batch}, progress)
    if "error" in outcome:
        raise outcome["error"]
    # A trial that died with its process never wrote the rows it had not reached: record the failures here.
    stored = set(stored_files(plan.store)) if "grid" in outcome else set()
    for result in outcome.get("grid", []):
        if result.error is None or not result.config:
            continue
        for trial in map(Trial.from_dict, result.config["trials"]):
            if trial.key not in stored:
                plan.store.write({**base_row(trial, plan.ctx), "status": "failed",
                                  "error": f"{type(result.error).__name__}: {result.error}"[:2000]})
    if not hung:
        shutil.rmtree(tune_dir, ignore_errors=True)
    return hung


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        plan = build_plan(args)
    except (UserError, DatasetError, SplitError) as exc:
        return fail(exc)
    print(f"{args.scenario} ({args.profile}): {len(plan.trials)} trials in the grid, {plan.done} done, "
          f"{len(plan.todo)} to run ({plan.failed_before} of them failed before); store: {plan.ctx.storage}")
    if args.dry_run:
        for t in plan.todo[:10]:
            print(f"  would run {t.key}  {t.method} normal={t.normal_class} known={t.anomaly_class} "
                  f"gamma_p={t.gamma_p} gamma_l={t.gamma_l} seed={t.seed}" + (f" {t.variant}" if t.variant else ""))
        if len(plan.todo) > 10:
            print(f"  ... and {len(plan.todo) - 10} more")
        # What it will cost, before anything starts: the store's measured trial times, else benchmark records
        # (orchestrator/estimate.py); the concurrency is this machine's (a cluster's: pass --max-concurrent).
        from orchestrator.estimate import estimate, format_estimate, local_concurrency

        print(format_estimate(estimate(plan.todo, plan.store, concurrency=local_concurrency(
            args.cpus_per_trial, args.gpus_per_trial, args.workers, args.max_concurrent))))
        return 0
    try:  # the first write: storage that cannot be written stops here, before any training
        write_manifest(plan.store, {
            "sweep": plan.ctx.sweep, "scenario": args.scenario, "profile": args.profile,
            "command": " ".join(["python -m orchestrator.sweep", *(argv if argv is not None else sys.argv[1:])]),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "keys": [t.key for t in plan.trials],
        })
    except (OSError, ArrowException) as exc:
        print(f"error: cannot write to storage {plan.ctx.storage}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if plan.todo:
        start = time.monotonic()
        try:
            RAY_DID_NOT_RETURN[0] = run(plan, args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"sweep finished in {_fmt(time.monotonic() - start)}")
    keys = {t.key for t in plan.trials}
    scenario = SCENARIOS[args.scenario]
    # What the table needs, not the rows' whole configs (orchestrator/report/tables.py: print_table).
    needed = list(dict.fromkeys(["trial_key", "status", "error", "seed", "normal_class", "extra",
                                 *scenario.table_rows, scenario.table_columns, scenario.metric]))  # once each
    rows = read_rows(plan.store, keys, needed)
    print_table(rows, expected=len(plan.trials), index=scenario.table_rows, column=scenario.table_columns,
                metric=scenario.metric, order=row_order(scenario))
    print(f"results: {plan.ctx.storage}  (pandas.read_parquet, pyarrow.dataset or DuckDB read_parquet)")
    if plan.ctx.scores_storage:
        print(f"per-sample test scores: {plan.ctx.scores_storage}")
    # Non-zero when the grid is not complete, so scripts notice failed trials.
    return 0 if rows.loc[rows["status"] == "ok", "trial_key"].nunique() == len(plan.trials) else 1


# Set when Ray did not return after every row was stored: then the process ends without waiting on Ray's threads.
RAY_DID_NOT_RETURN = [False]

if __name__ == "__main__":
    code = main()
    if RAY_DID_NOT_RETURN[0]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)

