"""Many methods at once (orchestrator/report/ranks.py, `results rank`, `results plot cd`): the Friedman and
post-hoc numbers are the libraries' on the paired table; a shuffled-score copy ranks last and differs
significantly; an identical copy does not; the CD diagram of a real quick sweep of three methods is a PNG."""

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy.stats import friedmanchisquare
from sklearn.metrics import roc_auc_score

from orchestrator.report.ranks import paired_table, rank
from orchestrator.report.reproduction import build_report, write_report
from orchestrator.results import main
from orchestrator.store import connect
from tests.conftest import ROOT

METHODS = "iforest,kde,ocsvm"


@pytest.fixture(scope="module")
def three_methods(tmp_path_factory):
    """A real quick sweep of three raw-pixel methods: normal classes 0-3, each with known class c + 1, three
    gamma_p: 12 grid points x 3 methods."""
    store = tmp_path_factory.mktemp("three") / "results"
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", METHODS, "--normal-classes", "0,1,2,3",
         "--anomaly-classes", "next", "--storage", str(store)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return store


def hand_built() -> pd.DataFrame:
    """4 methods at 8 grid points; 'a' is best everywhere; one point lacks 'd' and one row of 'c' failed."""
    rng = np.random.default_rng(7)
    rows = []
    for i, (normal, gamma) in enumerate([(n, g) for n in range(4) for g in (0.0, 0.1)] + [(9, 0.0), (8, 0.0)]):
        base = rng.uniform(0.6, 0.8)
        for m, offset in (("a", 0.15), ("b", rng.normal(0.05, 0.03)), ("c", rng.normal(0.04, 0.03)),
                          ("d", rng.normal(0.0, 0.03))):
            if (normal, m) == (9, "d"):
                continue  # incomplete point: left out
            failed = (normal, m) == (8, "c")
            rows.append({"profile": "quick", "dataset": "digits", "normal_class": normal, "anomaly_class": None,
                         "gamma_p": gamma, "gamma_l": 0.05, "seed": 0, "method": m, "variant": None,
                         "trial_key": f"{i}{m}", "status": "failed" if failed else "ok",
                         "auroc_pooled": np.nan if failed else base + offset})
    return pd.DataFrame(rows)


def test_friedman_and_posthoc_numbers_are_the_librarys_on_a_hand_built_table():
    rows = hand_built()
    table, dropped = paired_table(rows)
    assert table.shape == (8, 4) and dropped == 2  # the point without d and the point with c failed
    columns = [table[m].to_numpy() for m in "abcd"]
    expected = friedmanchisquare(*columns)

    holm = rank(rows, posthoc="wilcoxon-holm")
    assert holm.friedman_statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert holm.friedman_p == pytest.approx(expected.pvalue, rel=1e-12)
    library = sp.posthoc_wilcoxon(columns, p_adjust="holm", zero_method="zsplit")
    library.index = library.columns = list("abcd")
    pd.testing.assert_frame_equal(holm.p_values.loc[list("abcd"), list("abcd")], library, check_names=False)

    nemenyi = rank(rows, posthoc="nemenyi")
    library = sp.posthoc_nemenyi_friedman(table.reset_index(drop=True))
    pd.testing.assert_frame_equal(nemenyi.p_values.loc[list("abcd"), list("abcd")], library, check_names=False)
    assert nemenyi.cd == pytest.approx(2.569 * np.sqrt(4 * 5 / (6 * 8)), abs=1e-3)  # Demšar's q_.05 for k = 4

    # Mean ranks: 1 = best; 'a' is best at every point.
    assert holm.best == "a" and holm.mean_ranks["a"] == 1.0
    assert holm.mean_ranks.sum() == pytest.approx(1 + 2 + 3 + 4)
    by_hand = table.rank(axis=1, ascending=False).mean()
    assert holm.mean_ranks.to_dict() == pytest.approx(by_hand.to_dict())


