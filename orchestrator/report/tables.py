"""Tables of results in the layout of the scenario's paper table (HSCL Table 2 for scenario2).

A cell is the mean of the metric (in %) over the ``ok`` trials that fall in it (grid points and
seeds), with the number of trials in brackets; with several seeds the std over seeds follows the
mean. Failed and missing trials are counted under the table, never averaged in. While a store
fills, a seed enters a cell only once it holds as many of the cell's trials as the cell's most
complete seed (else its mean would be over other, easier or harder, grid points); its trials so
far show as "+k" in the brackets.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from orchestrator.grid.scenarios import SCENARIOS
from orchestrator.report.stats import compare
from orchestrator.store import ResultStore, read_manifests

console = Console()


# ----------------------------------------------------------------------------------------------
# Cells and labels


def cell_text(mean: float, std: float | None, n: int, pending: int = 0) -> str:
    """One cell, the same in every table: "76.5 ± 1.2 [10]" (mean %, std over seeds, trials), and "+k" for
    the trials of seeds still short of the cell's grid points (not averaged in).

    >>> cell_text(76.54, float("nan"), 10), cell_text(76.54, 1.23, 20), cell_text(76.54, 1.23, 20, 3)
    ('76.5 [10]', '76.5 ± 1.2 [20]', '76.5 ± 1.2 [20 +3]')
    """
    spread = f" ± {std:.1f}" if std is not None and pd.notna(std) else ""
    more = f" +{int(pending)}" if pending and pd.notna(pending) else ""
    return f"{mean:.1f}{spread} [{int(n)}{more}]"


def percent(x: float | None) -> str:
    """A mean in % to one decimal, or a dash where there is none."""
    return "–" if x is None or pd.isna(x) else f"{x:.1f}"


def gamma_label(g: float) -> str:
    """A ratio as the papers write it: 0, 0.05, 0.1."""
    return f"{g:.2f}".rstrip("0").rstrip(".") if g else "0"


# ----------------------------------------------------------------------------------------------
# The paper's layout


def row_order(scenario) -> dict[str, list]:
    """The order the paper lists its rows in: the scenario's methods and variants as declared."""
    return {"method": list(scenario.methods), "variant": list(scenario.variants or []),
            **{k: list(v) for k, v in (scenario.row_order or {}).items()}}


