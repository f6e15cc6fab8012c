"""Search a method's weights with Optuna on validation data only: ``python -m orchestrator.search``.

    python -m orchestrator.search hscl --space search_spaces/hscl.yaml --scenario scenario2 --trials 64
    python -m orchestrator.sweep scenario2 --params-from search/hscl-best.yaml

Each search trial is one Ray Tune trial: Optuna (TPE by default) proposes parameters, the trial
trains the method on a few (normal, known anomaly) pairs of the scenario, one after another, and
its objective is the mean AUROC on the *validation* part of the training data (``auroc_val``).
The test split is never loaded into the computation: ``one_class.run(..., evaluate_test=False)``.
Per-epoch validation AUROCs go to Tune as they come, so ASHA stops poor trials early; the
reported value at pair j, epoch e is the mean of the finished pairs' AUROCs and pair j's current
one, so every trial reports comparable numbers at the same step.

Every search trial becomes a row in the result store (``kind = "search"``). The Optuna study is
kept in a journal file (``search/<study>.journal``), so running the same command again adds more
trials to the same study. Outputs: ``search/<method>-best.yaml`` (read by ``sweep
--params-from``) and ``search/<study>-history.png`` / ``-importance.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from methods.registry import METHODS, get_method
from orchestrator.cli import Parser, UserError, fail, parse_overrides
from orchestrator.data.datasets import DatasetError, DataSource
from orchestrator.data.splits import SplitError
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.grid.trial import Trial, key_of
from orchestrator.planner import Request, plan

KINDS = {"float", "int", "log", "categorical"}
FIELDS = {"type", "low", "high", "step", "choices", "condition"}


class SpaceError(ValueError):
    """A bad search space: one line naming the file and the bad key."""


# ----------------------------------------------------------------------------------------------
# Search spaces (plain YAML, validated on load)


def load_space(path: str) -> dict:
    """Read and validate a search space; returns {"method": str, "params": {name: spec}}.

    A spec is ``{type: float|int|log|categorical, low, high[, step] | choices[, condition]}``;
    ``condition: {other_param: value}`` samples the parameter only when the other one (sampled
    earlier in the file) took that value.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the search space ({exc.strerror})") from None
    try:
        space = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise SpaceError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(space, dict) or set(space) - {"method", "params"} or "params" not in space:
        raise SpaceError(f"{path}: expected top-level keys 'method' and 'params'")
    method = space.get("method")
    if method not in METHODS:
        raise SpaceError(f"{path}: method: unknown method '{method}'; known: {', '.join(METHODS)}")
    defaults = dataclasses.asdict(get_method(method).Config())
    params = space["params"]
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{path}: params: give at least one parameter")
    seen = []
    for name, spec in params.items():
        key = f"{path}: params.{name}"
        if name not in defaults:
            raise SpaceError(f"{key}: {method} has no parameter '{name}'")
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise SpaceError(f"{key}.type: must be one of {sorted(KINDS)}")
        unknown = set(spec) - FIELDS
        if unknown:
            raise SpaceError(f"{key}: unknown key '{sorted(unknown)[0]}'; allowed: {sorted(FIELDS)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise SpaceError(f"{key}.choices: a categorical parameter needs a non-empty list of choices")
        else:
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                raise SpaceError(f"{key}: low and high must be numbers")
            if low >= high:
                raise SpaceError(f"{key}: low ({low}) must be below high ({high})")
            if spec["type"] == "log" and low <= 0:
                raise SpaceError(f"{key}.low: a log range must be positive")
            if spec["type"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
                raise SpaceError(f"{key}: an int range needs integer low and high")
        for other in (spec.get("condition") or {}):
            if other not in seen:
                raise SpaceError(f"{key}.condition: '{other}' must be a parameter listed before '{name}'")
        seen.append(name)
    return {"method": method, "params": params}


def suggest(trial, params: dict) -> dict:
    """Optuna define-by-run: sample every parameter whose condition holds."""
    chosen = {}
    for name, spec in params.items():
        condition = spec.get("condition") or {}
        if any(chosen.get(k) != v for k, v in condition.items()):
            continue
        kind = spec["type"]
        if kind == "categorical":
            chosen[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            chosen[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)))
        else:
            chosen[name] = trial.suggest_float(name, spec["low"], spec["high"], log=kind == "log",
                                               step=spec.get("step"))
    return chosen


# ----------------------------------------------------------------------------------------------
# One search trial: a few pairs, validation AUROC only


def search_trainable(config: dict, ctx: dict) -> dict:
    """Ray Tune trainable: train every pair with the proposed params; objective = mean auroc_val."""
    import ray
    import ray.tune
    import torch

    from orchestrator.experiments import one_class
    from orchestrator.runner import cap_gpu_memory

    torch.set_num_threads(max(1, int(ctx.get("cpus_per_trial", 1))))
    cap_gpu_memory(ctx.get("gpus_per_trial", 0.0))  # the same share and cap as a sweep trial
    node_id = ray.get_runtime_context().get_node_id()
    params = {**ctx["base_params"], **config}
    trials = [dataclasses.replace(Trial.from_dict(t), params=params) for t in ctx["trials"]]
    source = DataSource(**ctx["data"])
    epochs = int(params.get("epochs", 1))
    finished: list[float] = []

    for j, trial in enumerate(trials):
        def on_epoch(epoch, metrics, j=j):
            current = metrics.get("auroc_val")
            if current is not None:  # running objective: finished pairs + this pair so far
                ray.tune.report({"auroc_val": float(np.mean([*finished, current])), "pair": j, "epoch": epoch,
                                 "step": j * epochs + epoch, "node_id": node_id})

        row = one_class.run(trial, source, on_epoch, evaluate_test=False, val_every=ctx.get("val_every", 1))
        finished.append(row["auroc_val"])
    final = float(np.mean(finished))
    return {"auroc_val": final, "pair": len(trials), "epoch": epochs, "step": len(trials) * epochs + 1,
            "per_pair": finished, "node_id": node_id}


def search_row(ctx: dict, params: dict, auroc_val: float | None, status: str, error: str | None = None,
               node_id: str | None = None) -> dict:
    full = {**ctx["base_params"], **params}
    first = {k: v for k, v in ctx["trials"][0].items() if k not in ("normal_class", "anomaly_class", "params")}
    config = {"kind": "search", **first, "pairs": [list(p) for p in ctx["pairs"]], "params": full}
    return {
        "trial_key": key_of(config), "sweep": ctx["study"], "kind": "search", "experiment": first["kind"],
        "config": config, "params": full, "status": status, "error": error, "auroc_val": auroc_val, "node_id": node_id,
        **{k: first[k] for k in ("profile", "scenario", "method", "dataset", "gamma_p", "gamma_l",
                                 "gamma_l_normal", "labeled_anomalies", "val_fraction", "seed")},
        "finished_at": datetime.now(timezone.utc),
    }


# ----------------------------------------------------------------------------------------------
# CLI


def _pairs(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"pairs look like 0:1,3:5 (normal:known anomaly), got '{text}'") from None


def parse_args(argv=None):
    p = Parser(prog="python -m orchestrator.search", description=__doc__.split("\n\n")[0])
    p.add_argument("method")
    p.add_argument("--space", required=True, help="YAML search space, e.g. search_spaces/hscl.yaml")
    p.add_argument("--scenario", default="scenario2")
    p.add_argument("--profile", default="quick")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--pairs", type=_pairs, default=[(0, 1), (3, 5), (8, 9)],
                   help="(normal:known) pairs to average the validation AUROC over (default 0:1,3:5,8:9)")
    p.add_argument("--gamma-p", type=float, default=None, help="pollution ratio (default: the scenario's middle one)")
    p.add_argument("--trials", type=int, default=16, help="search trials to add to the study")
    p.add_argument("--sampler", choices=["tpe", "random", "cmaes", "qmc"], default="tpe")
    p.add_argument("--seed", type=int, default=0, help="data seed (splits, initialisation)")
    p.add_argument("--study", default=None, help="study name (default METHOD-SCENARIO-PROFILE)")
    p.add_argument("--search-dir", default="search", help="local folder for the study journal, best YAML, plots")
    p.add_argument("--storage", default="results", help="the result store for the search rows")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed method parameters for every trial, e.g. --set epochs=20")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share per trial, as for a sweep (default: the share a sweep would take)")
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="memory of one GPU, as for a sweep")
    p.add_argument("--address", default=None,
                   help="Ray address; default: the job's cluster inside `ray job submit`, else a new local Ray")
    p.add_argument("--no-asha", action="store_true", help="no early stopping")
    p.add_argument("--val-every", type=int, default=2, help="validation AUROC every k epochs (for ASHA)")
    return p.parse_args(argv)


