"""Ask the result store questions: ``python -m orchestrator.results COMMAND``.

    summary                      sweeps, scenarios, methods: trials ok / failed / missing
    watch                        the summary again every few seconds (a running sweep's progress)
    sql "SELECT ..."             DuckDB over the store: views `results` and `scores`
    table SCENARIO               the paper's table layout; --format term|md|csv|latex, --published
    plot gamma|heatmap|ablation  PNG figures (matplotlib)
    metrics --metric aupr        any metric recomputed from the stored per-sample scores
    compare A B                  paired comparison of two methods: wins, mean difference, Wilcoxon p
    reproduction                 docs/reproduction.md from a store of benchmarks/reproduction.py's runs

Every command takes ``--storage`` (default ``results``); scores are read from beside it.
Failed trials are counted and shown, never averaged in.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources

import duckdb
import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from orchestrator.report import paper_table, row_order
from orchestrator.grid.scenarios import SCENARIOS
from orchestrator.store import ResultStore, ScoreStore, read_manifests, scores_uri_for

console = Console()


# ----------------------------------------------------------------------------------------------
# Reading


def connect(storage: str, scores: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views `results` (and `scores` when present) over the stores.

    The stores are handed to DuckDB as Arrow datasets, so the same code reads a local folder,
    S3 or GCS (DuckDB itself needs no httpfs extension), with hive partitions as columns.
    """
    con = duckdb.connect()
    result_store = ResultStore(storage)
    con.register("results", result_store._dataset() or result_store.read())
    score_store = ScoreStore(scores or scores_uri_for(result_store.location))
    con.register("scores", score_store._dataset() or score_store.read())
    return con


GRID_ROWS = "(kind IS NULL OR kind <> 'search')"  # search trials have no test AUROCs


def load_rows(storage: str, where: str | None = None, include_search: bool = False) -> pd.DataFrame:
    con = connect(storage)
    clauses = [c for c in (where, None if include_search else GRID_ROWS) if c]
    query = "SELECT * FROM results" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    return con.sql(query).df()


# ----------------------------------------------------------------------------------------------
# summary / watch


def summary(storage: str) -> pd.DataFrame:
    """One line per sweep command (manifest): trials asked, ok, failed, missing."""
    store = ResultStore(storage)
    statuses = store.statuses()
    lines = []
    for m in read_manifests(store):
        got = [statuses.get(k) for k in m["keys"]]
        lines.append({"sweep": m["sweep"], "scenario": m["scenario"], "profile": m["profile"],
                      "trials": len(got), "ok": got.count("ok"), "failed": got.count("failed"),
                      "missing": got.count(None), "started": m.get("created_at", "")})
    return pd.DataFrame(lines)


def print_summary(storage: str) -> pd.DataFrame:
    rows = ResultStore(storage).read(["scenario", "profile", "method", "status"]).to_pandas()
    by_method = rows.groupby(["profile", "scenario", "method", "status"], observed=True).size().unstack(fill_value=0)
    table = Table(title=f"trials in {storage}")
    for col in ("profile", "scenario", "method", "ok", "failed"):
        table.add_column(col, justify="right" if col in ("ok", "failed") else "left")
    for (profile, scenario, method), counts in by_method.iterrows():
        table.add_row(profile, scenario, method, str(counts.get("ok", 0)), str(counts.get("failed", 0)))
    console.print(table)
    sweeps = summary(storage)
    if len(sweeps):
        table = Table(title="sweep commands against their grids")
        for col in sweeps.columns:
            table.add_column(col)
        for _, r in sweeps.iterrows():
            table.add_row(*[str(v) for v in r])
        console.print(table)
    return sweeps


# ----------------------------------------------------------------------------------------------
# table


def published(scenario: str, dataset: str | None = None) -> pd.DataFrame:
    """The papers' published numbers for a scenario, as long records (one per cell)."""
    text = resources.files("orchestrator").joinpath("data/published.yaml").read_text()
    records = []
    for entry in yaml.safe_load(text):
        if entry["scenario"] != scenario or (dataset and entry["dataset"] != dataset):
            continue
        for row in entry["rows"]:
            for col, value in zip(entry["columns"], row["values"], strict=True):
                if value is not None:
                    records.append({**row["key"], entry["column"]: col, "published": value,
                                    "source": entry["table"], "paper_dataset": entry["dataset"]})
    return pd.DataFrame(records)


