"""docs/reproduction.md from a result store: the tables of a reproduction run, its cost, and whether the
relations the papers claim hold. `benchmarks/reproduction.py` runs the sweeps and calls `write_report`;
`python -m orchestrator.results reproduction` writes the document from any store.

Every number in the document is computed here from the store's rows (and the papers' numbers from
orchestrator/data/published.yaml); the prose that interprets them is benchmarks/reproduction_notes.md,
pasted in at the end, and holds no numbers of its own.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.results import compare, load_rows, published
from orchestrator.grid.scenarios import SCENARIOS

CONTRASTIVE = ("hscl", "csi")
RAW_PIXELS = ("ocsvm", "iforest", "kde")
FAR_ABOVE = 5.0  # AUROC points: what "far above" must at least mean (the papers' gap on CIFAR-10 is ~35)
NOTES = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduction_notes.md"


def _pct(x: float) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.1f}"


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) if len(frame) else "_no finished trials_"


def _cell_means(ok: pd.DataFrame, by: list[str], metric: str = "auroc_pooled") -> pd.DataFrame:
    """Mean metric in %, and the number of trials, per cell."""
    return ok.groupby(by, dropna=False)[metric].agg(mean=lambda s: 100 * s.mean(), n="size").reset_index()


def _gamma_label(g: float) -> str:
    return f"{g:.2f}".rstrip("0").rstrip(".") if g else "0"


# ----------------------------------------------------------------------------------------------
# The tables


def main_table(ok: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """scenario2 slice: one line per method, mean AUROC per gamma_p [n], the drop, the paper's numbers,
    the median trial time. -> (table for the document, cells: method, gamma_p, mean, n)."""
    order = [m for m in SCENARIOS["scenario2"].methods if m in set(ok["method"])]
    cells = _cell_means(ok, ["method", "gamma_p"])
    gammas = sorted(cells["gamma_p"].unique())
    pub = published("scenario2", "cifar10")
    lines = []
    for m in order:
        mine = cells[cells["method"] == m].set_index("gamma_p")
        line = {"method": m, "labels used": bool(ok.loc[ok["method"] == m, "uses_labels"].iloc[0])}
        for g in gammas:
            line[f"γp={_gamma_label(g)}"] = (f"{mine.loc[g, 'mean']:.1f} [{int(mine.loc[g, 'n'])}]"
                                             if g in mine.index else "–")
        if len(gammas) > 1 and gammas[0] in mine.index and gammas[-1] in mine.index:
            line["drop"] = _pct(mine.loc[gammas[0], "mean"] - mine.loc[gammas[-1], "mean"])
        for g in gammas:
            theirs = pub[(pub["method"] == m) & np.isclose(pub["gamma_p"].astype(float), g)]["published"]
            line[f"paper γp={_gamma_label(g)}"] = _pct(theirs.iloc[0]) if len(theirs) else "–"
        line["s / trial (median)"] = f"{ok.loc[ok['method'] == m, 'trial_seconds'].median():.0f}"
        lines.append(line)
    return pd.DataFrame(lines), cells


def per_class_table(ok: pd.DataFrame, row_keys: list[str], row_order: list) -> pd.DataFrame:
    """One line per row key, one column per normal class (its known anomaly class in brackets), plus the mean."""
    cells = _cell_means(ok, [*row_keys, "normal_class"])
    known = ok.groupby("normal_class")["anomaly_class"].first()
    lines = []
    for key, group in cells.groupby(row_keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        line = dict(zip(row_keys, key, strict=True))
        for _, r in group.sort_values("normal_class").iterrows():
            c = int(r["normal_class"])
            label = f"{c} (vs {int(known[c])})" if pd.notna(known.get(c)) else str(c)
            line[label] = _pct(r["mean"])
        line["mean"] = _pct(group["mean"].mean())
        lines.append(line)
    frame = pd.DataFrame(lines)
    rank = {v: i for i, v in enumerate(row_order)}
    return frame.sort_values(row_keys[0], key=lambda s: s.map(rank).fillna(len(rank)), kind="stable")


# ----------------------------------------------------------------------------------------------
# The relations the papers claim: each returns (claim, what we measured, verdict)


def relation_contrastive_vs_pixels(cells: pd.DataFrame) -> tuple[str, str, str] | None:
    claim = (f"Contrastive methods (HSCL, CSI) score far above the raw-pixel OC-SVM, IF and KDE on CIFAR-10 "
             f"(HSCL Table 2); here 'far' means at least {FAR_ABOVE:.0f} AUROC points above the best of the three.")
    have = set(cells["method"])
    contrastive, raw = [m for m in CONTRASTIVE if m in have], [m for m in RAW_PIXELS if m in have]
    if not contrastive or not raw:
        return None
    parts, margins = [], []
    for g, group in cells.groupby("gamma_p"):
        means = group.set_index("method")["mean"]
        best_raw = means[[m for m in raw if m in means.index]].idxmax()
        for m in contrastive:
            if m in means.index:
                margins.append(means[m] - means[best_raw])
                parts.append(f"γp={_gamma_label(g)}: {m} {means[m]:.1f} vs {best_raw} {means[best_raw]:.1f} "
                             f"({means[m] - means[best_raw]:+.1f})")
    verdict = ("holds" if min(margins) >= FAR_ABOVE else
               "holds only in part" if max(margins) >= FAR_ABOVE else
               "above, but not far above" if min(margins) > 0 else "does not hold")
    return claim, "; ".join(parts), verdict


def relation_drop(ok: pd.DataFrame, cells: pd.DataFrame) -> tuple[str, str, str] | None:
    from scipy.stats import wilcoxon

    claim = "HSCL loses less AUROC than CSI as the pollution γp grows (HSCL Table 2)."
    gammas = sorted(cells["gamma_p"].unique())
    if len(gammas) < 2 or not {"hscl", "csi"} <= set(cells["method"]):
        return None
    lo, hi = gammas[0], gammas[-1]
    means = cells.set_index(["method", "gamma_p"])["mean"]
    drop = {m: means[(m, lo)] - means[(m, hi)] for m in ("hscl", "csi")}
    per_class = ok[ok["gamma_p"].isin([lo, hi])].pivot_table(
        index="normal_class", columns=["method", "gamma_p"], values="auroc_pooled")
    d = 100 * ((per_class[("csi", lo)] - per_class[("csi", hi)]) - (per_class[("hscl", lo)] - per_class[("hscl", hi)]))
    d = d.dropna()
    p = float(wilcoxon(d).pvalue) if len(d) > 1 and np.any(d != 0) else float("nan")
    measured = (f"from γp={_gamma_label(lo)} to {_gamma_label(hi)}: HSCL drops {drop['hscl']:.1f} points, CSI "
                f"{drop['csi']:.1f}; HSCL drops less on {int((d > 0).sum())} of {len(d)} normal classes "
                f"(Wilcoxon p = {p:.2g} on the per-class differences)")
    verdict = "holds" if drop["hscl"] < drop["csi"] else "does not hold"
    if verdict == "holds" and not p < 0.05:
        verdict = "holds, not significant at this size"
    return claim, measured, verdict


def relation_deepsad(ok: pd.DataFrame) -> tuple[str, str, str] | None:
    claim = "Deep SAD, which uses the labeled anomalies, scores above the unsupervised Deep SVDD (HSCL Table 2)."
    if not {"deepsad", "deepsvdd"} <= set(ok["method"]):
        return None
    tested = compare(ok, "deepsad", "deepsvdd")
    parts = [f"γp={_gamma_label(r.gamma_p)}: {r.mean_diff:+.1f} points, Deep SAD wins {r.deepsad_wins} of {r.n} "
             f"(Wilcoxon p = {r.wilcoxon_p:.2g})" for r in tested.itertuples()]
    above = (tested["mean_diff"] > 0).all()
    significant = (tested["wilcoxon_p"] < 0.05).all()
    verdict = ("holds" if above and significant else "holds, not significant at this size" if above
               else "does not hold")
    return claim, "; ".join(parts), verdict


def relation_milconvex(cont: pd.DataFrame) -> tuple[str, str, str] | None:
    means = cont.groupby("method")["auroc_pooled"].mean() * 100
    if "milconvex" not in means.index or len(means) < 2:
        return None
    gamma = cont["gamma_p"].iloc[0]
    pub = published("contamination", "cifar10")
    pub = pub[np.isclose(pub["gamma_p"], gamma) & (pub["normal_class"].astype(str) == "mean")]
    paper = ", ".join(f"{r.method} {r.published:.1f}" for r in pub.itertuples())
    claim = (f"Under contamination MIL-convex scores above CSI and MSC (MIL-convex Table 1, γp = "
             f"{_gamma_label(gamma)}, mean of 10: {paper}).")
    others = [m for m in ("csi", "msc") if m in means.index]
    measured = (", ".join(f"{m} {means[m]:.1f}" for m in ["milconvex", *others]) +
                f" (mean over {cont['normal_class'].nunique()} normal classes at γp = "
                f"{_gamma_label(cont['gamma_p'].iloc[0])})")
    above = [m for m in others if means["milconvex"] > means[m]]
    verdict = ("holds" if len(above) == len(others) else f"holds against {', '.join(above)} only" if above
               else "does not hold")
    return claim, measured, verdict


def relation_ablation(abl: pd.DataFrame) -> tuple[str, str, str] | None:
    if abl.empty:
        return None
    pub = published("milconvex-ablation", "cifar10").set_index("variant")["published"]
    ours = abl.groupby("variant")["auroc_pooled"].mean() * 100
    paper_order = list(pub.sort_values().index)
    claim = (f"MIL-convex Table 3: with all components the method scores best, and the rows rank "
             f"{' < '.join(f'{v} ({pub[v]:.1f})' for v in paper_order)}.")
    our_order = list(ours.sort_values().index)
    from scipy.stats import kendalltau

    common = [v for v in paper_order if v in ours.index]
    tau = kendalltau([pub[v] for v in common], [ours[v] for v in common]).statistic if len(common) > 1 else np.nan
    measured = (f"ours, lowest to highest: {' < '.join(f'{v} {ours[v]:.1f}' for v in our_order)}; "
                f"Kendall's tau against the paper's order {tau:.2f} (over {abl['normal_class'].nunique()} "
                f"normal classes)")
    best = our_order[-1] == "all"
    verdict = ("holds" if our_order == paper_order else "holds in part: 'all' is best" if best
               else "does not hold")
    return claim, measured, verdict


# ----------------------------------------------------------------------------------------------
# Cost and set-up


def cost_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and method: trials, median train and trial seconds, summed trial minutes; and the total."""
    def line(scenario: str, method: str, g: pd.DataFrame) -> dict:
        return {"scenario": scenario, "method": method, "trials ok": int((g["status"] == "ok").sum()),
                "failed": int((g["status"] != "ok").sum()),
                "train s (median)": f"{g['train_seconds'].median():.0f}",
                "trial s (median)": f"{g['trial_seconds'].median():.0f}",
                "trial time, sum (min)": f"{g['trial_seconds'].sum() / 60:.1f}"}

    order = {m: i for i, m in enumerate(SCENARIOS["scenario2"].methods)}
    rows = rows.sort_values(["scenario", "method"], key=lambda s: s.map(order).fillna(len(order)) if s.name == "method"
                            else s.map({"scenario2": 0}).fillna(1), kind="stable")
    lines = [line(scenario, method, g) for (scenario, method), g in rows.groupby(["scenario", "method"], sort=False)]
    total = line("all", "", rows)
    total["train s (median)"] = total["trial s (median)"] = ""
    return pd.DataFrame([*lines, total])


