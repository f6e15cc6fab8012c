"""The end-of-sweep table, in the layout of HSCL Table 2: mean AUROC per method and gamma_p."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table


def table2(rows: pd.DataFrame, metric: str = "auroc_pooled") -> pd.DataFrame:
    """Mean AUROC (in %) per method (rows) and gamma_p (columns), over ``ok`` trials only.

    With several seeds a cell is the mean over grid points and seeds; ``n`` says how many trials
    each mean has, so an incomplete grid is visible, never silently averaged.
    """
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    grouped = ok.groupby(["method", "gamma_p"])[metric]
    return pd.DataFrame({"mean": grouped.mean() * 100, "std": grouped.std() * 100, "n": grouped.size()})


def print_table(rows: pd.DataFrame, expected: int | None = None, metric: str = "auroc_pooled") -> None:
    console = Console()
    summary = table2(rows, metric)
    n_ok = int((rows["status"] == "ok").sum()) if len(rows) else 0
    n_failed = len(rows) - n_ok
    table = Table(title=f"{metric} (%), mean over grid points [n trials]")
    table.add_column("method")
    gammas = sorted(summary.index.get_level_values("gamma_p").unique()) if len(summary) else []
    for g in gammas:
        table.add_column(f"gamma_p={g:.2f}", justify="right")
    for method in sorted(summary.index.get_level_values("method").unique()) if len(summary) else []:
        cells = []
        for g in gammas:
            if (method, g) in summary.index:
                r = summary.loc[(method, g)]
                cells.append(f"{r['mean']:.1f} [{int(r['n'])}]")
            else:
                cells.append("-")
        table.add_row(method, *cells)
    console.print(table)
    if expected is not None:
        console.print(f"{n_ok}/{expected} trials ok, {n_failed} failed, {expected - len(rows)} missing")
    if n_failed:
        for _, r in rows[rows["status"] != "ok"].head(5).iterrows():
            console.print(f"  failed {r['trial_key']} normal={r['normal_class']}: {str(r['error'])[:200]}")
