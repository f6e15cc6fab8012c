"""orchestrator.data.datasets on real data: sklearn digits, the shared CIFAR-10 JPEG tree and MNIST test files.

The shared files (see ../shared/data/README.md) are absent on some machines; the tests that need
them are skipped there. Nothing here downloads.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.data import datasets as D
from orchestrator.data import formats
from orchestrator.data.datasets import DatasetError, ImageData, check_dataset, dataset_names, load_dataset
from tests.conftest import SHARED_DATA

SHARED = SHARED_DATA
CIFAR_TAR = SHARED / "cifar10-jpeg.tar.gz"
MNIST_TEST = SHARED / "mnist-test"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Label counts of the official MNIST test set.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_cifar = pytest.mark.skipif(not CIFAR_TAR.is_file(), reason=f"{CIFAR_TAR} not on this machine")
needs_mnist = pytest.mark.skipif(not MNIST_TEST.is_dir(), reason=f"{MNIST_TEST} not on this machine")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test gets an empty disk cache and an empty per-process cache."""
    monkeypatch.setenv("ADSWEEP_CACHE", str(tmp_path / "adsweep-cache"))
    D.clear_memory_cache()
    yield tmp_path / "adsweep-cache"
    D.clear_memory_cache()


@pytest.fixture(scope="session")
def cifar_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run(["tar", "xzf", str(CIFAR_TAR), "-C", str(out)], check=True)
    return out / "cifar10-jpeg"


@pytest.fixture(scope="session")
def cifar_full(cifar_tree, tmp_path_factory):
    """All 60,000 images decoded once: (data, the path lists the threaded decoder was called with, cache dir)."""
    cache = tmp_path_factory.mktemp("cifar-cache")
    decoder_calls = []
    real_decode_files = formats._decode_files

    def recording_decode_files(paths):
        decoder_calls.append(list(paths))
        return real_decode_files(paths)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADSWEEP_CACHE", str(cache))
        mp.setattr(formats, "_decode_files", recording_decode_files)
        D.clear_memory_cache()
        t0 = time.perf_counter()
        data = load_dataset(f"imagefolder:{cifar_tree}")
        seconds = time.perf_counter() - t0
        D.clear_memory_cache()
    print(f"\ndecoded all {len(data.train_labels) + len(data.test_labels)} CIFAR-10 JPEGs in {seconds:.2f} s")
    return data, decoder_calls, cache


def small_tree(src: Path, dst: Path, n_train: int, n_test: int, classes=CIFAR_CLASSES) -> Path:
    """A sub-tree of real CIFAR-10 JPEGs: the first n files of each class."""
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            (dst / split / c).mkdir(parents=True)
            for f in sorted((src / split / c).iterdir())[:n]:
                shutil.copy2(f, dst / split / c / f.name)
    return dst


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


# --- registry and names -----------------------------------------------------------------------------


def test_registry_names():
    assert dataset_names() == ["digits", "cifar10", "cifar100", "mnist", "svhn"]
    assert all(loader.description for loader in D.DATASETS.values())


@pytest.mark.parametrize("name", ["cifar-10", "CIFAR10", "", "imagefolder:"])
def test_unknown_name_is_one_line_error(name):
    with pytest.raises(DatasetError) as exc:
        check_dataset(name)
    msg = one_line(exc)
    if name not in ("", "imagefolder:"):
        assert "unknown dataset" in msg and "cifar10, cifar100" in msg and "imagefolder:" in msg
    with pytest.raises(DatasetError):
        load_dataset(name)


def test_missing_path_is_one_line_error(tmp_path):
    missing = tmp_path / "no-such-tree"
    for name in (f"imagefolder:{missing}", str(missing)):
        with pytest.raises(DatasetError) as exc:
            load_dataset(name)
        assert str(missing) in one_line(exc)


