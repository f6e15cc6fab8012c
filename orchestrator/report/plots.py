"""PNG figures of result rows (matplotlib): a metric against gamma, a normal x known-anomaly class
heatmap, and an ablation's bars."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.grid.scenarios import SCENARIOS


def plot(kind: str, rows: pd.DataFrame, out: str, scenario_name: str, method: str | None = None,
         metric: str = "auroc_pooled") -> str:
    """Save the `kind` figure (gamma, heatmap or ablation) of the ok rows to `out`; return `out`."""
    if kind not in ("gamma", "heatmap", "ablation"):
        raise ValueError(f"unknown plot '{kind}'; choose gamma, heatmap or ablation")
    # Imported here: matplotlib takes a second to load and only this command needs it; Agg draws without
    # a display (cluster nodes, CI).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        raise ValueError(f"no ok trials for {scenario_name} in the store; run the sweep first")
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
    else:  # ablation
        key = "variant" if ok["variant"].notna().any() else "method"
        stats = ok.groupby(key)[metric].agg(["mean", "std", "size"])
        ax.bar(range(len(stats)), stats["mean"] * 100, yerr=stats["std"].fillna(0) * 100, capsize=3)
        ax.set_xticks(range(len(stats)), [f"{k}\n(n={n})" for k, n in zip(stats.index, stats["size"], strict=True)],
                      rotation=20, fontsize=8)
        ax.set_ylim(max(0, (stats["mean"].min() - 0.1) * 100), 100)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{scenario_name}: {key}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