def wide_table(rows: pd.DataFrame, scenario_name: str, metric: str | None = None,
               with_published: bool = False, dataset: str | None = None, versus: str | None = None) -> pd.DataFrame:
    """The scenario's paper layout: one line per row key, one column per column value ("mean +- std [n]").

    ``versus=M`` (tables with one row per method and gamma columns) marks every other method's
    cell by a paired Wilcoxon test against M on the same grid points: "*" where p < 0.05,
    "(n.s.)" where the difference is not significant.
    """
    scenario = SCENARIOS[scenario_name]
    index, column, metric = list(scenario.table_rows), scenario.table_columns, metric or scenario.metric
    cells = paper_table(rows, index, column, metric, row_order(scenario))
    if cells.empty:
        return pd.DataFrame()

    def fmt(r):
        std = f" ± {r['std']:.1f}" if pd.notna(r["std"]) else ""
        return f"{r['mean']:.1f}{std} [{int(r['n'])}]"

    cells["text"] = cells.apply(fmt, axis=1)
    if versus and index == ["method"] and column in ("gamma_p", "gamma_l"):
        for method in cells["method"].unique():
            if method == versus:
                continue
            tested = compare(rows, method, versus, metric).set_index(column)["wilcoxon_p"]
            mark = {g: ("*" if p < 0.05 else "(n.s.)") for g, p in tested.items() if pd.notna(p)}
            sel = cells["method"] == method
            cells.loc[sel, "text"] = [f"{t} {mark.get(g, '')}".rstrip()
                                      for t, g in zip(cells.loc[sel, "text"], cells.loc[sel, column], strict=True)]
    wide = cells.pivot_table(index=index, columns=column, values="text", aggfunc="first", sort=False)
    if column == "normal_class":
        wide["mean"] = cells.groupby(index)["mean"].mean().round(1).astype(str)
    if with_published:
        pub = published(scenario_name, dataset)
        if pub.empty:  # no published numbers for this dataset: show the paper's own (labelled)
            pub = published(scenario_name)
        if len(pub):
            pub = pub[pub["paper_dataset"] == pub["paper_dataset"].iloc[0]]
            if column == "normal_class":  # compare the mean over normal classes
                pub = pub[pub[column].astype(str) == "mean"]
                ours = cells.groupby(index)["mean"].mean().reset_index().assign(**{column: "mean"})
            else:
                ours = cells.copy()
            ours[column], pub[column] = ours[column].astype(str), pub[column].astype(str)
            joined = ours.merge(pub, on=[c for c in index if c in pub.columns] + [column], how="inner")
            label = f"paper {pub['paper_dataset'].iloc[0]}"
            for _, r in joined.iterrows():
                key = tuple(r[c] for c in index) if len(index) > 1 else r[index[0]]
                wide.loc[key, f"{label} {r[column]}"] = f"{r['published']:.1f} ({r['mean'] - r['published']:+.1f})"
    wide.columns = [f"{column}={c}" if not str(c).startswith(("paper", "mean")) else str(c) for c in wide.columns]
    return wide.reset_index()


def render(frame: pd.DataFrame, fmt: str, title: str = "") -> str | None:
    if fmt == "md":
        return frame.to_markdown(index=False)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "latex":
        return frame.to_latex(index=False)
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for _, r in frame.iterrows():
        table.add_row(*["" if pd.isna(v) else str(v) for v in r])
    console.print(table)
    return None


# ----------------------------------------------------------------------------------------------
# plots


