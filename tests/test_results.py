"""The results CLI on a store made by a real quick sweep: tables, SQL, plots, metrics, comparisons."""

import shutil

import numpy as np
import pandas as pd
import pytest

from orchestrator.report.stats import compare, metrics_from_scores
from orchestrator.report.tables import paper_table, summary, wide_table
from orchestrator.results import main
from orchestrator.store import connect


def test_table_numbers_equal_pandas_means(small_store, capsys):
    assert main(["--storage", str(small_store), "table", "scenario2", "--format", "csv"]) == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    rows = pd.read_parquet(small_store)
    for gamma, mean in rows.groupby("gamma_p")["auroc_pooled"].mean().items():
        cell = printed.loc[printed["method"] == "hscl", f"gamma_p={gamma}"].item()
        assert cell.startswith(f"{100 * mean:.1f} ") and cell.endswith("[2]")


def test_a_seed_still_running_stays_out_of_the_mean_until_it_covers_the_cell(small_store):
    """A store being filled: seed 1 has one of the two grid points of each cell so far. Its mean would be over
    other points than seed 0's, so the cell is seed 0's alone, and seed 1's trial shows as pending (+1)."""
    rows = pd.read_parquet(small_store)  # seed 0: 2 known classes per gamma_p
    partial = rows[rows["anomaly_class"] == rows["anomaly_class"].min()].assign(seed=1, auroc_pooled=0.0)
    cells = paper_table(pd.concat([rows, partial])).set_index("gamma_p")
    seed0 = 100 * rows.groupby("gamma_p")["auroc_pooled"].mean()
    assert np.allclose(cells["mean"], seed0) and (cells["n"] == 2).all() and (cells["pending"] == 1).all()
    assert cells["std"].isna().all()
    # Once seed 1 covers the cell, both seeds count.
    full = rows.assign(seed=1, auroc_pooled=0.0)
    cells = paper_table(pd.concat([rows, full])).set_index("gamma_p")
    assert np.allclose(cells["mean"], seed0 / 2) and (cells["n"] == 4).all() and (cells["pending"] == 0).all()
    wide = wide_table(pd.concat([rows, partial]), "scenario2")
    texts = [wide[c].item() for c in wide.columns if c.startswith("gamma_p=")]
    assert len(texts) == 3 and all(t.endswith("[2 +1]") for t in texts), texts


def test_published_numbers_are_printed_beside_ours_with_the_difference(small_store):
    rows = pd.read_parquet(small_store)
    wide = wide_table(rows, "scenario2", with_published=True, dataset="digits")
    ours = 100 * rows[rows["gamma_p"] == 0.05]["auroc_pooled"].mean()
    assert wide["paper cifar10 0.05"].item() == f"97.6 ({ours - 97.6:+.1f})"  # HSCL Table 2


def test_sql_view_returns_the_same_rows_as_pandas(small_store):
    by_sql = connect(str(small_store)).sql("SELECT * FROM results ORDER BY trial_key").df()
    by_pandas = pd.read_parquet(small_store).sort_values("trial_key").reset_index(drop=True)
    assert list(by_sql["trial_key"]) == list(by_pandas["trial_key"])
    assert np.allclose(by_sql["auroc_pooled"], by_pandas["auroc_pooled"])
    assert set(by_pandas.columns) <= set(by_sql.columns)


def test_a_grid_with_a_missing_point_is_reported_incomplete(small_store, tmp_path, capsys):
    copy = tmp_path / "results"
    shutil.copytree(small_store, copy)
    next(copy.rglob("*.parquet")).unlink()
    assert main(["--storage", str(copy), "table", "scenario2"]) == 0
    assert "5 ok trials, 0 failed (not averaged in), 1 missing" in capsys.readouterr().err
    assert main(["--storage", str(copy), "summary"]) == 0
    sweep = summary(str(copy)).iloc[0]  # the numbers the summary prints, one line per sweep command
    assert (sweep["trials"], sweep["ok"], sweep["failed"], sweep["missing"]) == (6, 5, 0, 1)