def wall_minutes(rows: pd.DataFrame) -> float:
    """Minutes during which at least one trial was running: the union of the trials' [start, end]
    intervals, so the time between two sessions that each ran part of the slice does not count."""
    spans = rows[["started_at", "finished_at"]].dropna().sort_values("started_at")
    busy, end = pd.Timedelta(0), None
    for start, finish in spans.itertuples(index=False):
        if end is None or start > end:
            busy, end = busy + (finish - start), finish
        elif finish > end:
            busy, end = busy + (finish - end), finish
    return busy.total_seconds() / 60


def setup_lines(rows: pd.DataFrame, profile: str) -> list[str]:
    def params(method: str) -> dict:
        return json.loads(rows.loc[rows["method"] == method, "params"].iloc[0])

    out = [f"- Profile `{profile}`; dataset(s): {', '.join(f'`{d}`' for d in sorted(rows['dataset'].unique()))}."]
    for m in [m for m in ("hscl", "deepsvdd") if m in set(rows["method"])]:
        p = params(m)
        keys = [k for k in ("net", "epochs", "batch_size", "lr", "rotations", "crop_scale_min", "cpu_bf16") if k in p]
        out.append(f"- {m}: " + ", ".join(f"{k} {p[k]}" for k in keys) + ".")
    s2 = rows[rows["scenario"] == "scenario2"]
    first = (s2 if len(s2) else rows).iloc[0]
    out.append(f"- Split: γl = {first['gamma_l']:.2f} labeled anomalies of the known class (scenario2), "
               f"{first['val_fraction']:.0%} of the training images held out for validation; "
               f"{int(rows['n_test'].dropna().iloc[0]) if rows['n_test'].notna().any() else '?'} test images; "
               f"seed(s) {', '.join(str(s) for s in sorted(rows['seed'].unique()))}.")
    out.append(f"- Device(s): {', '.join(sorted(rows['device'].dropna().unique()))}; host(s) "
               f"{', '.join(sorted(rows['hostname'].dropna().unique()))}; one CPU thread per trial unless stated.")
    out.append(f"- Code: git {', '.join(sorted(rows['git_sha'].dropna().unique()))}.")
    return out