# --- digits -------------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_classes():
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    assert isinstance(d, ImageData) and d.name == "digits"
    assert d.train_images.shape == (1201, 1, 8, 8) and d.test_images.shape == (596, 1, 8, 8)
    assert d.image_shape == (1, 8, 8) and d.num_classes == 10
    assert d.class_names == tuple("0123456789")
    for x, y in ((d.train_images, d.train_labels), (d.test_images, d.test_labels)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.is_contiguous()
        assert int(x.min()) == 0 and int(x.max()) == 255
    # Stratified: each class gives a third of its images (rounded down) to test.
    full = load_digits()
    per_class = np.bincount(full.target)
    assert torch.bincount(d.test_labels).tolist() == (per_class // 3).tolist()
    # Train + test is the whole data set, each image once: compare the sorted (image, label) rows.
    ours = np.concatenate([np.c_[d.train_images.flatten(1).numpy(), d.train_labels.numpy()],
                           np.c_[d.test_images.flatten(1).numpy(), d.test_labels.numpy()]]).astype(np.int64)
    theirs = np.c_[np.rint(full.data * 255 / 16), full.target].astype(np.int64)
    assert np.array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0))
    assert len(np.unique(ours, axis=0)) == len(np.unique(theirs, axis=0))


def test_digits_split_is_fixed():
    first = load_dataset("digits")
    assert load_dataset("digits") is first  # once per process
    D.clear_memory_cache()
    second = load_dataset("digits")
    assert second is not first
    assert torch.equal(first.test_images, second.test_images) and torch.equal(first.test_labels, second.test_labels)
    # Pinned: the split is a property of the dataset; this changes only if the seed or the rule does.
    digest = hashlib.sha256(second.test_images.numpy().tobytes() + second.test_labels.numpy().tobytes())
    assert digest.hexdigest()[:16] == "515fc249dc6f2482"


# --- ImageFolder -----------------------------------------------------------------------------------------


@needs_cifar
def test_imagefolder_decodes_all_of_cifar10(cifar_full, cifar_tree):
    from PIL import Image

    data, decoder_calls, _ = cifar_full
    assert data.name == f"imagefolder:{cifar_tree.resolve()}"
    assert data.class_names == CIFAR_CLASSES
    assert data.train_images.shape == (50_000, 3, 32, 32) and data.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    # Order: by class, then file name, so train image 5000 is the first automobile.
    for split, x, i, cls, file in (("train", data.train_images, 5000, "automobile", "0000.jpg"),
                                   ("test", data.test_images, 9999, "truck", "0999.jpg")):
        ref = np.asarray(Image.open(cifar_tree / split / cls / file).convert("RGB"))
        assert np.array_equal(x[i].permute(1, 2, 0).numpy(), ref)
    # One batch through the threaded decoder, each file once (not one image at a time, nor twice).
    assert len(decoder_calls) == 1
    assert len(decoder_calls[0]) == len(set(decoder_calls[0])) == 60_000


