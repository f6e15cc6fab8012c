"""Statistics over result rows: cell means, paired comparisons of two methods (Wilcoxon, SciPy), and
metrics recomputed from the stored per-sample scores (scikit-learn).

SciPy and scikit-learn are imported inside the functions that use them: they take a second or so to
load, and the CLI's summary, watch and sql commands need neither.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.store import connect

# A grid point: the trials of two methods at the same point (and seed) are a pair. The labeled-normal ratio is
# not part of it: it is the method's protocol (scenario2 gives HSCL labeled normals and Deep SAD none).
GRID_POINT = ["profile", "dataset", "normal_class", "anomaly_class", "gamma_p", "gamma_l", "seed"]


def cell_means(ok: pd.DataFrame, by: list[str], metric: str = "auroc_pooled") -> pd.DataFrame:
    """Mean metric in % (`mean`) and the number of trials (`n`) per combination of the `by` columns."""
    return ok.groupby(by, dropna=False)[metric].agg(mean=lambda s: 100 * s.mean(), n="size").reset_index()


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; NaN where there are none or all
    are zero (the test is undefined there)."""
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    return float(wilcoxon(d).pvalue) if len(d) > 0 and np.any(d != 0) else float("nan")


def compare(rows: pd.DataFrame, method_a: str, method_b: str, metric: str = "auroc_pooled") -> pd.DataFrame:
    """Paired comparison on the grid points (and seeds) both methods finished, per gamma.

    Per (gamma_p, gamma_l): n pairs, mean difference A - B (in AUROC points), how many points each
    wins, and the two-sided Wilcoxon signed-rank p-value (SciPy) of the differences.
    """
    ok = rows[rows["status"] == "ok"].copy()
    ok["anomaly_class"] = ok["anomaly_class"].fillna(-1)
    a = ok[ok["method"] == method_a].set_index(GRID_POINT)[metric]
    b = ok[ok["method"] == method_b].set_index(GRID_POINT)[metric]
    pairs = pd.concat({"a": a, "b": b}, axis=1, join="inner").reset_index()
    out = []
    for (gp, gl), g in pairs.groupby(["gamma_p", "gamma_l"]):
        diff = (g["a"] - g["b"]).to_numpy()
        out.append({"gamma_p": gp, "gamma_l": gl, "n": len(diff), "mean_diff": 100 * diff.mean(),
                    f"{method_a}_wins": int((diff > 0).sum()), f"{method_b}_wins": int((diff < 0).sum()),
                    "ties": int((diff == 0).sum()), "wilcoxon_p": wilcoxon_p(diff)})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------
# Metrics from the stored scores (anomaly = positive class)


def auroc(is_anomaly, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_anomaly, scores))


def aupr(is_anomaly, scores) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_anomaly, scores))


def fpr_at_95_tpr(is_anomaly, scores) -> float:
    """False positive rate when 95 % of anomalies are detected (anomaly = positive)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_anomaly, scores)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


METRICS = {"auroc": auroc, "aupr": aupr, "fpr95": fpr_at_95_tpr}


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
