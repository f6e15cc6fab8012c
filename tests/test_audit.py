"""The reproducibility audit (orchestrator/report/audit.py, `results audit`): re-running stored trials of a real
quick store from their configs gives bit-identical AUROCs and scores on a CPU; a row edited after the fact is
caught; the store is left alone unless --record; bad input is one line and exit 2 before any re-run."""

import io
import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.report.audit import RECORD_NAME, pick, read_record, record_line
from orchestrator.report.reproduction import build_report
from orchestrator.results import main
from orchestrator.store import load_rows


def _files(store):
    return sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file())


def test_audit_reruns_two_trials_bit_identically_on_cpu(small_store, capsys, one_thread):
    before = _files(small_store)
    assert main(["--storage", str(small_store), "audit", "--sample", "2", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("2 trials re-run on cpu") and "max |Δ auroc_pooled| = 0," in summary, out
    assert "bit-identical: 2 of 2" in summary
    table = pd.read_csv(io.StringIO(out.split("\n\n")[0]))
    assert len(table) == 2 and table["trial"].nunique() == 2
    assert (table["stored"] == table["re-run"]).all()
    assert (table["difference"] == 0).all() and (table["max |d score|"] == 0).all()  # scores bit-identical too
    assert _files(small_store) == before  # nothing written without --record


def test_an_edited_row_is_reported_with_its_difference(small_store, tmp_path, capsys, one_thread):
    store = tmp_path / "results"
    shutil.copytree(small_store, store)
    shutil.copytree(small_store.parent / "scores", tmp_path / "scores")
    path = sorted(store.rglob("*.parquet"))[0]
    table = pq.read_table(path)
    key, was = table["trial_key"][0].as_py(), table["auroc_pooled"][0].as_py()
    edited = table.set_column(table.schema.get_field_index("auroc_pooled"), "auroc_pooled",
                              pa.array([was - 0.0123]))
    pq.write_table(edited, path)

    assert main(["--storage", str(store), "audit", "--sample", "1", "--where", f"trial_key = '{key}'",
                 "--record"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "max |Δ auroc_pooled| = 0.0123" in summary and "bit-identical: 0 of 1" in summary, summary
    record = read_record(str(store))
    assert (store / RECORD_NAME).is_file() and record["rows"] == 1 and record["identical"] == 0
    assert record["max_abs_diff"] == pytest.approx(0.0123, abs=1e-12)
    (trial,) = record["trials"]
    assert trial["trial_key"] == key and trial["stored"] == pytest.approx(was - 0.0123)
    assert trial["rerun"] == pytest.approx(was, abs=0) and trial["max_abs_score_diff"] == 0.0
    assert "1 trials re-run" in record_line(record) and "max |Δ auroc_pooled| = 0.0123" in record_line(record)
    # The record is hidden from the store's readers (like _sweeps/): the rows are still the six trials.
    assert len(load_rows(str(store))) == 6
    # The reproduction report reads its audit line from the record (no re-run at report time).
    doc = build_report(str(store), "quick").splitlines()
    assert doc[doc.index("## Reproducibility audit") + 2] == record_line(record, str(store))


def test_the_sample_is_a_seeded_choice_of_ok_trials(small_store):
    rows = load_rows(str(small_store))
    first = pick(rows, 3, seed=0)
    assert first == pick(rows, 3, seed=0) and len(set(first)) == 3 and set(first) <= set(rows["trial_key"])
    assert len({tuple(pick(rows, 3, seed=s)) for s in range(10)}) > 1  # the seed chooses


def test_git_sha_of_other_code_is_named(small_store, tmp_path, capsys, one_thread):
    store = tmp_path / "results"
    shutil.copytree(small_store, store)
    shutil.copytree(small_store.parent / "scores", tmp_path / "scores")
    path = sorted(store.rglob("*.parquet"))[0]
    table = pq.read_table(path)
    key = table["trial_key"][0].as_py()
    pq.write_table(table.set_column(table.schema.get_field_index("git_sha"), "git_sha",
                                    pa.array(["0" * 40])), path)
    assert main(["--storage", str(store), "audit", "--sample", "1", "--where", f"trial_key = '{key}'",
                 "--record", str(tmp_path / "audit.json")]) == 0
    out = capsys.readouterr().out
    assert f"written by git {'0' * 40}" in out and "1 row(s) stored by other code" in out
    assert json.loads((tmp_path / "audit.json").read_text())["trials"][0]["same_code"] is False
    assert not (store / RECORD_NAME).exists()


@pytest.mark.parametrize("argv, message", [
    (["audit", "--sample", "7"], "--sample 7: the store has only 6 ok trial(s)"),
    (["audit", "--sample", "0"], "--sample must be at least 1"),
    (["audit", "--sample", "1", "--metric", "loss"], "unknown metric 'loss'"),
    (["audit", "--sample", "1", "--where", "nosuch = 1"], "nosuch"),
    (["audit"], "the following arguments are required: --sample"),
])
def test_audit_errors_are_one_line_and_exit_2_before_any_rerun(small_store, capsys, argv, message):
    before = _files(small_store)
    try:
        code = main(["--storage", str(small_store), *argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "re-ran" not in captured.err and _files(small_store) == before
