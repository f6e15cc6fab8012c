"""The papers' claims that the reproduction report checks, and the checks themselves.

The claims are data (orchestrator/data/claims.yaml): which scenario, which methods or variants, which
test, which thresholds, and the claim's words. A check here is generic: it gets one claim and the ok
rows of the claim's scenario, and returns (claim, what we measured, verdict), or None where the rows
cannot test the claim (a method missing, a single value of the axis). No check names a method or a
scenario; the verdict words are the same for every claim a check tests.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from orchestrator.grid.scenarios import SCENARIOS
from orchestrator.report.stats import cell_means, compare, wilcoxon_p
from orchestrator.report.tables import gamma_label, published, with_metric

AXIS_SYMBOL = {"gamma_p": "γp", "gamma_l": "γl"}  # as the papers write the grid's ratio axes
HOLDS, FAILS = "holds", "does not hold"
NOT_SIGNIFICANT = "holds, not significant at this size"  # the right sign, but p >= alpha

Finding = tuple[str, str, str]  # (the claim, what we measured, the verdict)


def read_spec() -> dict:
    """claims.yaml: the report's sections (`report`), the claims (`claims`), method names (`names`)."""
    return yaml.safe_load(resources.files("orchestrator.data").joinpath("claims.yaml").read_text())


def fill_in(text: str, ok: pd.DataFrame, **values) -> str:
    """`text` with the slice's facts filled in: {normal_classes} (how many), {gamma_p} and {gamma_l}
    (their first value in the rows), and any `values`."""
    facts = {axis: gamma_label(ok[axis].iloc[0]) for axis in AXIS_SYMBOL if axis in ok and len(ok)}
    if "normal_class" in ok:
        facts["normal_classes"] = ok["normal_class"].nunique()
    return text.format(**facts, **values)


def check(claim: dict, ok: pd.DataFrame, names: dict[str, str] | None = None) -> Finding | None:
    """Test one claim on the ok rows of its scenario with the check its `test` names."""
    for col, value in claim.get("where", {}).items():  # a claim about one slice of its scenario (e.g. one γp)
        if col not in ok:
            return None
        ok = ok[np.isclose(ok[col], value)] if pd.api.types.is_numeric_dtype(ok[col]) else ok[ok[col] == value]
    if ok.empty:
        return None
    return CHECKS[claim["test"]](claim, ok, names or {})


def _points(ok: pd.DataFrame) -> list[str]:
    """What one paired observation is: a normal class at one seed (the known anomaly class and the labels
    follow from the scenario and the normal class)."""
    return ["normal_class", "seed"] if "seed" in ok else ["normal_class"]


def _seeds_text(frame: pd.DataFrame) -> str:
    if "seed" not in frame.index.names:
        return ""
    return "; seed(s) " + ", ".join(str(s) for s in sorted(frame.index.get_level_values("seed").unique()))


def _at(axis: str, value: float) -> str:
    return f"{AXIS_SYMBOL.get(axis, axis)}={gamma_label(value)}"


def _metric(claim: dict) -> str:
    return SCENARIOS[claim["scenario"]].metric


def _claim_text(claim: dict, ok: pd.DataFrame, paper: pd.Series | None = None) -> str:
    """The claim's words with its thresholds, the slice's facts and the paper's numbers filled in."""
    quoted = {}
    if paper is not None:
        quoted["published"] = ", ".join(f"{k} {v:.1f}" for k, v in paper.items())
        quoted["published_order"] = " < ".join(f"{k} ({v:.1f})" for k, v in paper.sort_values().items())
    thresholds = {k: v for k, v in claim.items() if k in ("margin", "alpha")}
    return fill_in(claim["text"], ok, **thresholds, **quoted)


