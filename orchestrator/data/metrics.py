"""AUROCs of one trial's test scores, with scikit-learn. Scores: higher = more anomalous."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def test_aurocs(scores, labels, normal_class: int, anomaly_class: int | None) -> dict:
    """The AUROCs the papers report; they differ in which, so a row keeps them all.

    - ``auroc_pooled``: normal class against all other classes together (HSCL, CSI);
    - ``auroc_known``: normal class against the known anomaly class only;
    - ``auroc_per_class`` / ``auroc_mean_1v1``: normal against each anomaly class, and their mean.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if not np.all(np.isfinite(scores)):
        raise FloatingPointError(f"{int((~np.isfinite(scores)).sum())} test scores are NaN or infinite")
    is_normal = labels == normal_class

    def one_vs(mask):
        keep = is_normal | mask
        return float(roc_auc_score(~is_normal[keep], scores[keep]))

    per_class = {int(c): one_vs(labels == c) for c in np.unique(labels) if c != normal_class}
    return {
        "auroc_pooled": float(roc_auc_score(~is_normal, scores)),
        "auroc_known": per_class.get(anomaly_class) if anomaly_class is not None else None,
        "auroc_per_class": per_class,
        "auroc_mean_1v1": float(np.mean(list(per_class.values()))),
    }
