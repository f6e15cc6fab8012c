"""docs/reproduction.md from a result store: the tables of a reproduction run, its cost, and whether the
relations the papers claim hold. `benchmarks/reproduction.py` runs the sweeps and calls `write_report`;
`python -m orchestrator.results reproduction` writes the document from any store.

What the document shows is data, in orchestrator/data/claims.yaml: its sections (which scenario, which
table layout, which paper's numbers beside ours) and the claims it checks (orchestrator/report/claims.py).
Every number is computed here from the store's rows (and the papers' numbers from published.yaml); the
prose that interprets them is benchmarks/reproduction_notes.md, pasted in at the end, and holds no
numbers of its own. Each section ends with the mean ranks of its methods (Friedman and Wilcoxon-Holm tests,
orchestrator/report/ranks.py) and their critical-difference diagram, a PNG under figures/ beside the
document; the audit line is read from the store's audit record (orchestrator/report/audit.py), never from
trials re-run at report time.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.grid.scenarios import SCENARIOS
from orchestrator.report.audit import read_record, record_line
from orchestrator.report.claims import AXIS_SYMBOL, check, fill_in, read_spec
from orchestrator.report.stats import cell_means
from orchestrator.report.tables import (
    cell_text,
    complete_seeds,
    gamma_label,
    paper_table,
    percent,
    published,
    row_order,
    summary,
    wide_table,
)
from orchestrator.store import load_rows

ROOT = Path(__file__).resolve().parents[2]
NOTES = ROOT / "benchmarks" / "reproduction_notes.md"


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) if len(frame) else "_no finished trials_"


def shown_path(storage: str) -> str:
    """The store as the document names it: relative to the repository when inside it (no path of the
    machine that built the document), else as given (another folder, s3://...)."""
    if "://" in storage:
        return storage
    path = Path(storage).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else storage


# ----------------------------------------------------------------------------------------------
# The table layouts a section can ask for: (ok rows of the scenario, the scenario, the table's spec)


def by_column_table(ok: pd.DataFrame, scenario, spec: dict) -> pd.DataFrame:
    """One line per method: mean [n] per value of the column axis, the drop from its first to its last
    value, the paper's numbers, the median trial time."""
    column = scenario.table_columns
    symbol = AXIS_SYMBOL.get(column, column)
    cells = paper_table(ok, ("method",), column, scenario.metric)  # mean and std over seeds, n trials
    values = sorted(cells[column].unique())
    pub = published(scenario.name, spec["published"]["dataset"])
    lines = []
    for m in [m for m in scenario.methods if m in set(ok["method"])]:
        mine = cells[cells["method"] == m].set_index(column)
        first = ok.loc[ok["method"] == m].iloc[0]
        # What the method was given (Trial.labeled_anomalies; gamma_l_normal per the scenario's protocol).
        line = {"method": m, "labels used": bool(first["uses_labels"]),
                "labeled normals": f"γl={gamma_label(first['gamma_l_normal'])}",
                "labeled anomalies": first.get("labeled_anomalies") or "–",
                "seeds": ok.loc[ok["method"] == m, "seed"].nunique()}
        for v in values:
            line[f"{symbol}={gamma_label(v)}"] = (cell_text(*mine.loc[v, ["mean", "std", "n", "pending"]])
                                                  if v in mine.index else "–")
        if len(values) > 1 and values[0] in mine.index and values[-1] in mine.index:
            line["drop"] = percent(mine.loc[values[0], "mean"] - mine.loc[values[-1], "mean"])
        for v in values:
            theirs = pub[_same_row(pub, {"method": m, column: v})]["published"] if len(pub) else []
            line[f"paper {symbol}={gamma_label(v)}"] = percent(theirs.iloc[0]) if len(theirs) else "–"
        line["s / trial (median)"] = f"{ok.loc[ok['method'] == m, 'trial_seconds'].median():.0f}"
        lines.append(line)
    return pd.DataFrame(lines)


def by_normal_class_table(ok: pd.DataFrame, scenario, spec: dict) -> pd.DataFrame:
    """One line per row key, one column per normal class (its known anomaly class in brackets), the
    mean, and the paper's mean over the same classes and over all its classes where `spec` asks."""
    row_keys = list(spec["rows"])
    known = ok.groupby("normal_class")["anomaly_class"].first()
    ok = complete_seeds(ok, row_keys)
    cells = cell_means(ok, [*row_keys, "normal_class"], scenario.metric)
    seeds = ok.groupby(row_keys, sort=False, dropna=False)["seed"].unique() if "seed" in ok else None
    lines = []
    for key, group in cells.groupby(row_keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        line = dict(zip(row_keys, key, strict=True))
        if seeds is not None:
            line["seeds"] = ", ".join(str(int(v)) for v in sorted(seeds.loc[key if len(key) > 1 else key[0]]))
        for _, r in group.sort_values("normal_class").iterrows():
            c = int(r["normal_class"])
            line[f"{c} (vs {int(known[c])})" if pd.notna(known.get(c)) else str(c)] = percent(r["mean"])
        line["mean"] = percent(group["mean"].mean())
        lines.append(line)
    frame = pd.DataFrame(lines)
    rank = {v: i for i, v in enumerate(row_order(scenario).get(row_keys[0], []))}
    frame = frame.sort_values(row_keys[0], key=lambda s: s.map(rank).fillna(len(rank)), kind="stable")
    if "published" in spec:
        _add_paper_means(frame, ok, scenario.name, spec["published"], row_keys)
    return frame


def _same_row(pub: pd.DataFrame, key: dict) -> pd.Series:
    """The published records whose row keys equal `key` (floats: to rounding)."""
    mask = pd.Series(True, index=pub.index)
    for col, value in key.items():
        if col not in pub:
            return mask & False
        numeric = isinstance(value, (float, np.floating))
        mask &= np.isclose(pd.to_numeric(pub[col], errors="coerce"), value) if numeric else pub[col] == value
    return mask


def _add_paper_means(frame: pd.DataFrame, ok: pd.DataFrame, scenario_name: str, spec: dict,
                     row_keys: list[str]) -> None:
    """The paper's mean over our normal classes (`same_classes`) and its own mean (`mean`), as columns
    named by the spec's labels."""
    pub = published(scenario_name, spec["dataset"])
    classes = sorted(ok["normal_class"].unique())
    for i, line in frame.iterrows():
        theirs = pub[_same_row(pub, {k: line[k] for k in row_keys})] if len(pub) else pub
        theirs = theirs.set_index(theirs["normal_class"].astype(str))["published"] if len(theirs) else {}
        if "same_classes" in spec:
            frame.loc[i, spec["same_classes"]] = percent(np.mean([theirs.get(str(c), np.nan) for c in classes]))
        if "mean" in spec:
            frame.loc[i, spec["mean"]] = percent(theirs.get("mean"))


LAYOUTS = {"by_column": by_column_table, "by_normal_class": by_normal_class_table}


def section_lines(section: dict, ok: pd.DataFrame, profile: str = "small") -> list[str]:
    """A section of the document: its heading, then each table with its caption, then the mean ranks."""
    if ok.empty:
        return []
    lines = [f"## {fill_in(section['title'], ok)}", ""]
    for table in section["tables"]:
        frame = LAYOUTS[table["layout"]](ok, SCENARIOS[section["scenario"]], table)
        lines += [table["caption"], ""] if "caption" in table else []
        lines += [_md(frame), ""]
    return lines + rank_lines(section["scenario"], ok, profile)


# ----------------------------------------------------------------------------------------------
# Mean ranks and critical-difference diagrams (orchestrator/report/ranks.py)


def cd_figure(scenario: str, profile: str) -> str:
    """The section's CD diagram, relative to the document's folder."""
    return f"figures/{scenario}-{profile}-cd.png"


def section_ranking(scenario: str, ok: pd.DataFrame):
    """The ranking of the section's methods (variants), or the one-line reason there is none."""
    from orchestrator.report.ranks import rank

    try:
        return rank(ok, SCENARIOS[scenario].metric)
    except ValueError as exc:
        return str(exc).split(": use")[0]


def rank_lines(scenario: str, ok: pd.DataFrame, profile: str) -> list[str]:
    ranking = section_ranking(scenario, ok)
    if isinstance(ranking, str):
        return [f"_Mean ranks: none ({ranking})._", ""]
    return [f"Mean ranks over the grid points every method finished (1 = best; {ranking.describe()}; "
            f"`p vs {ranking.best}` is the corrected p-value against the best-ranked):", "",
            ranking.summary_table().to_markdown(index=False, disable_numparse=True), "",
            f"![critical-difference diagram of {scenario}]({cd_figure(scenario, profile)})", ""]


def write_cd_figures(storage: str, out_dir: Path, profile: str = "small") -> list[Path]:
    """The CD diagrams the document links to, one per section that has a ranking."""
    from orchestrator.report.ranks import plot_cd

    rows = load_rows(storage)
    ok = rows[(rows["profile"] == profile) & (rows["status"] == "ok")]
    written = []
    for section in read_spec()["report"]["sections"]:
        mine = ok[ok["scenario"] == section["scenario"]]
        ranking = section_ranking(section["scenario"], mine) if len(mine) else None
        if ranking is None or isinstance(ranking, str):
            continue
        path = out_dir / cd_figure(section["scenario"], profile)
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(plot_cd(ranking, path, f"{section['scenario']} ({profile}): mean rank of "
                                                   f"{ranking.metric}, n = {len(ranking.table)} grid points")))
    return written


# ----------------------------------------------------------------------------------------------
# Cost and set-up


def row_precision(rows: pd.DataFrame) -> pd.Series:
    """The precision each trial's network computed in ("bf16", "fp32"), "" for methods without a network."""
    return rows["extra"].map(lambda e: (json.loads(e).get("precision") or "") if isinstance(e, str) else "")


def cost_table(rows: pd.DataFrame, scenario_order: list[str]) -> pd.DataFrame:
    """Per scenario, method and precision: trials, median train and trial seconds, summed trial minutes; and the
    total. Scenarios in the document's order, methods in the order its scenarios declare them. Precision is a
    key because seeds may come from different CPUs: bf16 on one with native bf16 is several times faster."""
    def line(scenario: str, method: str, precision: str, g: pd.DataFrame) -> dict:
        return {"scenario": scenario, "method": method, "precision": precision,
                "trials ok": int((g["status"] == "ok").sum()),
                "failed": int((g["status"] != "ok").sum()),
                "train s (median)": f"{g['train_seconds'].median():.0f}",
                "trial s (median)": f"{g['trial_seconds'].median():.0f}",
                "trial time, sum (min)": f"{g['trial_seconds'].sum() / 60:.1f}"}

    methods = list(dict.fromkeys(m for s in scenario_order for m in SCENARIOS[s].methods))
    scenario_rank, method_rank = ({v: i for i, v in enumerate(vs)} for vs in (scenario_order, methods))
    ordered = rows.assign(scenario_rank=rows["scenario"].map(scenario_rank).fillna(len(scenario_rank)),
                          method_rank=rows["method"].map(method_rank).fillna(len(method_rank)),
                          precision=row_precision(rows))
    ordered = ordered.sort_values(["scenario_rank", "scenario", "method_rank", "method", "precision"], kind="stable")
    groups = ordered.groupby(["scenario", "method", "precision"], sort=False)
    total = line("all", "", "", rows)
    total["train s (median)"] = total["trial s (median)"] = ""
    return pd.DataFrame([*(line(scenario, method, precision, g) for (scenario, method, precision), g in groups),
                         total])


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


def setup_lines(rows: pd.DataFrame, profile: str, spec: dict) -> list[str]:
    """Profile and datasets, the training settings of `spec.methods`, the split, devices and code."""
    # Rows written before datasets were stored by name hold the folder they were read from: show its name.
    names = sorted({d if not d.startswith("imagefolder:") else "imagefolder:" + Path(d.split(":", 1)[1]).name
                    for d in rows["dataset"].unique()})
    out = [f"- Profile `{profile}`; dataset(s): {', '.join(f'`{d}`' for d in names)}."]
    for m in [m for m in spec["methods"] if m in set(rows["method"])]:
        params = json.loads(rows.loc[rows["method"] == m, "params"].iloc[0])
        out.append(f"- {m}: " + ", ".join(f"{k} {params[k]}" for k in spec["params"] if k in params) + ".")
    split = rows[rows["scenario"] == spec["split_scenario"]]
    first = (split if len(split) else rows).iloc[0]
    out.append(f"- Split: γl = {first['gamma_l']:.2f} labeled anomalies of the known class "
               f"({spec['split_scenario']}), {first['val_fraction']:.0%} of the training images held out for "
               f"validation; {int(rows['n_test'].dropna().iloc[0]) if rows['n_test'].notna().any() else '?'} "
               f"test images; seed(s) {', '.join(str(s) for s in sorted(rows['seed'].unique()))}.")
    out.append(f"- Device(s): {', '.join(sorted(rows['device'].dropna().unique()))}; host(s) "
               f"{', '.join(sorted(rows['hostname'].dropna().unique()))}; one CPU thread per trial unless stated.")
    precision = row_precision(rows).replace("", None)
    if precision.notna().any():
        # Seeds can come from different machines (a CPU with native bf16 and one without): name which
        # seeds ran in which precision, since a paired comparison is only within one seed.
        by = pd.DataFrame({"precision": precision, "seed": rows["seed"]}).dropna().groupby("precision")["seed"]
        parts = [f"{k} ({len(s)} trials; seed(s) {', '.join(str(x) for x in sorted(s.unique()))})" for k, s in by]
        out.append("- Precision of the networks: " + ", ".join(parts)
                   + " (bf16 only on a CPU that computes it natively: methods/trainer.py Precision).")
    out.append(f"- Code: git {', '.join(sorted(rows['git_sha'].dropna().unique()))}.")
    return out


def progress_lines(storage: str, profile: str) -> list[str]:
    """How far each sweep command that wrote into the store got: a store being filled says so."""
    sweeps = summary(storage)
    sweeps = sweeps[sweeps["profile"] == profile] if len(sweeps) else sweeps
    lines = [f"- `{r.scenario}` sweep: {r.trials} trials asked, {r.ok} ok, {r.failed} failed, {r.missing} not run yet."
             for r in sweeps.itertuples(index=False)]
    if any(r.missing for r in sweeps.itertuples(index=False)):
        lines.append("- The store is still being filled: cells hold the trials finished so far (their count "
                     "in brackets); \"+k\": the k trials of a seed that does not yet cover the cell's grid points, "
                     "left out of its mean and std until it does.")
    return lines


# ----------------------------------------------------------------------------------------------
# The document


# CADet's experiments (Tables 1, 3, 4 and Figure 2) in the scenarios' own layouts, the paper's numbers beside.
CADET_SCENARIOS = {
    "ood-detection": "CADet Table 3 analogue: single-sample OOD detection (AUROC %, seeds [trials])",
    "rejection": "CADet Table 1 analogue: two-sample rejection rate against n",
    "adversarial": "CADet Table 4 analogue: adversarial detection",
    "cadet-transforms": "CADet Figure 2 analogue: AUROC against the number of transformations",
}


def cadet_rows(cadet_storage: str | None, profile: str) -> pd.DataFrame:
    """The CADet store's ok rows of the profile (empty when there is no store)."""
    if not cadet_storage or not (Path(cadet_storage).exists() or "://" in cadet_storage):
        return pd.DataFrame()
    rows = load_rows(cadet_storage)
    if rows.empty:
        return rows
    return rows[(rows["profile"] == profile) & (rows["status"] == "ok")]


def cadet_lines(cadet_storage: str | None, profile: str) -> list[str]:
    """A section per CADet scenario the store holds ok rows of (none: no lines)."""
    ok = cadet_rows(cadet_storage, profile)
    if ok.empty:
        return []
    lines = ["## CADet", "",
             f"From the store `{shown_path(cadet_storage)}` (`python -m orchestrator.results --storage "
             f"{shown_path(cadet_storage)} table SCENARIO` prints the same). The paper measured other shifts "
             "(ImageNet against iNaturalist / ImageNet-O, CIFAR-10.1): its numbers stand beside ours by row, "
             "not as a target.", ""]
    shown = False
    for scenario, title in CADET_SCENARIOS.items():
        these = ok[ok["scenario"] == scenario]
        if these.empty:
            continue
        wide = wide_table(these, scenario, with_published=True).fillna("")  # no paper number: an empty cell
        if wide.empty:
            continue
        shown = True
        seeds = ", ".join(str(s) for s in sorted(these["seed"].unique()))
        counts = f"{these['trial_key'].nunique()} ok trial(s), {len(these)} rows"
        lines += [f"### {title}", "", f"Seed(s) {seeds}; {counts}.", "", _md(wide), ""]
        lines += skipped_lines(these)
        if scenario == "adversarial":
            lines += attack_lines(these)
    if not shown:
        return []
    trials = ok.drop_duplicates("trial_key")
    trials = trials.assign(training=[json.loads(e).get("training") if isinstance(e, str) else None
                                     for e in trials["extra"]])
    cost = trials.groupby(["scenario", "training", "seed"]).agg(
        trials=("trial_key", "size"), trial_min=("trial_seconds", lambda t: round(t.sum() / 60, 1)),
        train_min=("train_seconds", lambda t: round(t.sum() / 60, 1))).reset_index()
    lines += ["### What the CADet trials cost", "",
              "One CPU thread a trial (two at a time); minutes summed over the trials of each cell.", "",
              _md(cost.rename(columns={"trial_min": "trial min", "train_min": "training min"})), ""]
    return lines


def _extras(rows: pd.DataFrame) -> list[dict]:
    return [json.loads(e) if isinstance(e, str) else {} for e in rows["extra"]]


def skipped_lines(rows: pd.DataFrame) -> list[str]:
    """The shifts a scenario's trials could not run (rows' extra.skipped_shifts), said in the document."""
    skipped = sorted({s for e in _extras(rows) for s in e.get("skipped_shifts", [])})
    return ["Shifts that could not run here (no data on this machine): " + "; ".join(f"`{s}`" for s in skipped)
            + ".", ""] if skipped else []


def attack_lines(rows: pd.DataFrame) -> list[str]:
    """Table 4's attacks as they ran: success among the correctly classified images, accuracy before and after,
    perturbation sizes; an attack that fooled fewer than half is flagged (its column measures little)."""
    extras = pd.DataFrame(_extras(rows)).assign(attack=rows["test_dataset"].to_numpy(), seed=rows["seed"].to_numpy())
    if "attack_success_rate" not in extras:
        return []
    per = extras.drop_duplicates(["attack", "seed"]).groupby("attack", sort=False).agg(
        seeds=("seed", "nunique"), success=("attack_success_rate", "mean"), clean_acc=("clean_accuracy", "mean"),
        adv_acc=("adv_accuracy", "mean"), l2=("l2_mean", "mean"), linf=("linf_max", "max"),
        succeeded=("attack_succeeded", "all"))
    table = pd.DataFrame({
        "attack": per.index, "seeds": per["seeds"].to_numpy(),
        "success (% of correct images)": (100 * per["success"]).round(1).to_numpy(),
        "accuracy clean -> attacked (%)": [f"{100 * c:.1f} -> {100 * a:.1f}"
                                           for c, a in zip(per["clean_acc"], per["adv_acc"], strict=True)],
        "L2 (mean)": per["l2"].round(3).to_numpy(), "L_inf (max)": per["linf"].round(4).to_numpy(),
        "attack succeeded": ["yes" if ok else "NO: its column measures little" for ok in per["succeeded"]]})
    return ["The attacks as they ran (the AUROCs above count the successful ones; `extra.auroc_all_attacked` "
            "counts every attacked image):", "", _md(table), ""]


def build_report(storage: str, profile: str = "small", cadet_storage: str | None = None) -> str:
    spec = read_spec()
    report = spec["report"]
    rows = load_rows(storage)
    rows = rows[rows["profile"] == profile]
    if rows.empty:
        raise ValueError(f"{storage} holds no '{profile}' trials: run benchmarks/reproduction.py first")
    ok = rows[rows["status"] == "ok"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    datasets = ", ".join(sorted({Path(d.removeprefix("imagefolder:")).name for d in rows["dataset"].unique()}))

    doc = [
        f"# Reproduction on {datasets}: the `{profile}` profile",
        "",
        f"_Generated by `python benchmarks/reproduction.py` from the store `{shown_path(storage)}` on {now} "
        f"(python {platform.python_version()}); do not edit by hand: re-run "
        "`python benchmarks/reproduction.py --report-only` to regenerate it._",
        "",
        report["intro"] + report["scale_note"].get(profile, "."),
        "",
        "## Set-up",
        "",
        *setup_lines(rows, profile, report["setup"]),
        *progress_lines(storage, profile),
        "",
    ]
    for section in report["sections"]:
        doc += section_lines(section, ok[ok["scenario"] == section["scenario"]], profile)
    cadet_ok = cadet_rows(cadet_storage, profile)
    claim_rows = pd.concat([ok, cadet_ok]) if len(cadet_ok) else ok
    verdicts = [check(claim, claim_rows[claim_rows["scenario"] == claim["scenario"]], spec["names"])
                for claim in spec["claims"]]
    doc += cadet_lines(cadet_storage, profile)
    doc += ["## Do the papers' relations hold?", "", "| claim | measured | verdict |", "| --- | --- | --- |"]
    doc += [f"| {c} | {m} | **{v}** |" for c, m, v in (r for r in verdicts if r is not None)]
    doc += ["", "## Cost", "",
            f"Trial time is one CPU thread's; two trials ran at once. Wall time with at least one trial "
            f"running: {wall_minutes(rows):.0f} min.", "",
            _md(cost_table(rows, [s["scenario"] for s in report["sections"]])), ""]
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        first_error = str(failed["error"].iloc[0]).splitlines()[0][:200]
        doc += [f"{len(failed)} trial(s) failed; first error: `{first_error}`", ""]
    doc += ["## Reproducibility audit", "", record_line(read_record(storage), shown_path(storage)), ""]
    if NOTES.is_file():
        doc += ["## Reading the results", "", NOTES.read_text().strip(), ""]
    return "\n".join(doc)


def write_report(storage: str, out: str | Path, profile: str = "small", cadet_storage: str | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(storage, profile, cadet_storage))
    write_cd_figures(storage, out.parent, profile)
    return out
