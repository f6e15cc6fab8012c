"""Many methods at once: the Friedman test over the paired grid points of a scenario, post-hoc pairwise tests
with a multiple-comparison correction, mean ranks, and a critical-difference (CD) diagram.

The statistics are libraries', not ours: the Friedman test is SciPy's (`scipy.stats.friedmanchisquare`), the
post-hoc tests are scikit-posthocs' (`posthoc_wilcoxon` with Holm's correction, the default, following
Benavoli et al. 2016; or `posthoc_nemenyi_friedman`, Demšar 2006), and the diagram is scikit-posthocs'
`critical_difference_diagram`. This module only builds the paired table they take.

Pairing: two rows of a scenario are a pair when they share the grid point (orchestrator/report/stats.py
GRID_POINT: profile, dataset, normal and known anomaly class, gamma_p, gamma_l, seed; and the test dataset
where a scenario has several per trial). Only grid points where every compared method has an ok row enter.
The compared "methods" are the scenario's variants where it has them (ablations), else its methods.

Rank 1 is the best (the highest metric); tied values share the mean of their ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.report.stats import GRID_POINT

POSTHOCS = ("wilcoxon-holm", "nemenyi")
# Block columns beyond GRID_POINT that some scenarios use: several result rows per trial (Scenario-3's test
# datasets, the two-sample tests' sample sizes).
EXTRA_BLOCK = ["test_dataset", "sample_size"]


@dataclass
class Ranking:
    """What `rank` found: the paired table and the libraries' numbers on it."""

    metric: str
    table: pd.DataFrame  # one row per complete grid point, one column per method (the metric)
    mean_ranks: pd.Series  # per method, best (lowest) first
    friedman_statistic: float
    friedman_p: float
    posthoc: str
    p_values: pd.DataFrame  # method x method, corrected for multiple comparisons
    alpha: float
    dropped: int  # grid points left out: some compared method had no ok row there
    cd: float | None = None  # Nemenyi's critical difference of mean ranks (None for Wilcoxon-Holm)

    @property
    def methods(self) -> list[str]:
        return list(self.mean_ranks.index)

    @property
    def best(self) -> str:
        return self.mean_ranks.index[0]

    def summary_table(self) -> pd.DataFrame:
        """One line per method, best mean rank first: mean rank, mean metric (%), wins (rank 1 of k, shared on
        ties), and the corrected p-value against the best-ranked method with its verdict."""
        ranks = self.table.rank(axis=1, ascending=False, method="average")
        lines = []
        for m in self.methods:
            p = self.p_values.loc[self.best, m]
            lines.append({
                "method": m,
                "mean rank": f"{self.mean_ranks[m]:.2f}",
                f"mean {self.metric} (%)": f"{100 * self.table[m].mean():.1f}",
                "best at": f"{int((ranks[m] == 1).sum())} / {len(self.table)}",
                f"p vs {self.best}": "–" if m == self.best else f"{p:.3g}",
                "verdict": "best" if m == self.best else ("worse" if p < self.alpha else "n.s."),
            })
        return pd.DataFrame(lines)

    def describe(self) -> str:
        """One line: the Friedman test and the post-hoc test used."""
        post = ("Wilcoxon signed-rank, Holm-corrected" if self.posthoc == "wilcoxon-holm"
                else f"Nemenyi, CD = {self.cd:.2f} ranks")
        return (f"Friedman chi2 = {self.friedman_statistic:.2f}, p = {self.friedman_p:.3g} over "
                f"{len(self.table)} paired grid points x {len(self.methods)} methods"
                f"{f' ({self.dropped} incomplete points left out)' if self.dropped else ''}; "
                f"post-hoc: {post}, alpha = {self.alpha:g}")


def compared_label(ok: pd.DataFrame) -> pd.Series:
    """What is compared: the variant where the rows have one (an ablation; prefixed by the method when several
    methods have variants), else the method."""
    variant = ok["variant"] if "variant" in ok else pd.Series(None, index=ok.index, dtype=object)
    if variant.isna().all():
        return ok["method"].astype(str)
    several = ok.loc[variant.notna(), "method"].nunique() > 1
    return pd.Series([(f"{m}:{v}" if several else str(v)) if pd.notna(v) else str(m)
                      for m, v in zip(ok["method"], variant, strict=True)], index=ok.index)