@needs_cifar
def test_disk_cache_round_trip(cifar_full, cifar_tree, monkeypatch):
    data, _, cache = cifar_full
    monkeypatch.setenv("ADSWEEP_CACHE", str(cache))
    files = list((cache / "tensors").iterdir())
    assert [f.suffix for f in files] == [".pt"]  # one cache file, no temporary left behind
    written = files[0].stat()

    def no_decoding(paths):
        raise AssertionError("decoded again instead of reading the disk cache")

    monkeypatch.setattr(formats, "_decode_files", no_decoding)
    again = load_dataset(str(cifar_tree))  # a plain directory path names the same tree
    assert again is not data and again.name == data.name and again.class_names == data.class_names
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        a, b = getattr(again, field), getattr(data, field)
        assert a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b)
    # Read from the cache file, memory-mapped (trial processes share its pages), and not written again.
    assert str(files[0].resolve()) in Path("/proc/self/maps").read_text()
    assert list((cache / "tensors").iterdir()) == files
    assert (files[0].stat().st_ino, files[0].stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


@needs_cifar
def test_cache_follows_the_tree(cifar_tree, tmp_path, fresh_cache):
    tree = small_tree(cifar_tree, tmp_path / "tree", n_train=20, n_test=5)
    first = load_dataset(f"imagefolder:{tree}")
    assert first.train_images.shape == (200, 3, 32, 32) and first.test_images.shape == (50, 3, 32, 32)
    assert load_dataset(str(tree)) is first
    # A new file changes the key: the next process decodes again and sees it.
    shutil.copy2(sorted((cifar_tree / "train" / "cat").iterdir())[20], tree / "train" / "cat" / "extra.jpg")
    D.clear_memory_cache()
    second = load_dataset(str(tree))
    assert torch.bincount(second.train_labels).tolist() == [20, 20, 20, 21, 20, 20, 20, 20, 20, 20]
    # Sorted by name, extra.jpg is the last cat: everything else keeps its image, shifted after it.
    assert torch.equal(second.train_images[:80], first.train_images[:80])
    assert torch.equal(second.train_images[81:], first.train_images[80:])
    assert len(list((fresh_cache / "tensors").glob("*.pt"))) == 2
    # A relative name is looked up under data_root.
    D.clear_memory_cache()
    assert load_dataset("tree", data_root=tmp_path).name == second.name


@needs_cifar
def test_imagefolder_bad_trees(cifar_tree, tmp_path):
    no_test = small_tree(cifar_tree, tmp_path / "a", 2, 0, classes=("cat", "dog"))
    shutil.rmtree(no_test / "test")
    with pytest.raises(DatasetError) as exc:
        check_dataset(f"imagefolder:{no_test}")
    assert "test/" in one_line(exc)

    mismatch = small_tree(cifar_tree, tmp_path / "b", 2, 2, classes=("cat", "dog"))
    (mismatch / "test" / "dog").rename(mismatch / "test" / "horse")
    for call in (check_dataset, load_dataset):
        with pytest.raises(DatasetError) as exc:
            call(str(mismatch))
        assert "dog" in one_line(exc) and "horse" in str(exc.value)

    empty = small_tree(cifar_tree, tmp_path / "c", 2, 2, classes=("cat", "dog"))
    for f in (empty / "train" / "dog").iterdir():
        f.rename(f.with_suffix(".txt"))  # not an image any more
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(empty))
    assert "dog" in one_line(exc)


@needs_cifar
def test_imagefolder_grey_png_and_mixed_channels(cifar_tree, tmp_path):
    from PIL import Image

    tree = tmp_path / "grey"
    sources = {c: sorted((cifar_tree / "train" / c).iterdir())[:3] for c in ("cat", "dog")}
    for split in ("train", "test"):
        for c, files in sources.items():
            (tree / split / c).mkdir(parents=True)
            for f in files:
                Image.open(f).convert("L").save(tree / split / c / f"{f.stem}.png")
    grey = load_dataset(str(tree))
    assert grey.image_shape == (1, 32, 32) and grey.class_names == ("cat", "dog")
    expected = np.asarray(Image.open(tree / "train" / "cat" / "0000.png"))
    assert np.array_equal(grey.train_images[0, 0].numpy(), expected)

    # One colour image makes the whole tree RGB; grey images repeat their channel.
    shutil.copy2(sources["dog"][0], tree / "test" / "dog" / "colour.jpg")
    D.clear_memory_cache()
    mixed = load_dataset(str(tree))
    assert mixed.image_shape == (3, 32, 32) and len(mixed.test_labels) == 7
    assert all(torch.equal(mixed.train_images[0, k], grey.train_images[0, 0]) for k in range(3))


# --- torchvision sets ------------------------------------------------------------------------------------


def test_cifar10_missing_root_raises_without_download(tmp_path, monkeypatch):
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    root = tmp_path / "absent"
    for call in (check_dataset, load_dataset):
        with pytest.raises(DatasetError) as exc:
            call("cifar10", str(root))
        msg = one_line(exc)
        assert str(root / "cifar-10-batches-py") in msg and "--data-root" in msg and "download" in msg
    assert not root.exists()
    check_dataset("cifar10", str(root), download=True)  # would be fetched: fine


def test_failed_download_is_one_line_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", str(tmp_path), download=True)
    assert "download into" in one_line(exc) and "URLError" in str(exc.value)