def plot(kind: str, rows: pd.DataFrame, out: str, scenario_name: str, method: str | None = None,
         metric: str = "auroc_pooled") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        raise SystemExit(f"error: no ok trials for {scenario_name} in the store; run the sweep first")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if kind == "gamma":
        axis = "gamma_l" if SCENARIOS[scenario_name].table_columns == "gamma_l" else "gamma_p"
        for name, group in ok.groupby("method"):
            stats = group.groupby(axis)[metric].agg(["mean", "std", "size"]).reset_index()
            ax.errorbar(stats[axis], stats["mean"] * 100, yerr=stats["std"].fillna(0) * 100, marker="o",
                        capsize=3, label=f"{name} (n={int(stats['size'].sum())})")
        ax.set_xlabel(axis)
        ax.set_ylabel(f"{metric} (%)")
        ax.legend()
        ax.set_title(f"{scenario_name}: {metric} against {axis}")
    elif kind == "heatmap":
        method = method or ok["method"].iloc[0]
        sel = ok[ok["method"] == method]
        grid = sel.pivot_table(index="normal_class", columns="anomaly_class", values=metric, aggfunc="mean") * 100
        low = max(0, np.nanmin(grid.values) - 1)
        image = ax.imshow(grid.values, cmap="viridis", vmin=low, vmax=100)
        ax.set_xticks(range(len(grid.columns)), [str(int(c)) for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [str(int(c)) for c in grid.index])
        for (i, j), v in np.ndenumerate(grid.values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="black" if v > (low + 100) / 2 else "white")  # readable on both ends of viridis
        ax.set_xlabel("known anomaly class")
        ax.set_ylabel("normal class")
        fig.colorbar(image, ax=ax, label=f"{metric} (%)")
        ax.set_title(f"{scenario_name}, {method}: mean over gamma and seeds")
    elif kind == "ablation":
        key = "variant" if ok["variant"].notna().any() else "method"
        stats = ok.groupby(key)[metric].agg(["mean", "std", "size"])
        ax.bar(range(len(stats)), stats["mean"] * 100, yerr=stats["std"].fillna(0) * 100, capsize=3)
        ax.set_xticks(range(len(stats)), [f"{k}\n(n={n})" for k, n in zip(stats.index, stats["size"], strict=True)],
                      rotation=20, fontsize=8)
        ax.set_ylim(max(0, (stats["mean"].min() - 0.1) * 100), 100)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{scenario_name}: {key}")
    else:
        raise SystemExit(f"error: unknown plot '{kind}'; choose gamma, heatmap or ablation")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------
# metrics from stored scores, paired comparisons


def fpr_at_95_tpr(is_anomaly, scores) -> float:
    """False positive rate when 95 % of anomalies are detected (anomaly = positive)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_anomaly, scores)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


METRICS = {
    "auroc": lambda y, s: __import__("sklearn.metrics").metrics.roc_auc_score(y, s),
    "aupr": lambda y, s: __import__("sklearn.metrics").metrics.average_precision_score(y, s),
    "fpr95": fpr_at_95_tpr,
}


def metrics_from_scores(storage: str, metric: str, where: str | None = None) -> pd.DataFrame:
    """One row per ok trial matching ``where`` with ``metric`` recomputed from its stored scores.

    The positive class is the anomalies against the normal class (the pooled setting), so
    ``auroc`` here equals the stored ``auroc_pooled``.
    """
    con = connect(storage)
    filt = f"AND ({where})" if where else ""
    trials = con.sql(f"SELECT * FROM results WHERE status = 'ok' {filt}").df()
    if trials.empty:
        return trials.assign(**{metric: []})
    scores = con.sql(
        "SELECT trial_key, is_anomaly, score FROM scores WHERE trial_key IN (SELECT trial_key FROM results "
        f"WHERE status = 'ok' {filt}) ORDER BY trial_key, sample_index"
    ).df()
    values = {key: METRICS[metric](g["is_anomaly"].to_numpy(), g["score"].to_numpy())
              for key, g in scores.groupby("trial_key")}
    trials[metric] = trials["trial_key"].map(values)
    return trials


def compare(rows: pd.DataFrame, method_a: str, method_b: str, metric: str = "auroc_pooled") -> pd.DataFrame:
    """Paired comparison on the grid points (and seeds) both methods finished, per gamma.

    Per (gamma_p, gamma_l): n pairs, mean difference A - B (in AUROC points), how many points each
    wins, and the two-sided Wilcoxon signed-rank p-value (SciPy) of the differences.
    """
    from scipy.stats import wilcoxon

    point = ["profile", "dataset", "normal_class", "anomaly_class", "gamma_p", "gamma_l", "gamma_l_normal", "seed"]
    ok = rows[rows["status"] == "ok"].copy()
    ok["anomaly_class"] = ok["anomaly_class"].fillna(-1)
    a = ok[ok["method"] == method_a].set_index(point)[metric]
    b = ok[ok["method"] == method_b].set_index(point)[metric]
    pairs = pd.concat({"a": a, "b": b}, axis=1, join="inner").reset_index()
    out = []
    for (gp, gl), g in pairs.groupby(["gamma_p", "gamma_l"]):
        diff = (g["a"] - g["b"]).to_numpy()
        p = float(wilcoxon(diff).pvalue) if len(diff) > 0 and np.any(diff != 0) else float("nan")
        out.append({"gamma_p": gp, "gamma_l": gl, "n": len(diff), "mean_diff": 100 * diff.mean(),
                    f"{method_a}_wins": int((diff > 0).sum()), f"{method_b}_wins": int((diff < 0).sum()),
                    "ties": int((diff == 0).sum()), "wilcoxon_p": p})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m orchestrator.results", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--storage", default="results", help="the result store (folder, s3://..., gs://...)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("summary", help="sweeps, scenarios, methods: ok / failed / missing")
    w = sub.add_parser("watch", help="print the summary every few seconds")
    w.add_argument("--every", type=float, default=5.0)
    w.add_argument("--until-done", action="store_true", help="stop when no sweep has missing trials")
    q = sub.add_parser("sql", help="run a DuckDB query; views: results, scores")
    q.add_argument("query")
    q.add_argument("--format", choices=["term", "md", "csv", "latex"], default="term")
    t = sub.add_parser("table", help="the scenario's table in its paper's layout")
    t.add_argument("scenario")
    t.add_argument("--profile", default=None, help="only this profile (default: all in the store)")
    t.add_argument("--metric", default=None, help="default: the scenario's (auroc_pooled)")
    t.add_argument("--format", choices=["term", "md", "csv", "latex"], default="term")
    t.add_argument("--published", action="store_true", help="the papers' numbers beside ours, with the difference")
    t.add_argument("--where", default=None, help="extra SQL filter on the rows, e.g. \"dataset = 'cifar10'\"")
    t.add_argument("--versus", default=None, metavar="METHOD",
                   help="mark each method's cells by a paired Wilcoxon test against METHOD (* p < .05, (n.s.))")
    g = sub.add_parser("plot", help="save a PNG: gamma, heatmap or ablation")
    g.add_argument("kind", choices=["gamma", "heatmap", "ablation"])
    g.add_argument("scenario")
    g.add_argument("--method", default=None)
    g.add_argument("--metric", default="auroc_pooled")
    g.add_argument("--out", required=True, help="PNG path")
    g.add_argument("--where", default=None)
    m = sub.add_parser("metrics", help="recompute a metric from the stored per-sample scores")
    m.add_argument("--metric", choices=sorted(METRICS), default="auroc")
    m.add_argument("--where", default=None, help="SQL filter on the result rows")
    m.add_argument("--per-trial", action="store_true")
    m.add_argument("--format", choices=["term", "md", "csv", "latex"], default="term")
    c = sub.add_parser("compare", help="paired comparison of two methods")
    c.add_argument("method_a")
    c.add_argument("method_b")
    c.add_argument("--scenario", required=True)
    c.add_argument("--metric", default="auroc_pooled")
    c.add_argument("--format", choices=["term", "md", "csv", "latex"], default="term")
    r = sub.add_parser("reproduction", help="write the reproduction report (tables, relations, cost) from the store")
    r.add_argument("--profile", default="small")
    r.add_argument("--out", default="docs/reproduction.md")
    return p.parse_args(argv)


def _emit(frame: pd.DataFrame, fmt: str, title: str = ""):
    text = render(frame, fmt, title)
    if text is not None:
        print(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "summary":
            print_summary(args.storage)
        elif args.command == "watch":
            while True:
                console.clear()
                sweeps = print_summary(args.storage)
                if args.until_done and len(sweeps) and (sweeps["missing"] == 0).all():
                    return 0
                time.sleep(args.every)
        elif args.command == "sql":
            _emit(connect(args.storage).sql(args.query).df(), args.format)
        elif args.command == "table":
            if args.scenario not in SCENARIOS:
                raise ValueError(f"unknown scenario '{args.scenario}'; choose from: {', '.join(SCENARIOS)}")
            where = " AND ".join(filter(None, [f"scenario = '{args.scenario}'",
                                               f"profile = '{args.profile}'" if args.profile else None,
                                               args.where]))
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
        elif args.command == "plot":
            where = " AND ".join(filter(None, [f"scenario = '{args.scenario}'", args.where]))
            print(plot(args.kind, load_rows(args.storage, where), args.out, args.scenario, args.method, args.metric))
        elif args.command == "metrics":
            trials = metrics_from_scores(args.storage, args.metric, args.where)
            if args.per_trial:
                cols = ["trial_key", "scenario", "method", "normal_class", "anomaly_class", "gamma_p", "seed",
                        "auroc_pooled", args.metric]
                _emit(trials[cols], args.format)
            else:
                agg = trials.groupby(["scenario", "method", "gamma_p"], observed=True)[args.metric].agg(
                    ["mean", "std", "size"]).reset_index()
                _emit(agg.round(4), args.format, f"{args.metric} from stored scores")
        elif args.command == "compare":
            rows = load_rows(args.storage, f"scenario = '{args.scenario}'")
            _emit(compare(rows, args.method_a, args.method_b, args.metric).round(4), args.format,
                  f"{args.method_a} - {args.method_b}, paired by grid point and seed")
        elif args.command == "reproduction":
            from orchestrator.reproduction import write_report

            print(write_report(args.storage, args.out, args.profile))
    except (ValueError, duckdb.Error) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
