"""CADet's Tables 1 and 3 and Figure 2 as scenarios (orchestrator/experiments/rejection.py, ood_detection.py): real
quick runs on sklearn digits with the real MNIST test digits as far OOD, the shift loaders (CIFAR-10.1, ImageNet-O,
iNaturalist) on tiny trees made here, skipped shifts named in every row, the MMD batches' memory bound, and the
published tables beside ours. One CPU thread.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from methods.mmd import MEMORY_BUDGET, bytes_per_sampling, samplings_per_batch
from orchestrator.data.datasets import DatasetError, DataSource, load_dataset, load_shift_images, read_idx, to_shape
from orchestrator.experiments import get_kind, ood_detection, rejection
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.planner import expand
from orchestrator.report.tables import published, wide_table
from tests.conftest import SHARED_DATA

MNIST_TEST = SHARED_DATA / "mnist-test"


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A data root holding only the MNIST test files (where torchvision puts them), as this machine has."""
    monkeypatch.setenv("ADSWEEP_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_TEST.iterdir():
        shutil.copy(f, raw / f.name)
    return tmp_path / "data"


def quick_trials(name: str, **settings) -> list:
    trials = expand(SCENARIOS[name], PROFILES["quick"], seeds=[0], num_classes=10, dataset="digits",
                    overrides={"epochs": 8})
    return [dataclasses.replace(t, settings={**t.settings, **settings}) for t in trials]


def test_table3_rows_for_near_and_far_ood_and_every_baseline(data_root):
    """The supervised trial of ood-detection (the classifier, CADet on its features, the nine post-hoc baselines),
    digits 0-4 in distribution: near OOD = digits 5-9, far OOD = the MNIST test set, an absent set skipped."""
    trials = quick_trials("ood-detection")
    assert [t.settings["training"] for t in trials] == ["contrastive", "supervised"]
    assert {t.kind for t in trials} == {"ood_detection"} and trials[0].settings["shifts"] == ["unknown", "mnist"]
    trial = dataclasses.replace(trials[1], settings={**trials[1].settings,
                                                     "shifts": ["unknown", "mnist", "imagenet-o"]})
    out = ood_detection.run(trial, DataSource(root=str(data_root)))
    rows = out["rows"]
    detectors = ["CADet", *ood_detection.BASELINES]
    assert len(detectors) == 10
    by = {(r["variant"], r["test_dataset"]): r for r in rows}
    assert set(by) == {(f"{d} + supervised", s) for d in detectors for s in ("unknown classes 5-9", "mnist")}
    for r in rows:
        e = r["extra"]
        assert 0 <= r["auroc_pooled"] <= 1 and 0 <= e["fpr_at_95_tpr"] <= 1
        assert e["ood"] == ("near" if r["test_dataset"].startswith("unknown") else "far")
        assert e["n_ood"] == (10_000 if r["test_dataset"] == "mnist" else 297)
        assert len(e["skipped_shifts"]) == 1 and e["skipped_shifts"][0].startswith("imagenet-o: no folder")
    # The classifier separates its own digits from the other five: the softmax baselines must see it.
    for d in ("MSP", "Energy", "MaxLogit", "Mahalanobis"):
        assert by[(f"{d} + supervised", "unknown classes 5-9")]["auroc_pooled"] > 0.85, d
    # CADet's p-values (Eq. 8) hold their false positive rate on clean in-distribution test digits.
    assert by[("CADet + supervised", "mnist")]["fpr_at_alpha"] <= 0.12
    assert by[("MSP + supervised", "mnist")]["fpr_at_alpha"] is None  # a baseline has no p-value
    # Table 5's moments of m_in and m_out, on the clean images and on each set.
    e = by[("CADet + supervised", "mnist")]["extra"]
    assert set(e["clean"]) == set(e["ood_moments"]) == {"m_in_mean", "m_in_var", "m_out_mean", "m_out_var"}
    assert -1 <= e["ood_moments"]["m_out_mean"] <= 1 and e["clean"]["m_in_var"] >= 0


def test_unknown_classes_are_listed_as_skipped_when_every_class_is_in_distribution(data_root):
    data = load_dataset("digits")
    setup = SimpleNamespace(data=data, classes=list(range(10)))
    s = ood_detection.OODSettings(shifts=("unknown", "mnist", "svhn", "inaturalist"))
    sets, skipped = ood_detection.ood_sets(None, DataSource(root=str(data_root)), setup, s)
    assert list(sets) == ["mnist"] and sets["mnist"][0].shape == (10_000, 1, 8, 8)
    assert [x.split(":")[0] for x in skipped] == ["unknown", "svhn", "inaturalist"]
    assert skipped[0] == "unknown: every class is in-distribution"


def tiny_shift_tree(root: Path) -> None:
    """CIFAR-10.1 as its authors ship it (uint8 (N, 32, 32, 3) .npy) and ImageNet-O / iNaturalist folders of JPEGs
    of several sizes, all made from real MNIST test digits."""
    import torchvision.io

    digits = torch.from_numpy(read_idx(MNIST_TEST / "t10k-images-idx3-ubyte.gz")[:120, None].copy())
    rgb = to_shape(digits[:120], (3, 32, 32))
    (root / "CIFAR-10.1").mkdir(parents=True)
    np.save(root / "CIFAR-10.1" / "cifar10.1_v6_data.npy", rgb.permute(0, 2, 3, 1).numpy())
    np.save(root / "CIFAR-10.1" / "cifar10.1_v6_labels.npy", np.zeros(120, dtype=np.int64))
    for folder, sub, size in (("imagenet-o", "n01443537", (40, 56)), ("iNaturalist", "images", (64, 48))):
        (root / folder / sub).mkdir(parents=True)
        for i, img in enumerate(to_shape(digits[:7], (3, *size))):
            torchvision.io.write_jpeg(img, str(root / folder / sub / f"{i}.jpg"))


def test_shift_loaders_read_cifar10_1_imagenet_o_and_inaturalist(data_root):
    tiny_shift_tree(data_root)
    source = DataSource(root=str(data_root))
    x = load_shift_images("cifar10.1", source, (3, 32, 32))
    assert x.shape == (120, 3, 32, 32) and x.dtype == torch.uint8
    assert load_shift_images("cifar10.1", source, (1, 8, 8)).shape == (120, 1, 8, 8)  # to the in-distribution shape
    for name in ("imagenet-o", "inaturalist"):
        assert load_shift_images(name, source, (3, 32, 32)).shape == (7, 3, 32, 32)
    assert load_shift_images(f"images:{data_root / 'imagenet-o'}", source, (1, 8, 8)).shape == (7, 1, 8, 8)
    assert load_shift_images("mnist", source, (1, 8, 8)).shape == (10_000, 1, 8, 8)  # the test files alone
    with pytest.raises(DatasetError, match="cifar10.1"):
        load_shift_images("cifar10.1", DataSource(root=str(data_root / "nothing")), (3, 32, 32))


def test_table1_rejection_rows_and_skipped_shifts(data_root):
    """The supervised trial of the rejection scenario at n = 10 and 20: the null (held-out training digits), the
    class-prior shift, CIFAR-10.1 read from a tiny tree; an absent set and a set smaller than n are listed."""
    tiny_shift_tree(data_root)
    trials = quick_trials("rejection")
    assert {t.settings["training"] for t in trials} == {"contrastive", "supervised"}
    assert trials[0].settings["shifts"] == ["train-holdout", "class-prior", "cifar10.1"]
    trial = dataclasses.replace(trials[1], settings={**trials[1].settings, "sample_sizes": [10, 20], "n_samplings": 30,
                                                     "n_perm": 99, "shifts": ["train-holdout", "class-prior",
                                                                              "cifar10.1", "svhn", "imagenet-o"]})
    out = rejection.run(trial, DataSource(root=str(data_root)))
    rows = out["rows"]
    assert [r["sample_size"] for r in rows[:2]] == [20, 20]  # the paper's column order, largest n first
    by = {(r["test_dataset"], r["sample_size"], r["variant"]): r for r in rows}
    assert set(by) == {(s, n, f"{stat} + supervised") for s in ("digits train (held out)", "class prior 2:1",
                                                                 "cifar10.1")
                       for n in (10, 20) for stat in ("MMD", "MMD-CC")}
    for r in rows:
        e = r["extra"]
        assert r.get("auroc_pooled") is None and 0 <= e["rejection_rate"] <= 1 and e["n_samplings"] == 30
        assert [x.split(":")[0] for x in e["skipped_shifts"]] == ["svhn", "imagenet-o"]
        assert "7 images, fewer than n = 20" in e["skipped_shifts"][1]
    # MNIST digits (via 32x32 RGB) are not sklearn's digits: found at n = 20 far more often than the null is.
    assert by[("cifar10.1", 20, "MMD-CC + supervised")]["extra"]["rejection_rate"] >= 0.8
    assert by[("digits train (held out)", 20, "MMD-CC + supervised")]["extra"]["rejection_rate"] <= 0.2


def test_mmd_batches_stay_under_the_memory_budget_at_large_n():
    # Before: 250 samplings per batch at any n, i.e. 250 x (2n)^2 floats of kernels alone (16 GB at n = 2000).
    assert 250 * 4 * (2 * 2000) ** 2 > 10 * MEMORY_BUDGET
    for n in (3, 50, 500, 2000, 5000):
        batch = samplings_per_batch(n, 500, 250)
        assert batch >= 1 and (batch == 1 or batch * bytes_per_sampling(n, 500) <= MEMORY_BUDGET)
    assert samplings_per_batch(20, 500, 250) == 250  # small n: unchanged, so Table 2's draws are too
    # The rejection scenario's sizes: the paper's list capped per profile.
    sizes = {p: rejection.REJECTION_SETTINGS[p].sample_sizes for p in ("quick", "small", "paper")}
    assert sizes["paper"] == (2000, 1000, 500, 200, 100, 50) and max(sizes["small"]) == 1000
    assert rejection.REJECTION_SETTINGS["paper"].n_samplings == 100 == rejection.REJECTION_SETTINGS["small"].n_samplings
    for p in ("quick", "small", "paper"):
        s = rejection.REJECTION_SETTINGS[p]
        assert s.holdout >= 4 * max(s.sample_sizes)  # finite pools: see rejection.py


@pytest.mark.slow  # about 15 s: a contrastive pre-training and the curve's recalibrations
def test_figure2_rows_per_number_of_transformations(data_root):
    trials = quick_trials("cadet-transforms")
    assert len(trials) == 1 and trials[0].kind == "transforms_curve"
    assert trials[0].settings["n_trs_curve"] == [2, 5, 10, 20] and trials[0].settings["baselines"] == []
    out = get_kind("transforms_curve").run(trials[0], DataSource(root=str(data_root)))
    by = {(r["variant"], r["test_dataset"]): r for r in out["rows"]}
    assert set(by) == {(f"CADet{f' n_trs={k}' if k else ''} + contrastive", s)
                       for k in (None, 2, 5, 10, 20) for s in ("unknown classes 5-9", "mnist")}
    assert by[("CADet n_trs=10 + contrastive", "mnist")]["extra"]["n_trs"] == 10
    # The trial's own n_trs (10 in quick) and the curve's 10 are the same test: equal up to the views' draw.
    near = [by[(f"CADet{v} + contrastive", "unknown classes 5-9")]["auroc_pooled"] for v in ("", " n_trs=10")]
    assert near[0] == pytest.approx(near[1], abs=0.03)
    assert all(r["fpr_at_alpha"] <= 0.15 for r in out["rows"])


def test_cadet_tables_1_to_5_print_beside_ours_under_the_real_scenarios():
    sources = {s.split(" (")[0] for name in ("rejection", "twosample", "ood-detection", "adversarial")
               for s in published(name)["source"]}
    assert sources == {f"CADet Table {k}" for k in range(1, 6)}
    assert published("twosample-rejection").empty and published("unknown-classes").empty
    ood = pd.DataFrame([{"status": "ok", "seed": 0, "test_dataset": t, "variant": v, "auroc_pooled": 0.9}
                        for t in ("unknown classes 6-9", "mnist") for v in ("CADet + contrastive", "ViM + supervised")])
    wide = wide_table(ood, "ood-detection", with_published=True, dataset="cifar10").set_index("variant")
    assert wide.loc["ViM + supervised", "paper imagenet imagenet-o"] == "81.0"  # the paper's, no difference
    assert wide.loc["CADet + contrastive", "test_dataset=mnist"] == "90.0 [1]"
    rej = pd.DataFrame([{"status": "ok", "seed": 0, "test_dataset": "class prior 2:1", "variant": "MMD + contrastive",
                         "sample_size": n, "auroc_pooled": None, "extra": json.dumps({"rejection_rate": r})}
                        for n, r in ((50, 0.1), (1000, 0.6))])
    wide = wide_table(rej, "rejection", with_published=True, dataset="cifar10")
    assert wide["sample_size=1000"].tolist() == ["60.0 [1]"]  # the metric comes from the rows' extra
    assert wide["paper cifar10 50"].tolist() == ["15.4"]


def test_named_shift_sets_are_checked_before_any_work(data_root):
    """--test-datasets: sets without a training split (MNIST's test files, CIFAR-10.1, ImageNet-O, ...) are checked
    as such; one that is not there stops the plan with one line, before anything trains."""
    from orchestrator.planner import Request, plan

    source = DataSource(root=str(data_root))
    trials, _ = plan(Request("ood-detection", dataset="digits", test_datasets=["mnist"]), source)
    assert trials[0].settings["shifts"] == ["unknown", "mnist"]  # the scenario's own, not repeated
    with pytest.raises(DatasetError, match="imagenet-o: no folder"):
        plan(Request("rejection", dataset="digits", test_datasets=["imagenet-o"]), source)
    tiny_shift_tree(data_root)
    trials, _ = plan(Request("rejection", dataset="digits", test_datasets=["imagenet-o", "cifar10.1"]), source)
    assert trials[0].settings["shifts"] == ["train-holdout", "class-prior", "cifar10.1", "imagenet-o"]
