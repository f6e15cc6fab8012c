"""Ask the result store questions: ``python -m orchestrator.results COMMAND``.

    summary                      sweeps, scenarios, methods: trials ok / failed / missing
    watch                        the summary again every few seconds (a running sweep's progress)
    sql "SELECT ..."             DuckDB over the store: views `results` and `scores`
    table SCENARIO               the paper's table layout; --format term|md|csv|latex, --published
    plot gamma|heatmap|ablation  PNG figures (matplotlib)
    metrics --metric aupr        any metric recomputed from the stored per-sample scores
    compare A B                  paired comparison of two methods: wins, mean difference, Wilcoxon p
    rank SCENARIO                many methods: Friedman test, post-hoc tests (Wilcoxon-Holm or Nemenyi), mean ranks
    plot cd SCENARIO --out PNG   the critical-difference diagram of `rank`
    audit --sample K             re-run K ok trials from their stored configs: stored vs re-run AUROC
    reproduction                 docs/reproduction.md from a store of benchmarks/reproduction.py's runs

Every command takes ``--storage`` (default ``results``); scores are read from beside it.
Failed trials are counted and shown, never averaged in.

This module only parses the command line and hands each command to orchestrator.report (tables, stats,
ranks, plots, audit, reproduction) and orchestrator.store (connect, load_rows).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import duckdb
import pandas as pd

from orchestrator.cli import Parser, UserError, name_list
from orchestrator.data.datasets import DatasetError, DataSource
from orchestrator.data.splits import SplitError
from orchestrator.grid.scenarios import SCENARIOS
from orchestrator.report.plots import plot
from orchestrator.report.ranks import POSTHOCS
from orchestrator.report.reproduction import write_report
from orchestrator.report.stats import METRICS, compare, metrics_from_scores
from orchestrator.report.tables import console, print_summary, render, summary, wide_table
from orchestrator.store import connect, load_rows

FORMATS = ["term", "md", "csv", "latex"]


def parse_args(argv=None):
    p = Parser(prog="python -m orchestrator.results", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--storage", default="results", help="the result store (folder, s3://..., gs://...)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("summary", help="sweeps, scenarios, methods: ok / failed / missing")
    w = sub.add_parser("watch", help="print the summary every few seconds")
    w.add_argument("--every", type=float, default=5.0)
    w.add_argument("--until-done", action="store_true", help="stop when no sweep has missing trials")
    q = sub.add_parser("sql", help="run a DuckDB query; views: results, scores")
    q.add_argument("query")
    q.add_argument("--format", choices=FORMATS, default="term")
    t = sub.add_parser("table", help="the scenario's table in its paper's layout")
    t.add_argument("scenario")
    t.add_argument("--profile", default=None, help="only this profile (default: all in the store)")
    t.add_argument("--metric", default=None, help="default: the scenario's (auroc_pooled)")
    t.add_argument("--format", choices=FORMATS, default="term")
    t.add_argument("--published", action="store_true", help="the papers' numbers beside ours, with the difference")
    t.add_argument("--where", default=None, help="extra SQL filter on the rows, e.g. \"dataset = 'cifar10'\"")
    t.add_argument("--versus", default=None, metavar="METHOD",
                   help="mark each method's cells by a paired Wilcoxon test against METHOD (* p < .05, (n.s.))")
    g = sub.add_parser("plot", help="save a PNG: gamma, heatmap, ablation or cd (critical-difference diagram)")
    g.add_argument("kind", choices=["gamma", "heatmap", "ablation", "cd"])
    g.add_argument("scenario")
    g.add_argument("--method", default=None)
    g.add_argument("--metric", default=None, help="default: auroc_pooled (cd: the scenario's)")
    g.add_argument("--out", required=True, help="PNG path")
    g.add_argument("--where", default=None)
    _rank_flags(g)
    k = sub.add_parser("rank", help="Friedman test, post-hoc tests and mean ranks of a scenario's methods")
    k.add_argument("scenario")
    k.add_argument("--metric", default=None, help="default: the scenario's (auroc_pooled)")
    k.add_argument("--where", default=None, help="extra SQL filter on the rows")
    k.add_argument("--format", choices=FORMATS, default="term")
    k.add_argument("--p-values", action="store_true", help="print the corrected pairwise p-values too")
    _rank_flags(k)
    a = sub.add_parser("audit", help="re-run a seeded sample of ok trials; stored vs re-run AUROC")
    a.add_argument("--sample", type=int, required=True, metavar="K", help="how many ok trials to re-run")
    a.add_argument("--seed", type=int, default=0, help="seed of the sample's choice (default 0)")
    a.add_argument("--where", default=None, help="SQL filter on the rows to sample from")
    a.add_argument("--metric", default="auroc_pooled")
    a.add_argument("--threads", type=int, default=1, help="torch CPU threads (a sweep's default: 1)")
    a.add_argument("--data-root", default=None, help="where registered datasets are (as the sweep's --data-root)")
    a.add_argument("--dataset", action="append", default=[], metavar="PATH",
                   help="an ImageFolder tree the rows name as imagefolder:<folder name> (repeatable)")
    a.add_argument("--record", nargs="?", const="", default=None, metavar="PATH",
                   help="write the audit record (JSON): to PATH, or without PATH to the store's _audit.json "
                        "(read by the reproduction report); default: write nothing")
    a.add_argument("--format", choices=FORMATS, default="term")
    m = sub.add_parser("metrics", help="recompute a metric from the stored per-sample scores")
    m.add_argument("--metric", choices=sorted(METRICS), default="auroc")
    m.add_argument("--where", default=None, help="SQL filter on the result rows")
    m.add_argument("--per-trial", action="store_true")
    m.add_argument("--format", choices=FORMATS, default="term")
    c = sub.add_parser("compare", help="paired comparison of two methods")
    c.add_argument("method_a")
    c.add_argument("method_b")
    c.add_argument("--scenario", required=True)
    c.add_argument("--metric", default="auroc_pooled")
    c.add_argument("--format", choices=FORMATS, default="term")
    r = sub.add_parser("reproduction", help="write the reproduction report (tables, relations, cost) from the store")
    r.add_argument("--profile", default="small")
    r.add_argument("--out", default="docs/reproduction.md")
    r.add_argument("--cadet-storage", default=None, help="the CADet scenarios' store: the document's CADet section "
                   "and relations (benchmarks/records/cadet for the committed document)")
    return p.parse_args(argv)


def _rank_flags(p) -> None:
    p.add_argument("--profile", default=None, help="only this profile (default: all in the store)")
    p.add_argument("--posthoc", choices=POSTHOCS, default="wilcoxon-holm",
                   help="pairwise test after the Friedman test (default: wilcoxon-holm)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default .05)")
    p.add_argument("--methods", type=name_list, default=None, help="compare only these (comma-separated)")


def _emit(frame: pd.DataFrame, fmt: str, title: str = ""):
    text = render(frame, fmt, title)
    if text is not None:
        print(text)


def _watch(args) -> int:
    while True:
        console.clear()
        sweeps = print_summary(args.storage)
        if args.until_done and len(sweeps) and (sweeps["missing"] == 0).all():
            return 0
        time.sleep(args.every)


def _table(args) -> None:
    if args.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario '{args.scenario}'; choose from: {', '.join(SCENARIOS)}")
    where = " AND ".join(filter(None, [f"scenario = '{args.scenario}'",
                                       f"profile = '{args.profile}'" if args.profile else None, args.where]))
    rows = load_rows(args.storage, where)
    dataset = rows["dataset"].iloc[0] if len(rows) and rows["dataset"].nunique() == 1 else None
    wide = wide_table(rows, args.scenario, args.metric, args.published, dataset, args.versus)
    rows_per_trial = rows.drop_duplicates("trial_key")  # Scenario-3 has a row per test dataset
    n_failed = int((rows_per_trial["status"] != "ok").sum())
    _emit(wide, args.format, f"{args.scenario}: {args.metric or SCENARIOS[args.scenario].metric} (%)")
    missing = summary(args.storage)
    missing = missing[missing["scenario"] == args.scenario]["missing"].sum() if len(missing) else 0
    print(f"{len(rows_per_trial) - n_failed} ok trials, {n_failed} failed (not averaged in), "
          f"{int(missing)} missing from the grids asked for", file=sys.stderr)


def _scenario_rows(args) -> pd.DataFrame:
    if args.scenario not in SCENARIOS:
        raise UserError(f"unknown scenario '{args.scenario}'; choose from: {', '.join(SCENARIOS)}")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    where = " AND ".join(filter(None, [f"scenario = '{args.scenario}'",
                                       f"profile = '{args.profile}'" if args.profile else None,
                                       f"({args.where})" if args.where else None]))
    rows = load_rows(args.storage, where)
    if rows.empty:
        raise UserError(f"no {args.scenario} rows in {args.storage}"
                        f"{f' (profile {args.profile})' if args.profile else ''}; run the sweep first")
    return rows


def _ranking(args):
    from orchestrator.report.ranks import rank

    rows = _scenario_rows(args)
    metric = args.metric or SCENARIOS[args.scenario].metric
    return rank(rows, metric, args.posthoc, args.alpha, args.methods)


def _rank(args) -> None:
    ranking = _ranking(args)
    _emit(ranking.summary_table(), args.format, f"{args.scenario}: mean ranks of {ranking.metric} (1 = best)")
    if args.p_values:
        _emit(ranking.p_values.round(4).reset_index(names=""), args.format, f"corrected p-values ({args.posthoc})")
    print(ranking.describe(), file=sys.stderr)


def _plot_cd(args) -> None:
    from orchestrator.report.ranks import plot_cd

    ranking = _ranking(args)
    print(plot_cd(ranking, args.out, f"{args.scenario}: {ranking.describe().split(';')[0]}"))


def _audit(args) -> None:
    from orchestrator.report.audit import audit, record_path, write_record

    data = DataSource(root=os.path.abspath(args.data_root) if args.data_root else None)
    for path in args.dataset:
        _, data = data.add(path)
    if args.record is not None:
        record_path(args.storage, args.record or None)  # an impossible place fails before any work

    def progress(line):
        if line is not None:
            print(f"  re-ran {line['trial_key']} ({line['method']}): difference {line['difference']:.3g}",
                  file=sys.stderr)

    result = audit(args.storage, args.sample, args.seed, args.where, data, args.metric, args.threads, progress)
    lines = result.lines
    shown = pd.DataFrame({
        "trial": lines["trial_key"],
        "method": [f"{m}:{v}" if isinstance(v, str) else m for m, v in zip(lines["method"], lines["variant"],
                                                                             strict=True)],
        "point": [f"c{n} vs {'–' if pd.isna(a) else int(a)}, γp {g:g}, seed {s}"
                  + (f", {t}" if isinstance(t, str) else "")
                  for n, a, g, s, t in zip(lines["normal_class"], lines["anomaly_class"], lines["gamma_p"],
                                           lines["seed"], lines.get("test_dataset", [None] * len(lines)),
                                           strict=True)],
        "stored": lines["stored"].map(lambda v: f"{v:.6f}"), "re-run": lines["rerun"].map(lambda v: f"{v:.6f}"),
        "difference": lines["difference"].map(lambda v: f"{v:.3g}"),
        "max |d score|": lines["max_abs_score_diff"].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}"),
    })
    _emit(shown, args.format, f"audit of {args.storage}: {args.metric}, stored and re-run")
    for note in result.notes:
        print(f"note: {note}")
    print(result.summary_line())
    if args.record is not None:
        print(f"record: {write_record(result, args.storage, args.record or None)}", file=sys.stderr)


def _metrics(args) -> None:
    trials = metrics_from_scores(args.storage, args.metric, args.where)
    if args.per_trial:
        cols = ["trial_key", "scenario", "method", "normal_class", "anomaly_class", "gamma_p", "seed",
                "auroc_pooled", args.metric]
        _emit(trials[cols], args.format)
    else:
        agg = trials.groupby(["scenario", "method", "gamma_p"], observed=True)[args.metric].agg(
            ["mean", "std", "size"]).reset_index()
        _emit(agg.round(4), args.format, f"{args.metric} from stored scores")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "summary":
            print_summary(args.storage)
        elif args.command == "watch":
            return _watch(args)
        elif args.command == "sql":
            _emit(connect(args.storage).sql(args.query).df(), args.format)
        elif args.command == "table":
            _table(args)
        elif args.command == "plot" and args.kind == "cd":
            _plot_cd(args)
        elif args.command == "rank":
            _rank(args)
        elif args.command == "audit":
            _audit(args)
        elif args.command == "plot":
            where = " AND ".join(filter(None, [f"scenario = '{args.scenario}'", args.where]))
            print(plot(args.kind, load_rows(args.storage, where), args.out, args.scenario, args.method,
                       args.metric or "auroc_pooled"))
        elif args.command == "metrics":
            _metrics(args)
        elif args.command == "compare":
            rows = load_rows(args.storage, f"scenario = '{args.scenario}'")
            _emit(compare(rows, args.method_a, args.method_b, args.metric).round(4), args.format,
                  f"{args.method_a} - {args.method_b}, paired by grid point and seed")
        elif args.command == "reproduction":
            print(write_report(args.storage, args.out, args.profile, args.cadet_storage))
    except (ValueError, duckdb.Error, UserError, DatasetError, SplitError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