# ----------------------------------------------------------------------------------------------
# The document


def build_report(storage: str, profile: str = "small") -> str:
    rows = load_rows(storage)
    rows = rows[rows["profile"] == profile]
    if rows.empty:
        raise ValueError(f"{storage} holds no '{profile}' trials: run benchmarks/reproduction.py first")
    ok = rows[rows["status"] == "ok"]
    s2, abl = ok[ok["scenario"] == "scenario2"], ok[ok["scenario"] == "milconvex-ablation"]
    cont = ok[ok["scenario"] == "contamination"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    datasets = ", ".join(sorted({Path(d.removeprefix("imagefolder:")).name for d in rows["dataset"].unique()}))

    doc = [
        f"# Reproduction on {datasets}: the `{profile}` profile",
        "",
        f"_Generated by `python benchmarks/reproduction.py` from the store `{storage}` on {now} "
        f"(python {platform.python_version()}); do not edit by hand: re-run "
        "`python benchmarks/reproduction.py --report-only` to regenerate it._",
        "",
        "AUROC in %, pooled: the normal class against all other classes of the test split. "
        "The papers' numbers come from orchestrator/data/published.yaml (CIFAR-10, full-size ResNet-18, "
        "hundreds of epochs on a GPU)"
        + ("; ours from a network a quarter as wide trained for a few epochs on one CPU thread, so ours are "
           "expected lower in absolute terms: what should carry over are the relations below." if profile == "small"
           else "."),
        "",
        "## Set-up",
        "",
        *setup_lines(rows, profile),
        "",
    ]
    relations = []
    if not s2.empty:
        table, cells = main_table(s2)
        doc += [
            f"## HSCL Table 2, sliced: {s2['normal_class'].nunique()} normal classes, one known anomaly class each",
            "",
            "Mean over the normal classes [trials]; `drop` is the loss from the first to the last γp; "
            "`paper` is HSCL Table 2 (mean over all 90 pairs).",
            "",
            _md(table),
            "",
            "Per normal class (its known anomaly class in brackets):",
            "",
            _md(per_class_table(s2, ["method", "gamma_p"], list(SCENARIOS["scenario2"].methods))),
            "",
        ]
        relations += [relation_contrastive_vs_pixels(cells), relation_drop(s2, cells), relation_deepsad(s2)]
    if not cont.empty:
        pub = published("contamination", "cifar10")
        table = per_class_table(cont, ["method", "gamma_p"], list(SCENARIOS["contamination"].methods))
        classes = sorted(cont["normal_class"].unique())
        for line, r in table.iterrows():
            theirs = pub[(pub["method"] == r["method"]) & np.isclose(pub["gamma_p"], r["gamma_p"])]
            theirs = theirs.set_index(theirs["normal_class"].astype(str))["published"]
            table.loc[line, "paper (same classes)"] = _pct(np.mean([theirs.get(str(c), np.nan) for c in classes]))
            table.loc[line, "paper (mean of 10)"] = _pct(theirs.get("mean"))
        doc += [
            "## MIL-convex Table 1, sliced: unsupervised, the training set contaminated from all other classes",
            "",
            _md(table),
            "",
        ]
        relations.append(relation_milconvex(cont))
    if not abl.empty:
        pub = published("milconvex-ablation", "cifar10").set_index("variant")["published"]
        variants = list(SCENARIOS["milconvex-ablation"].variants)
        table = per_class_table(abl, ["variant"], variants)
        table["paper (mean of 10)"] = table["variant"].map(lambda v: _pct(pub.get(v)))
        doc += [
            f"## MIL-convex Table 3 (ablation), γp = {_gamma_label(abl['gamma_p'].iloc[0])}, no labels",
            "",
            _md(table),
            "",
        ]
        relations.append(relation_ablation(abl))

    doc += ["## Do the papers' relations hold?", "", "| claim | measured | verdict |", "| --- | --- | --- |"]
    doc += [f"| {c} | {m} | **{v}** |" for c, m, v in (r for r in relations if r is not None)]
    doc += ["", "## Cost", "",
            f"Trial time is one CPU thread's; two trials ran at once. Wall time with at least one trial "
            f"running: {wall_minutes(rows):.0f} min.", "", _md(cost_table(rows)), ""]
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        first_error = str(failed["error"].iloc[0]).splitlines()[0][:200]
        doc += [f"{len(failed)} trial(s) failed; first error: `{first_error}`", ""]
    if NOTES.is_file():
        doc += ["## Reading the results", "", NOTES.read_text().strip(), ""]
    return "\n".join(doc)


def write_report(storage: str, out: str | Path, profile: str = "small") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(storage, profile))
    return out