def _paper_numbers(claim: dict, ok: pd.DataFrame, key: str) -> pd.Series:
    """The paper's numbers a claim quotes, by row key (method or variant): the published table that
    `claim.published` names, at its fixed column values and at the slice's fixed settings (its one γp)."""
    where = dict(claim["published"])
    pub = published(claim["scenario"], where.pop("dataset"))
    if pub.empty:
        return pd.Series(dtype=float)
    for col, value in where.items():
        pub = pub[pub[col].astype(str) == str(value)]
    for col in pub.columns.intersection(ok.columns).difference([key, *where]):
        values = ok[col].dropna().unique()
        if len(values) != 1:
            continue
        if pd.api.types.is_numeric_dtype(ok[col]):
            pub = pub[np.isclose(pd.to_numeric(pub[col], errors="coerce"), float(values[0]))]
        else:
            pub = pub[pub[col] == values[0]]
    return pub.set_index(key)["published"]


# ----------------------------------------------------------------------------------------------
# The checks


def margin_over_best(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """Each of `methods` at least `margin` points above the best of `baseline`, at every value of `axis`."""
    axis, margin = claim["axis"], claim["margin"]
    methods = [m for m in claim["methods"] if m in set(ok["method"])]
    baseline = [m for m in claim["baseline"] if m in set(ok["method"])]
    if not methods or not baseline:
        return None
    parts, margins = [], []
    for value, group in cell_means(ok, ["method", axis], _metric(claim)).groupby(axis):
        means = group.set_index("method")["mean"]
        best = means[[m for m in baseline if m in means.index]].idxmax()
        for m in methods:
            if m in means.index:
                margins.append(means[m] - means[best])
                parts.append(f"{_at(axis, value)}: {m} {means[m]:.1f} vs {best} {means[best]:.1f} "
                             f"({means[m] - means[best]:+.1f})")
    verdict = (HOLDS if min(margins) >= margin else
               "holds only in part" if max(margins) >= margin else
               "above, but not far above" if min(margins) > 0 else FAILS)
    return _claim_text(claim, ok), "; ".join(parts), verdict


def smaller_drop(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """A's drop from the first to the last value of `axis` smaller than B's, on the (normal class, seed) points
    where both methods have both values; Wilcoxon over the per-point differences of the two drops. A point
    missing a value (e.g. a seed run at the last γp only) is left out of the means as well."""
    (a, b), axis, metric = claim["methods"], claim["axis"], _metric(claim)
    values = sorted(ok[axis].unique())
    if len(values) < 2 or not {a, b} <= set(ok["method"]):
        return None
    lo, hi = values[0], values[-1]
    per_point = ok[ok[axis].isin([lo, hi])].pivot_table(index=_points(ok), columns=["method", axis], values=metric)
    if not {(m, v) for m in (a, b) for v in (lo, hi)} <= set(per_point.columns):
        return None
    drops = pd.DataFrame({m: 100 * (per_point[(m, lo)] - per_point[(m, hi)]) for m in (a, b)}).dropna()
    if drops.empty:
        return None
    d = drops[b] - drops[a]
    p = wilcoxon_p(d)
    name_a, name_b = names.get(a, a), names.get(b, b)
    measured = (f"from {_at(axis, lo)} to {gamma_label(hi)}: {name_a} drops {drops[a].mean():.1f} points, {name_b} "
                f"{drops[b].mean():.1f}; {name_a} drops less on {int((d > 0).sum())} of {len(d)} "
                f"(normal class{', seed' if 'seed' in drops.index.names else ''}) points{_seeds_text(drops)} "
                f"(Wilcoxon p = {p:.2g} on the paired differences)")
    verdict = FAILS if d.mean() <= 0 else HOLDS if p < claim["alpha"] else NOT_SIGNIFICANT
    if "published" not in claim:
        return _claim_text(claim, ok), measured, verdict
    where = dict(claim["published"])
    pub = published(claim["scenario"], where.pop("dataset"))
    for col, value in where.items():
        pub = pub[pub[col].astype(str) == str(value)]
    paper = pub.set_index(["method", axis])["published"]
    quoted = ", ".join(f"{names.get(m, m)} {paper[(m, lo)]:.1f} -> {paper[(m, hi)]:.1f}" for m in (a, b)
                       if (m, lo) in paper.index and (m, hi) in paper.index)
    return fill_in(claim["text"], ok, published=quoted, alpha=claim["alpha"]), measured, verdict


def paired_above(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """A above B on the grid points both finished (`compare`), significantly at every value of `axis`."""
    (a, b), axis = claim["methods"], claim["axis"]
    if not {a, b} <= set(ok["method"]):
        return None
    tested = compare(ok, a, b, _metric(claim))
    if tested.empty:
        return None
    parts = [f"{_at(axis, r[axis])}: {r['mean_diff']:+.1f} points, {names.get(a, a)} wins {r[f'{a}_wins']} of "
             f"{r['n']} (Wilcoxon p = {r['wilcoxon_p']:.2g})" for r in tested.to_dict("records")]
    above = (tested["mean_diff"] > 0).all()
    significant = (tested["wilcoxon_p"] < claim["alpha"]).all()
    verdict = HOLDS if above and significant else NOT_SIGNIFICANT if above else FAILS
    return _claim_text(claim, ok), "; ".join(parts), verdict


def above_all(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """A above each of `baseline`, paired on the (normal class, seed) points both finished: the mean over the
    slice, how many points A wins, and the Wilcoxon p per baseline. Holds against a baseline when A is above it
    and p < alpha."""
    method, axis, metric = claim["methods"][0], claim["axis"], _metric(claim)
    per_point = ok.pivot_table(index=_points(ok), columns="method", values=metric)
    others = [m for m in claim["baseline"] if m in per_point.columns]
    if method not in per_point.columns or not others:
        return None
    parts, beaten, above = [], [], []
    for m in others:
        pair = per_point[[method, m]].dropna()
        d = 100 * (pair[method] - pair[m])
        p = wilcoxon_p(d)
        parts.append(f"{names.get(method, method)} {100 * pair[method].mean():.1f} vs {names.get(m, m)} "
                     f"{100 * pair[m].mean():.1f}, higher on {int((d > 0).sum())} of {len(d)} points"
                     f"{_seeds_text(pair)} "
                     f"(Wilcoxon p = {p:.2g})")
        above += [m] if d.mean() > 0 else []
        beaten += [m] if d.mean() > 0 and p < claim.get("alpha", 0.05) else []
    measured = "; ".join(parts) + (f" ({per_point.index.get_level_values('normal_class').nunique()} normal classes "
                                   f"at {AXIS_SYMBOL.get(axis, axis)} = {gamma_label(ok[axis].iloc[0])})")
    verdict = (HOLDS if len(beaten) == len(others) else
               NOT_SIGNIFICANT if len(above) == len(others) else
               f"holds against {', '.join(above)} only" if above else FAILS)
    return _claim_text(claim, ok, _paper_numbers(claim, ok, "method")), measured, verdict


def rank_order(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """Our means of the `key` rows (variants) in the paper's order; Kendall's tau between the two."""
    from scipy.stats import kendalltau

    key = claim["key"]
    paper = _paper_numbers(claim, ok, key)
    # Only the (normal class, seed) points every row finished: a row further on in its seeds is not compared
    # on other points than the rest.
    per_point = ok.pivot_table(index=_points(ok), columns=key, values=_metric(claim)).dropna()
    ours = per_point.mean() * 100
    if paper.empty or ours.empty:
        return None
    paper_order, our_order = list(paper.sort_values().index), list(ours.sort_values().index)
    common = [v for v in paper_order if v in ours.index]
    tau = kendalltau([paper[v] for v in common], [ours[v] for v in common]).statistic if len(common) > 1 else np.nan
    measured = (f"ours, lowest to highest: {' < '.join(f'{v} {ours[v]:.1f}' for v in our_order)}; "
                f"Kendall's tau against the paper's order {tau:.2f} (over the {len(per_point)} (normal class"
                f"{', seed' if 'seed' in per_point.index.names else ''}) points every row finished"
                f"{_seeds_text(per_point)})")
    verdict = (HOLDS if our_order == paper_order else f"holds in part: '{paper_order[-1]}' is best"
               if our_order[-1] == paper_order[-1] else FAILS)
    return _claim_text(claim, ok, paper), measured, verdict


def _variant_pairs(claim: dict, ok: pd.DataFrame) -> tuple[str, str, pd.DataFrame] | None:
    """The claim's two `variants` paired on `pair_on`, without the rows `exclude` names ({column or key of
    `extra`: values}) -> (A, B, frame with columns a, b). A name matches a row's
    whole `variant` ("CADet + contrastive") or its detector, the part before the last " + " ("MMD-CC" in
    "MMD-CC + supervised"; the training after it is then a pairing column: `training`)."""
    metric = _metric(claim)
    rows = with_metric(ok, metric).copy()
    for col, values in claim.get("exclude", {}).items():  # e.g. a null shift, where "power" means nothing
        value = rows[col] if col in rows else pd.Series(
            [json.loads(e).get(col) if isinstance(e, str) else None for e in rows["extra"]], index=rows.index)
        rows = rows[~value.isin(values)]
    parts = rows["variant"].str.rsplit(" + ", n=1)
    rows["detector"], rows["training"] = parts.str[0], parts.str[-1]
    (a, b), on = claim["variants"], list(claim["pair_on"])
    sides = {}
    for name in (a, b):
        col = "variant" if name in set(rows["variant"]) else "detector"
        side = rows[rows[col] == name]
        if side.empty:
            return None
        sides[name] = side.groupby(on)[metric].mean()
    pairs = pd.concat({"a": sides[a], "b": sides[b]}, axis=1, join="inner").dropna()
    return (a, b, pairs) if len(pairs) else None


def _pairs_measured(a: str, b: str, pairs: pd.DataFrame, on: list[str]) -> tuple[np.ndarray, float, str]:
    d = 100 * (pairs["a"] - pairs["b"]).to_numpy()
    p = wilcoxon_p(d)
    seeds = sorted(pairs.index.get_level_values("seed").unique()) if "seed" in on else []
    measured = (f"{a} {100 * pairs['a'].mean():.1f} vs {b} {100 * pairs['b'].mean():.1f} "
                f"({d.mean():+.1f} points); {a} higher on {int((d > 0).sum())} of {len(d)} pairs "
                f"({', '.join(c for c in on if c != 'seed')}"
                + (f"; seed(s) {', '.join(map(str, seeds))}" if seeds else "") + f"), Wilcoxon p = {p:.2g}")
    return d, p, measured


def variant_above(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """Variant A above variant B, paired on `pair_on` (e.g. the attack and the seed); Wilcoxon over the pairs."""
    found = _variant_pairs(claim, ok)
    if found is None:
        return None
    a, b, pairs = found
    d, p, measured = _pairs_measured(a, b, pairs, claim["pair_on"])
    verdict = FAILS if d.mean() <= 0 else HOLDS if p < claim["alpha"] else NOT_SIGNIFICANT
    return _claim_text(claim, ok), measured, verdict


def variant_close(claim: dict, ok: pd.DataFrame, names: dict) -> Finding | None:
    """Variant A within `margin` points of variant B on average over the pairs (`pair_on`); the Wilcoxon p says
    whether a difference is detectable at all."""
    found = _variant_pairs(claim, ok)
    if found is None:
        return None
    a, b, pairs = found
    d, p, measured = _pairs_measured(a, b, pairs, claim["pair_on"])
    verdict = HOLDS if abs(d.mean()) <= claim["margin"] else f"{FAILS}: {a} {'above' if d.mean() > 0 else 'below'}"
    return _claim_text(claim, ok), measured, verdict


CHECKS = {fn.__name__: fn for fn in (margin_over_best, smaller_drop, paired_above, above_all, rank_order,
                                     variant_above, variant_close)}