@pytest.mark.parametrize("kind", ["gamma", "heatmap", "ablation"])
def test_each_plot_is_a_real_png(small_store, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    assert main(["--storage", str(small_store), "plot", kind, "scenario2", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_auroc_recomputed_from_stored_scores_equals_the_stored_auroc(small_store):
    trials = metrics_from_scores(str(small_store), "auroc")
    assert len(trials) == 6
    assert np.allclose(trials["auroc"], trials["auroc_pooled"], atol=1e-6)  # float32 scores
    aupr = metrics_from_scores(str(small_store), "aupr", "gamma_p = 0.1")
    assert len(aupr) == 2 and aupr["aupr"].between(0, 1).all()
    scores = connect(str(small_store)).sql("SELECT count(*) AS n, count(DISTINCT trial_key) AS k FROM scores").df()
    assert scores["k"].item() == 6 and scores["n"].item() == 6 * 596  # every digits test image, every trial


def test_paired_comparison_counts_wins_and_tests_the_differences(small_store):
    rows = pd.read_parquet(small_store)
    worse = rows.assign(method="worse", auroc_pooled=rows["auroc_pooled"] - 0.01 * np.arange(1, 7))
    out = compare(pd.concat([rows, worse]), "hscl", "worse")
    assert list(out["n"]) == [2, 2, 2] and (out["hscl_wins"] == 2).all() and (out["worse_wins"] == 0).all()
    assert np.allclose(out["mean_diff"].sum() / 3 * 3, 100 * 0.01 * np.arange(1, 7).mean() * 3)
    assert out["wilcoxon_p"].between(0, 1).all()


def test_bad_queries_are_one_line(small_store, capsys):
    assert main(["--storage", str(small_store), "sql", "SELECT nope FROM results"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert main(["--storage", str(small_store), "table", "scenario42"]) == 2
    assert main(["--storage", str(small_store), "plot", "gamma", "scenario1", "--out", "never.png"]) == 2  # no rows
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("error: no ok trials for scenario1")


def _six_points(small_store):
    """The small store's 6 trials as 6 grid points of one gamma (for tests of the paired statistics)."""
    rows = pd.read_parquet(small_store).sort_values("trial_key").reset_index(drop=True)
    return rows.assign(gamma_p=0.05, anomaly_class=np.arange(6))


def test_a_method_beats_a_shuffled_score_copy_of_itself_significantly(small_store):
    from sklearn.metrics import roc_auc_score

    rows = _six_points(small_store)
    scores = connect(str(small_store)).sql("SELECT trial_key, is_anomaly, score FROM scores").df()
    rng = np.random.default_rng(0)
    shuffled = {k: roc_auc_score(g["is_anomaly"], rng.permutation(g["score"].to_numpy()))
                for k, g in scores.groupby("trial_key")}
    copy = rows.assign(method="shuffled", auroc_pooled=rows["trial_key"].map(shuffled))
    out = compare(pd.concat([rows, copy]), "hscl", "shuffled")
    assert out["n"].item() == 6 and out["hscl_wins"].item() == 6
    assert out["wilcoxon_p"].item() < 0.05


def test_small_symmetric_noise_is_not_significant(small_store):
    rows = _six_points(small_store)
    noise = np.array([1, -1, 2, -2, 3, -3]) * 1e-3  # symmetric: no method is better
    noisy = rows.assign(method="noisy", auroc_pooled=rows["auroc_pooled"] + noise)
    out = compare(pd.concat([rows, noisy]), "hscl", "noisy")
    assert out["wilcoxon_p"].item() > 0.05
    table = wide_table(pd.concat([rows, noisy]), "scenario2", versus="hscl")
    assert table.loc[table["method"] == "noisy", "gamma_p=0.05"].item().endswith("(n.s.)")