@needs_mnist
def test_mnist_test_only_folder_raises():
    for call in (check_dataset, load_dataset):
        with pytest.raises(DatasetError) as exc:
            call("mnist", str(MNIST_TEST))
        msg = one_line(exc)
        assert str(MNIST_TEST) in msg and "train-images-idx3-ubyte" in msg and "train-labels" in msg


@needs_mnist
def test_mnist_reads_idx_files(tmp_path):
    # The format test needs all four files; the real test set stands in for the training set too.
    raw = tmp_path / "MNIST" / "raw"  # where torchvision's download puts them
    raw.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        shutil.copy(MNIST_TEST / f"t10k-{kind}.gz", raw / f"t10k-{kind}.gz")
        with gzip.open(MNIST_TEST / f"t10k-{kind}.gz") as src, open(raw / f"train-{kind}", "wb") as dst:
            shutil.copyfileobj(src, dst)  # plain, as torchvision leaves them after extracting
    d = load_dataset("mnist", str(tmp_path))
    assert d.train_images.shape == d.test_images.shape == (10_000, 1, 28, 28)
    assert d.test_images.dtype == torch.uint8 and d.test_labels.dtype == torch.int64
    assert torch.bincount(d.test_labels).tolist() == MNIST_TEST_COUNTS
    assert torch.equal(d.train_images, d.test_images) and d.class_names == tuple("0123456789")
    assert 0 < float(d.test_images.float().mean()) < 60  # mostly black background
    with pytest.raises(DatasetError):
        D.read_idx(MNIST_TEST.parent / "README.md")


@needs_cifar
def test_cifar_and_svhn_file_formats(cifar_tree, tmp_path):
    """Real images written in each official file layout come back unchanged."""
    from scipy.io import savemat

    tree = load_dataset(str(small_tree(cifar_tree, tmp_path / "tree", 30, 10)))
    train, test = tree.train_images.numpy(), tree.test_images.numpy()
    ytrain, ytest = tree.train_labels.numpy(), tree.test_labels.numpy()

    def dump(obj, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    # CIFAR-10: five training batches, rows of R, G, B planes.
    base = tmp_path / "root" / "cifar-10-batches-py"
    for i, part in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
        dump({"data": train[part].reshape(len(part), -1), "labels": ytrain[part].tolist()},
             base / f"data_batch_{i}")
    dump({"data": test.reshape(len(test), -1), "labels": ytest.tolist()}, base / "test_batch")
    dump({"label_names": list(CIFAR_CLASSES)}, base / "batches.meta")
    # CIFAR-100: coarse labels are what we read (here: class // 5, two super-classes).
    base = tmp_path / "root" / "cifar-100-python"
    for split, x, y in (("train", train, ytrain), ("test", test, ytest)):
        dump({"data": x.reshape(len(x), -1), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()},
             base / split)
    dump({"fine_label_names": list(CIFAR_CLASSES), "coarse_label_names": ["vehicles1", "vehicles2"]},
         base / "meta")
    # SVHN: X is (H, W, C, N), the digit 0 labelled 10.
    for split, x, y in (("train", train, ytrain), ("test", test, ytest)):
        savemat(tmp_path / "root" / f"{split}_32x32.mat",
                {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})

    root = str(tmp_path / "root")
    c10, c100, svhn = (load_dataset(n, root) for n in ("cifar10", "cifar100", "svhn"))
    for d in (c10, c100, svhn):
        assert torch.equal(d.train_images, tree.train_images) and torch.equal(d.test_images, tree.test_images)
    assert torch.equal(c10.train_labels, tree.train_labels) and c10.class_names == CIFAR_CLASSES
    assert torch.equal(c100.test_labels, tree.test_labels // 5) and c100.num_classes == 2
    assert torch.equal(svhn.train_labels, tree.train_labels) and svhn.class_names == tuple("0123456789")
    assert len(os.listdir(Path(os.environ["ADSWEEP_CACHE"]) / "tensors")) == 4  # tree + three sets