def with_copies(store) -> pd.DataFrame:
    """The sweep's rows plus two made-up methods from iforest's real stored scores: 'same' (an identical
    copy) and 'shuffled' (iforest's scores in a seeded random order: a chance-level detector)."""
    con = connect(str(store))
    rows = con.sql("SELECT * FROM results").df()
    scores = con.sql("SELECT trial_key, is_anomaly, score FROM scores ORDER BY trial_key, sample_index").df()
    rng = np.random.default_rng(0)
    iforest = rows[rows["method"] == "iforest"]
    shuffled = iforest.assign(method="shuffled")
    shuffled["auroc_pooled"] = [
        roc_auc_score(g["is_anomaly"], rng.permutation(g["score"].to_numpy()))
        for g in (scores[scores["trial_key"] == k] for k in iforest["trial_key"])]
    return pd.concat([rows, iforest.assign(method="same"), shuffled], ignore_index=True)


def test_a_shuffled_copy_ranks_last_with_a_significant_difference(three_methods):
    rows = with_copies(three_methods)
    ranking = rank(rows, posthoc="wilcoxon-holm")
    assert len(ranking.table) == 12 and ranking.dropped == 0
    assert ranking.methods[-1] == "shuffled" and ranking.mean_ranks["shuffled"] == 5.0
    assert ranking.friedman_p < 0.05
    assert ranking.p_values.loc["iforest", "shuffled"] < 0.05
    line = ranking.summary_table().set_index("method").loc["shuffled"]
    assert line["verdict"] == "worse"


def test_identical_methods_are_not_significantly_different(three_methods):
    rows = with_copies(three_methods)
    for posthoc in ("wilcoxon-holm", "nemenyi"):
        ranking = rank(rows, posthoc=posthoc)
        assert ranking.mean_ranks["iforest"] == ranking.mean_ranks["same"]
        assert ranking.p_values.loc["iforest", "same"] == pytest.approx(1.0)


def test_rank_and_cd_diagram_of_a_quick_sweep_of_three_methods(three_methods, tmp_path, capsys):
    out = tmp_path / "cd.png"
    assert main(["--storage", str(three_methods), "plot", "cd", "scenario2", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["--storage", str(three_methods), "rank", "scenario2", "--format", "csv", "--p-values"]) == 0
    captured = capsys.readouterr()
    printed = pd.read_csv(__import__("io").StringIO(captured.out.split("\n\n")[0]))
    assert sorted(printed["method"]) == ["iforest", "kde", "ocsvm"]
    ranking = rank(pd.read_parquet(three_methods))
    assert list(printed["method"]) == ranking.methods
    assert [float(r) for r in printed["mean rank"]] == pytest.approx(list(ranking.mean_ranks), abs=0.005)
    assert "Friedman chi2" in captured.err and "12 paired grid points x 3 methods" in captured.err


def test_the_reproduction_report_has_the_rank_table_and_links_the_cd_diagram(three_methods, tmp_path):
    doc = write_report(str(three_methods), tmp_path / "docs" / "reproduction.md", "quick").read_text()
    ranking = rank(pd.read_parquet(three_methods))
    for m in ranking.methods:  # the table's lines: method, mean rank (two decimals), mean AUROC
        mean = 100 * ranking.table[m].mean()
        assert re.search(rf"\| {m} +\| {ranking.mean_ranks[m]:.2f} +\| {mean:.1f} +\|", doc), m
    assert "![critical-difference diagram of scenario2](figures/scenario2-quick-cd.png)" in doc
    png = (tmp_path / "docs" / "figures" / "scenario2-quick-cd.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert "No audit record in the store" in doc
    strip = [li for li in doc.splitlines() if not li.startswith("_Generated")]
    assert [li for li in build_report(str(three_methods), "quick").splitlines()
            if not li.startswith("_Generated")] == strip  # deterministic: a function of the store


@pytest.mark.parametrize("argv, message", [
    (["rank", "nosuch"], "unknown scenario 'nosuch'"),
    (["rank", "scenario2", "--alpha", "2"], "--alpha must be between 0 and 1"),
    (["rank", "scenario2", "--posthoc", "tukey"], "invalid choice: 'tukey'"),
    (["rank", "scenario2"], "needs at least 3 methods"),  # the small store holds HSCL alone
    (["rank", "scenario2", "--methods", "hscl,csi,msc"], "no ok rows of csi, msc"),
    (["plot", "cd", "scenario1", "--out", "OUT"], "no scenario1 rows"),
])
def test_rank_errors_are_one_line_and_exit_2(small_store, tmp_path, capsys, argv, message):
    try:
        code = main(["--storage", str(small_store), *[str(tmp_path / "x.png") if a == "OUT" else a for a in argv]])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()
