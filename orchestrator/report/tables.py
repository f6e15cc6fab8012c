"""The end-of-sweep table, in the layout of the scenario's paper table (HSCL Table 2 for scenario2).

A cell is the mean of the metric (in %) over the ``ok`` trials that fall in it (grid points and
seeds), with the number of trials in brackets; with several seeds the std over seeds follows the
mean. Failed and missing trials are counted under the table, never averaged in.
"""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table


def row_order(scenario) -> dict[str, list]:
    """The order the paper lists its rows in: the scenario's methods and variants as declared."""
    return {"method": list(scenario.methods), "variant": list(scenario.variants or [])}


def paper_table(rows: pd.DataFrame, index=("method",), column="gamma_p", metric="auroc_pooled",
                order: dict[str, list] | None = None) -> pd.DataFrame:
    """Long table: one row per (index..., column) cell with mean, std over seeds, and n trials.

    >>> df = pd.DataFrame({"method": ["a", "a"], "gamma_p": [0.0, 0.0], "seed": [0, 1],
    ...                    "auroc_pooled": [0.8, 0.9], "status": ["ok", "ok"]})
    >>> paper_table(df).round(1).to_dict("records")
    [{'method': 'a', 'gamma_p': 0.0, 'mean': 85.0, 'std': 7.1, 'n': 2}]
    """
    ok = rows[rows["status"] == "ok"].copy()
    keys = [*index, column]
    if ok.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n"])
    ok[list(index)] = ok[list(index)].fillna("-")
    # Mean over grid points within each seed first, then mean and std over seeds.
    per_seed = ok.groupby([*keys, "seed"], dropna=False)[metric].agg(["mean", "size"]).reset_index()
    cells = per_seed.groupby(keys, dropna=False).agg(
        mean=("mean", "mean"), std=("mean", "std"), n=("size", "sum")
    ).reset_index()
    cells["mean"] *= 100
    cells["std"] *= 100
    # Rows in the paper's order where known (anything else after, alphabetically).
    rank = [cells[k].map({v: i for i, v in enumerate((order or {}).get(k, []))}).fillna(len(cells))
            for k in index]
    cells = cells.assign(**{f"_rank{i}": r for i, r in enumerate(rank)})
    cells = cells.sort_values([f"_rank{i}" for i in range(len(index))] + list(keys), kind="stable")
    return cells.drop(columns=[f"_rank{i}" for i in range(len(index))]).reset_index(drop=True)


def print_table(rows: pd.DataFrame, expected: int | None = None, index=("method",), column="gamma_p",
                metric="auroc_pooled", order: dict[str, list] | None = None) -> None:
    console = Console()
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
        texts = []
        for value in columns:
            if value in by_col.index:
                cell = by_col.loc[value]
                std = f" ± {cell['std']:.1f}" if pd.notna(cell["std"]) else ""
                texts.append(f"{cell['mean']:.1f}{std} [{int(cell['n'])}]")
            else:
                texts.append("-")
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
