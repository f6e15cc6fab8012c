"""Scenario-3 (cross-dataset): normal, labeled-anomaly and test datasets of different shapes."""

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.io import write_png

from orchestrator.data.datasets import read_idx, to_shape
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parent.parent
SHARED = SHARED_DATA


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Three small ImageFolder trees: CIFAR planes/cars (normal), CIFAR birds (labeled anomalies),
    MNIST digits as 28x28 grey PNGs (test anomalies of another shape and channel count)."""
    root = tmp_path_factory.mktemp("cross")
    wanted = {("train", "airplane"): 150, ("train", "automobile"): 150, ("test", "airplane"): 50,
              ("test", "automobile"): 50, ("train", "bird"): 120, ("test", "bird"): 60}
    taken = dict.fromkeys(wanted, 0)
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or (parts[1], parts[2]) not in wanted:
                continue
            key = (parts[1], parts[2])
            if taken[key] >= wanted[key]:
                continue
            taken[key] += 1
            tree = "birds" if parts[2] == "bird" else "planes_cars"
            target = root / tree / parts[1] / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            if all(taken[k] >= wanted[k] for k in wanted):
                break
    images = read_idx(SHARED / "mnist-test" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED / "mnist-test" / "t10k-labels-idx1-ubyte.gz")
    for split, offset in (("train", 0), ("test", 5000)):
        for digit in (0, 1):
            folder = root / "mnist" / split / str(digit)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels[offset:] == digit)[:40]:
                write_png(torch.from_numpy(images[offset + i].copy()).unsqueeze(0), str(folder / f"{i}.png"))
    return root


def test_images_convert_to_the_normal_shape():
    grey = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    rgb = to_shape(grey, (3, 32, 32))
    assert rgb.shape == (5, 3, 32, 32) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, 0], rgb[:, 2])  # grey stays grey in every channel
    back = to_shape(torch.full((2, 3, 8, 8), 200, dtype=torch.uint8), (1, 8, 8))
    assert back.shape == (2, 1, 8, 8) and (back == 200).all()


@pytest.mark.slow  # 28 s: a Scenario-3 sweep
def test_scenario3_trains_once_and_writes_one_row_per_test_dataset(trees, tmp_path):
    store = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario3", "--methods", "hscl", "--dataset",
         str(trees / "planes_cars"), "--labeled-dataset", str(trees / "birds"), "--test-datasets",
         f"{trees / 'birds'},{trees / 'mnist'}", "--set", "epochs=2", "--storage", str(store)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "test_dataset=" in run.stdout
    rows = pd.read_parquet(store).sort_values("test_dataset")
    assert len(rows) == 2 and rows["trial_key"].nunique() == 1 and (rows["status"] == "ok").all()
    # Rows and keys name the data, not the folder this machine keeps it in.
    assert rows["test_dataset"].tolist() == ["imagefolder:birds", "imagefolder:mnist"]
    assert rows["dataset"].unique().tolist() == ["imagefolder:planes_cars"] and str(trees) not in rows["config"].iloc[0]
    n_train = 300 - round(0.05 * 300)  # every normal training image but the validation part
    assert (rows["n_unlabeled"] == n_train).all() and (rows["n_labeled_anomaly"] == round(0.05 / 0.95 * n_train)).all()
    assert (rows["n_test"] == [100 + 60, 100 + 80]).all()
    assert rows["auroc_pooled"].between(0, 1).all() and rows["normal_class"].isna().all()


def test_scenario3_checks_its_datasets_before_any_work(trees, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario3", "--dataset", str(trees / "planes_cars"),
         "--labeled-dataset", str(trees / "birds"), "--test-datasets", "/no/such/tree", "--storage",
         str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "/no/such/tree" in run.stderr and not (tmp_path / "results").exists()
    too_many = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario3", "--dataset", str(trees / "planes_cars"),
         "--labeled-dataset", str(trees / "mnist"), "--test-datasets", str(trees / "birds"), "--gamma-l", "0.5",
         "--storage", str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert too_many.returncode == 2 and "lower gamma_l" in too_many.stderr


def test_scenario3_without_its_datasets_says_which_flags_to_pass(tmp_path):
    run = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "scenario3", "--storage", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert all(flag in run.stderr for flag in ("--labeled-dataset", "--test-datasets", "imagefolder:"))
    assert not (tmp_path / "r").exists()