def with_metric(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`rows` with a column `metric`: the store's own, or the key of that name in each row's `extra` JSON (a
    kind's own measurement, e.g. CADet Table 1's rejection_rate).

    >>> rows = pd.DataFrame({"extra": ['{"rejection_rate": 0.5}', None]})
    >>> with_metric(rows, "rejection_rate")["rejection_rate"].tolist()
    [0.5, nan]
    """
    if metric in rows.columns or "extra" not in rows.columns:
        return rows
    values = [json.loads(e).get(metric) if isinstance(e, str) else None for e in rows["extra"]]
    return rows.assign(**{metric: pd.to_numeric(pd.Series(values, index=rows.index, dtype=object))})


def complete_seeds(ok: pd.DataFrame, row_keys: list[str]) -> pd.DataFrame:
    """The rows of the seeds that hold as many trials of their row as the row's most complete seed: a seed
    still running stays out of a row's means until it covers the row (paper_table, by_normal_class_table).

    >>> rows = pd.DataFrame({"variant": ["a"] * 3, "seed": [0, 0, 1], "normal_class": [0, 1, 0]})
    >>> complete_seeds(rows, ["variant"])["seed"].tolist()
    [0, 0]
    """
    if "seed" not in ok or ok.empty:
        return ok
    size = ok.assign(_one=1).groupby([*row_keys, "seed"], dropna=False)["_one"].transform("size")
    most = size.groupby([ok[k] for k in row_keys], dropna=False).transform("max")
    return ok[size == most]


def paper_table(rows: pd.DataFrame, index=("method",), column="gamma_p", metric="auroc_pooled",
                order: dict[str, list] | None = None) -> pd.DataFrame:
    """Long table: one row per (index..., column) cell with mean, std over seeds, n trials averaged in, and
    `pending`: the trials of seeds that do not yet hold as many of the cell's trials as its most complete seed.

    >>> df = pd.DataFrame({"method": ["a", "a"], "gamma_p": [0.0, 0.0], "seed": [0, 1],
    ...                    "auroc_pooled": [0.8, 0.9], "status": ["ok", "ok"]})
    >>> paper_table(df).round(1).to_dict("records")
    [{'method': 'a', 'gamma_p': 0.0, 'mean': 85.0, 'std': 7.1, 'n': 2, 'pending': 0}]
    """
    rows = with_metric(rows, metric)
    ok = rows[rows["status"] == "ok"].reset_index(drop=True)
    keys = [*index, column]
    if ok.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "pending"])
    ok[list(index)] = ok[list(index)].fillna("-")
    # Mean over grid points within each seed first, then mean and std over the seeds that are complete.
    complete = complete_seeds(ok, keys)
    per_seed = complete.groupby([*keys, "seed"], dropna=False)[metric].agg(["mean", "size"]).reset_index()
    cells = per_seed.groupby(keys, dropna=False).agg(mean=("mean", "mean"), std=("mean", "std"), n=("size", "sum"))
    pending = ok.drop(index=complete.index).groupby(keys, dropna=False)[metric].size()
    cells = cells.assign(pending=pending.reindex(cells.index).fillna(0).astype(int)).reset_index()
    cells["mean"] *= 100
    cells["std"] *= 100
    # Rows in the paper's order where known (anything else after, alphabetically).
    rank = [cells[k].map({v: i for i, v in enumerate((order or {}).get(k, []))}).fillna(len(cells))
            for k in index]
    cells = cells.assign(**{f"_rank{i}": r for i, r in enumerate(rank)})
    cells = cells.sort_values([f"_rank{i}" for i in range(len(index))] + list(keys), kind="stable", key=_natural)
    return cells.drop(columns=[f"_rank{i}" for i in range(len(index))]).reset_index(drop=True)


def _natural(column: pd.Series) -> pd.Series:
    """Text sorted with its numbers as numbers ("n_trs=2" before "n_trs=10": Figure 2's curve in order).

    >>> _natural(pd.Series(["k=10", "k=2"])).sort_values().index.tolist()
    [1, 0]
    """
    if pd.api.types.is_numeric_dtype(column):
        return column
    # re.split with a group alternates text and digits, so tuples compare text with text, numbers with numbers.
    return column.map(lambda v: tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(v)))))


def print_table(rows: pd.DataFrame, expected: int | None = None, index=("method",), column="gamma_p",
                metric="auroc_pooled", order: dict[str, list] | None = None) -> None:
    """The end-of-sweep table on the terminal, then the trials that failed or are missing."""
    cells = paper_table(rows, index, column, metric, order)
    columns = sorted(cells[column].dropna().unique()) if len(cells) else []
    table = Table(title=f"{metric} (%), mean over grid points [n trials]")
    for key in index:
        table.add_column(key)
    for value in columns:
        # ImageFolder datasets show by folder name; the row keeps the full path.
        label = f"{value:.2f}" if isinstance(value, float) else str(value).rstrip("/").rsplit("/", 1)[-1]
        table.add_column(f"{column}={label}", justify="right")
    if column == "normal_class" and len(columns) > 1:
        table.add_column("mean", justify="right")
    for key, group in cells.groupby(list(index), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        by_col = group.set_index(column)
        texts = [cell_text(*by_col.loc[value, ["mean", "std", "n", "pending"]]) if value in by_col.index else "-"
                 for value in columns]
        if column == "normal_class" and len(columns) > 1:
            texts.append(f"{by_col['mean'].mean():.1f}")
        table.add_row(*[str(k) for k in key], *texts)
    console.print(table)
    # Count trials, not rows (a Scenario-3 trial has one row per test dataset).
    trials = rows.drop_duplicates("trial_key") if len(rows) else rows
    n_ok = int((trials["status"] == "ok").sum()) if len(trials) else 0
    n_failed = len(trials) - n_ok
    if expected is not None:
        console.print(f"{n_ok}/{expected} trials ok, {n_failed} failed, {expected - len(trials)} missing")
    for _, r in trials[trials["status"] != "ok"].head(5).iterrows():
        first_line = str(r["error"]).splitlines()[0] if r["error"] else ""
        console.print(f"  failed {r['trial_key']} normal={r['normal_class']}: {first_line[:200]}")


def published(scenario: str, dataset: str | None = None) -> pd.DataFrame:
    """The papers' published numbers for a scenario (orchestrator/data/published.yaml), as long
    records: one per cell, with the row keys, the column value, `published`, `source`, `paper_dataset`."""
    text = resources.files("orchestrator.data").joinpath("published.yaml").read_text()
    records = []
    for entry in yaml.safe_load(text):
        if entry["scenario"] != scenario or (dataset and entry["dataset"] != dataset):
            continue
        for row in entry["rows"]:
            for col, value in zip(entry["columns"], row["values"], strict=True):
                if value is not None:
                    records.append({**row["key"], entry["column"]: col, "published": value,
                                    "source": entry["table"], "paper_dataset": entry["dataset"],
                                    "difference": entry.get("difference", True)})
    return pd.DataFrame(records)


def wide_table(rows: pd.DataFrame, scenario_name: str, metric: str | None = None,
               with_published: bool = False, dataset: str | None = None, versus: str | None = None) -> pd.DataFrame:
    """The scenario's paper layout: one line per row key, one column per column value (`cell_text`).

    ``versus=M`` (tables with one row per method and gamma columns) marks every other method's
    cell by a paired Wilcoxon test against M on the same grid points: "*" where p < 0.05,
    "(n.s.)" where the difference is not significant.
    """
    scenario = SCENARIOS[scenario_name]
    index, column, metric = list(scenario.table_rows), scenario.table_columns, metric or scenario.metric
    cells = paper_table(rows, index, column, metric, row_order(scenario))
    if cells.empty:
        return pd.DataFrame()
    cells["text"] = [cell_text(*r) for r in cells[["mean", "std", "n", "pending"]].itertuples(index=False)]
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
        _add_published(wide, cells, scenario_name, dataset, index, column)
    wide.columns = [f"{column}={c}" if not str(c).startswith(("paper", "mean")) else str(c) for c in wide.columns]
    return wide.reset_index()


def _add_published(wide: pd.DataFrame, cells: pd.DataFrame, scenario_name: str, dataset: str | None,
                   index: list[str], column: str) -> None:
    """Columns "paper DATASET VALUE" on `wide`: the paper's number and our difference to it. An entry with
    `difference: false` (the paper measured another shift than ours: CADet Tables 1 and 3) joins on the row keys
    it has alone and shows the paper's number without a difference."""
    pub = published(scenario_name, dataset)
    if pub.empty:  # no published numbers for this dataset: show the paper's own (labelled)
        pub = published(scenario_name)
    if pub.empty:
        return
    pub = pub[pub["paper_dataset"] == pub["paper_dataset"].iloc[0]]
    if column == "normal_class":  # compare the mean over normal classes
        pub = pub[pub[column].astype(str) == "mean"]
        ours = cells.groupby(index)["mean"].mean().reset_index().assign(**{column: "mean"})
    else:
        ours = cells.copy()
    ours[column], pub[column] = ours[column].astype(str), pub[column].astype(str)
    label = f"paper {pub['paper_dataset'].iloc[0]}"
    plain = pub["difference"].eq(False)
    keys = [c for c in index if c in pub.columns]
    joined = ours.merge(pub[~plain], on=keys + [column], how="inner")
    for _, r in joined.iterrows():
        key = tuple(r[c] for c in index) if len(index) > 1 else r[index[0]]
        wide.loc[key, f"{label} {r[column]}"] = f"{r['published']:.1f} ({r['mean'] - r['published']:+.1f})"
    if plain.any() and keys:
        beside = ours[index].drop_duplicates().merge(pub[plain].dropna(subset=keys), on=keys, how="inner")
        for _, r in beside.iterrows():
            key = tuple(r[c] for c in index) if len(index) > 1 else r[index[0]]
            wide.loc[key, f"{label} {r[column]}"] = f"{r['published']:.1f}"


def render(frame: pd.DataFrame, fmt: str, title: str = "") -> str | None:
    """The frame as markdown, CSV or LaTeX text; for "term" printed as a rich table (returns None)."""
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
# What the store holds


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
    """Trials per profile, scenario and method, then the sweep commands against their grids."""
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
        render(sweeps, "term", "sweep commands against their grids")
    return sweeps