def paired_table(rows: pd.DataFrame, metric: str = "auroc_pooled",
                 methods: list[str] | None = None) -> tuple[pd.DataFrame, int]:
    """(grid points x methods table of `metric` over the points every method finished, points left out)."""
    if metric not in rows:
        raise ValueError(f"unknown metric '{metric}'")
    ok = rows[(rows["status"] == "ok") & rows[metric].notna()].copy()
    ok["compared"] = compared_label(ok)
    if methods:
        unknown = [m for m in methods if m not in set(ok["compared"])]
        if unknown:
            raise ValueError(f"no ok rows of {', '.join(unknown)}; the rows hold: "
                             f"{', '.join(sorted(set(ok['compared'])))}")
        ok = ok[ok["compared"].isin(methods)]
    block = GRID_POINT + [c for c in EXTRA_BLOCK if c in ok and ok[c].notna().any()]
    for c in block:  # no known class, no test dataset: a value of its own, so the pivot keeps the row
        ok[c] = ok[c].astype(object).where(ok[c].notna(), "–")
    twice = ok.duplicated([*block, "compared"])
    if twice.any():
        first = ok[twice].iloc[0]
        raise ValueError(f"two ok rows of {first['compared']} at one grid point ({first['trial_key']}): "
                         "narrow the rows with --where")
    wide = ok.pivot(index=block, columns="compared", values=metric)
    order = methods or sorted(wide.columns)
    wide = wide[order]
    complete = wide.dropna()
    return complete, len(wide) - len(complete)


def rank(rows: pd.DataFrame, metric: str = "auroc_pooled", posthoc: str = "wilcoxon-holm", alpha: float = 0.05,
         methods: list[str] | None = None) -> Ranking:
    """The Friedman test, the post-hoc tests and the mean ranks of the methods (or variants) in `rows`."""
    import scikit_posthocs as sp
    from scipy.stats import friedmanchisquare, studentized_range

    if posthoc not in POSTHOCS:
        raise ValueError(f"unknown post-hoc test '{posthoc}'; choose {' or '.join(POSTHOCS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    table, dropped = paired_table(rows, metric, methods)
    k, n = table.shape[1], len(table)
    if k < 3:
        raise ValueError(f"the Friedman test needs at least 3 methods with ok rows, the rows have {k}"
                         f"{' (' + ', '.join(table.columns) + ')' if k else ''}: use `compare A B` for two")
    if n < 2:
        raise ValueError(f"only {n} grid point(s) where all {k} methods have an ok row: run more of the grid")
    friedman = friedmanchisquare(*(table[c].to_numpy() for c in table.columns))
    if posthoc == "nemenyi":
        p_values = sp.posthoc_nemenyi_friedman(table.reset_index(drop=True))
        # Demšar (2006): CD = q_alpha sqrt(k (k + 1) / 6N), q_alpha the studentized range quantile / sqrt 2.
        cd = float(studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2) * np.sqrt(k * (k + 1) / (6 * n)))
    else:
        # zsplit: identical methods (every difference zero) get p = 1 instead of an undefined test.
        p_values = sp.posthoc_wilcoxon([table[c].to_numpy() for c in table.columns], p_adjust="holm",
                                       zero_method="zsplit")
        p_values.index = p_values.columns = table.columns
        cd = None
    mean_ranks = table.rank(axis=1, ascending=False, method="average").mean()
    mean_ranks = mean_ranks.sort_values(kind="stable")
    return Ranking(metric=metric, table=table, mean_ranks=mean_ranks, friedman_statistic=float(friedman.statistic),
                   friedman_p=float(friedman.pvalue), posthoc=posthoc, p_values=p_values.loc[mean_ranks.index,
                   mean_ranks.index], alpha=alpha, dropped=dropped, cd=cd)


def plot_cd(ranking: Ranking, out, title: str = "") -> str:
    """The critical-difference diagram of `ranking` (scikit-posthocs) as a PNG at `out`; returns `out`.

    Methods joined by a bar are not significantly different by the ranking's post-hoc test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    k = len(ranking.methods)
    fig, ax = plt.subplots(figsize=(7.0, 1.8 + 0.32 * k))
    # The bars join methods the post-hoc test does not tell apart. Nemenyi's CD goes in the title: drawn as the
    # library's bar above the axis it would overlap the rank ticks.
    sp.critical_difference_diagram(ranking.mean_ranks, ranking.p_values, ax=ax, alpha=ranking.alpha,
                                   label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}")
    post = ("Wilcoxon-Holm" if ranking.posthoc == "wilcoxon-holm" else f"Nemenyi, CD = {ranking.cd:.2f}")
    ax.set_title(f"{title or f'mean rank of {ranking.metric}, n = {len(ranking.table)}'}\n"
                 f"1 = best; bars: not significantly different ({post}, alpha = {ranking.alpha:g})", fontsize=9, pad=14)
    fig.tight_layout()
    fig.savefig(out, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return str(out)