def build(args) -> dict:
    """Validate everything before any work; returns the search context."""
    if args.method not in METHODS:
        raise UserError(f"unknown method '{args.method}'; known methods: {', '.join(METHODS)}")
    space = load_space(args.space)
    if space["method"] != args.method:
        raise UserError(f"{args.space} is a space for '{space['method']}', not '{args.method}'")
    if args.scenario not in SCENARIOS or args.profile not in PROFILES:
        raise UserError(f"unknown scenario '{args.scenario}' or profile '{args.profile}'")
    scenario = SCENARIOS[args.scenario]
    if scenario.kind != "one_class":
        raise UserError(f"a search trains one_class grid points; {args.scenario} is a {scenario.kind} scenario")
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    if args.cpus_per_trial <= 0 or (args.gpus_per_trial or 0) < 0:
        raise UserError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    overrides, split_over = parse_overrides(args.overrides, [args.method])
    gamma_p = args.gamma_p if args.gamma_p is not None else scenario.gamma_p[len(scenario.gamma_p) // 2]
    request = Request(scenario=args.scenario, profile=args.profile, methods=[args.method], dataset=args.dataset,
                      seeds=[args.seed], gamma_p=[gamma_p], gamma_l=[scenario.gamma_l[0]], overrides=overrides,
                      **split_over)
    source = DataSource(root=os.path.abspath(args.data_root) if args.data_root else None)
    trials = []
    for n, a in args.pairs:  # one planned grid point per pair; the planner checks its split is possible
        if n == a:
            raise UserError(f"--pairs {n}:{a}: the normal and the known anomaly class must differ")
        planned, source = plan(dataclasses.replace(request, normal_classes=[n], anomaly_classes=[a]), source)
        trials.append(planned[0])
    study = args.study or f"{args.method}-{args.scenario}-{args.profile}"
    return {"space": space, "trials": [t.to_dict() for t in trials], "pairs": [list(p) for p in args.pairs],
            "study": study, "base_params": trials[0].params, "data": dataclasses.asdict(source),
            "val_every": args.val_every, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": 0.0,
            "gamma_p": float(gamma_p)}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ctx = build(args)
    except (SpaceError, UserError, DatasetError, SplitError) as exc:
        return fail(exc)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.cluster import declared_footprint, read_capacity, resolve
    from orchestrator.runner import Context, gpu_oom, oom_message
    from orchestrator.store import ResultStore

    def oom_message_for(gpus: float) -> str:
        return oom_message(Context(storage=args.storage, gpus_per_trial=gpus))

    for noisy in ("ray.tune.analysis.experiment_analysis", "ray._private.authentication", "optuna"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    search_dir = Path(args.search_dir)
    search_dir.mkdir(parents=True, exist_ok=True)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(search_dir / f"{ctx['study']}.journal")))
    try:
        previous = len(optuna.load_study(study_name=ctx["study"], storage=journal).trials)
    except KeyError:
        previous = 0
    # A new sampler seed per run: with the same seed a second run would repeat the first's points.
    seed = args.seed * 1000 + previous
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler}
    # A partial of a module function (not a lambda): Tune pickles the searcher with its state.
    searcher = OptunaSearch(space=functools.partial(suggest, params=ctx["space"]["params"]), metric="auroc_val",
                            mode="max", sampler=samplers[args.sampler](seed=seed), storage=journal,
                            study_name=ctx["study"])
    epochs = int(ctx["base_params"].get("epochs", 1))
    max_t = len(ctx["pairs"]) * epochs + 1
    scheduler = None if args.no_asha else ASHAScheduler(
        time_attr="step", max_t=max_t, grace_period=epochs, reduction_factor=2)  # judge after a whole pair

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        # The same per-trial request as a sweep of this method and profile (orchestrator/cluster.py).
        request, concurrent, notes = resolve(args.cpus_per_trial, args.gpus_per_trial, 0, args.max_concurrent,
                                             read_capacity(), declared_footprint(args.profile, [args.method]),
                                             args.gpu_memory_gib)
    except UserError as exc:
        ray.shutdown()
        return fail(exc)
    ctx["gpus_per_trial"] = request.gpus
    concurrent = min(concurrent, args.trials)
    print(f"search {ctx['study']}: {args.trials} new trials ({previous} in the study already), {concurrent} at a "
          f"time ({request.describe()}), pairs {ctx['pairs']}, gamma_p {ctx['gamma_p']}; objective auroc_val "
          "(validation only)")
    for note in notes:
        print(f"note: {note}")
    tune_dir = tempfile.mkdtemp(prefix="adsweep-search-")
    try:
        grid = tune.Tuner(
            tune.with_resources(tune.with_parameters(search_trainable, ctx=ctx), request.tune_resources()),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=args.trials,
                                        max_concurrent_trials=concurrent, metric="auroc_val", mode="max",
                                        reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tune_dir, name="search", verbose=0),
        ).fit()
    finally:
        ray.shutdown()

    # A trial ASHA stopped early reported a partial objective (fewer pairs, fewer epochs): it is a
    # "stopped" row, and only trials that trained every pair to the end compete for the best.
    store = ResultStore(args.storage)
    for result in grid:
        metrics = result.metrics or {}
        finished = metrics.get("pair") == len(ctx["pairs"])
        status = "failed" if result.error else ("ok" if finished else "stopped")
        error = None
        if result.error:
            error = oom_message_for(request.gpus) if gpu_oom(result.error) else \
                f"{type(result.error).__name__}: {result.error}"
        store.write(search_row(ctx, dict(result.config or {}), metrics.get("auroc_val"), status, error,
                               metrics.get("node_id")))

    rows = store.read(["kind", "sweep", "status", "auroc_val", "params"]).to_pandas()
    done = rows[(rows["kind"] == "search") & (rows["sweep"] == ctx["study"]) & (rows["status"] == "ok")]
    study = optuna.load_study(study_name=ctx["study"], storage=journal)
    plots = save_plots(study, search_dir / ctx["study"])
    if done.empty:
        print(f"no search trial of {ctx['study']} trained every pair to the end yet: add trials or use --no-asha")
        return 1
    best = done.loc[done["auroc_val"].idxmax()]
    chosen = {k: v for k, v in json.loads(best["params"]).items() if k in ctx["space"]["params"]}
    best_yaml = search_dir / f"{args.method}-best.yaml"
    best_yaml.write_text(yaml.safe_dump({
        "method": args.method, "params": chosen, "auroc_val": float(best["auroc_val"]),
        "study": ctx["study"], "scenario": args.scenario, "profile": args.profile, "pairs": ctx["pairs"],
        "gamma_p": ctx["gamma_p"], "trials_in_study": len(study.trials), "trials_finished": len(done),
        "objective": "mean validation AUROC (held-out training images; test split never used)",
    }, sort_keys=False))
    print(f"best of {len(done)} finished trials ({len(study.trials)} in the study): "
          f"auroc_val {best['auroc_val']:.4f} with {chosen}")
    print(f"best parameters: {best_yaml}  (python -m orchestrator.sweep {args.scenario} --params-from {best_yaml})")
    print(f"plots: {', '.join(plots)}")
    return 0


def save_plots(study, prefix: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the plots are "experimental"
    out = []
    for name, make in (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances)):
        try:
            ax = make(study)
        except (ValueError, RuntimeError):  # importance needs a few finished trials with varied params
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.tight_layout()
        path = f"{prefix}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
