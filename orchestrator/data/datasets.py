"""Image datasets as whole uint8 tensors: one registry, one loader call, cached per process and on disk.

Every dataset comes back as an ``ImageData``: train and test images as uint8 ``(N, C, H, W)`` CPU
tensors with int64 labels and the class names. Methods convert to float themselves; the runner
indexes the training tensor with the split's indices.

Names ``load_dataset`` accepts:

- ``digits``: scikit-learn's 1,797 8x8 digits, offline. It has no official split, so a fixed
  stratified 2/3 : 1/3 split is part of the dataset here (seed ``_DIGITS_SPLIT_SEED``, never changed).
- ``cifar10``, ``cifar100`` (its 20 coarse super-classes), ``mnist``, ``svhn``: the official files
  under ``data_root`` (default ``$ADSWEEP_CACHE/data``, i.e. ``~/.cache/adsweep/data``), in the layout
  torchvision's ``download=True`` leaves there. torchvision only downloads; the files are read here
  (torchvision's CIFAR-100 has no coarse labels, and its MNIST cannot read a folder of ``.gz`` files).
- ``imagefolder:/path/to/tree`` or a plain existing directory: ``train/<class>/*.jpg|png`` and
  ``test/<class>/*``, class index = position in the sorted folder names.

Cost (2 CPU cores, all 60,000 CIFAR-10 JPEGs as an ImageFolder tree, n=3): decoding takes 2.2-2.4 s,
the whole first load 2.8-3.6 s (plus 1.7 s to import torchvision.io); a later process loads the disk
cache in 0.25 s, mostly listing and stat-ing the 60,000 files to check that the cache is current.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# Bump when the tensors a loader builds change, so old disk caches are never read again.
_CACHE_FORMAT = 1
# The digits split is a property of the dataset: changing this seed changes every digits result.
_DIGITS_SPLIT_SEED = 20240501
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_IMAGEFOLDER = "imagefolder:"


class DatasetError(ValueError):
    """One-line message saying what is wrong and how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset in memory. Treat the tensors as read-only: they are shared by every caller in the
    process (and, loaded from the disk cache, memory-mapped copy-on-write from the cache file)."""

    name: str
    train_images: torch.Tensor = field(repr=False)  # uint8 (N, C, H, W), CPU, contiguous
    train_labels: torch.Tensor = field(repr=False)  # int64 (N,), values 0 .. num_classes - 1
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    class_names: tuple[str, ...]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.ndim != 4 or x.device.type != "cpu" or not x.is_contiguous():
                raise DatasetError(f"{self.name}: {split} images must be contiguous uint8 (N, C, H, W) "
                                   f"on CPU, got {x.dtype} {tuple(x.shape)} on {x.device}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DatasetError(f"{self.name}: {split} labels must be int64 ({x.shape[0]},), "
                                   f"got {y.dtype} {tuple(y.shape)}")
            if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(self.class_names):
                raise DatasetError(f"{self.name}: {split} labels outside 0..{len(self.class_names) - 1}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DatasetError(f"{self.name}: train images are {tuple(self.train_images.shape[1:])} but test "
                               f"images are {tuple(self.test_images.shape[1:])}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        n_train, n_test = len(self.train_labels), len(self.test_labels)
        return (f"ImageData(name={self.name!r}, train={n_train}, test={n_test}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes})")


@dataclass(frozen=True)
class Loader:
    """How one kind of dataset is found on disk and turned into tensors.

    find(root) lists the source files in a fixed order (raising DatasetError when they are absent), as
    plain strings (a Path costs microseconds to build, a third of a second for 60,000 files);
    it is cheap, so check_dataset runs it. build(name, root, files) reads them. download(root), where
    there is one, fetches the official files into root through torchvision.
    """

    description: str
    find: Callable[[Path], list[str]]
    build: Callable[[str, Path, list[str]], ImageData]
    download: Callable[[Path], None] | None = None
    needs_root: bool = True
    disk_cache: bool = True  # False where building is already fast (digits)


# ---------------------------------------------------------------------------------------------------
# Paths and names


def cache_dir() -> Path:
    """``$ADSWEEP_CACHE`` or ``~/.cache/adsweep``: downloaded data under ``data/``, tensor caches under
    ``tensors/``."""
    return Path(os.environ.get("ADSWEEP_CACHE") or "~/.cache/adsweep").expanduser()


def default_data_root() -> Path:
    return cache_dir() / "data"


def dataset_names() -> list[str]:
    return list(DATASETS)


def _resolve(name: str, data_root: str | os.PathLike | None) -> tuple[str, Loader, Path | None]:
    """The canonical name, the loader and the resolved root a dataset name stands for."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}")
    if name in DATASETS:
        loader = DATASETS[name]
        if not loader.needs_root:
            return name, loader, None
        return name, loader, Path(data_root or default_data_root()).expanduser().resolve()
    path = name[len(_IMAGEFOLDER):] if name.startswith(_IMAGEFOLDER) else name
    if not path:
        raise DatasetError(f"'{name}' names no folder; write imagefolder:/path/to/tree")
    # A relative tree is looked up under --data-root when one is given (Ray runs trials in their own
    # working directory, so an absolute path is safest).
    tree = Path(data_root or ".").expanduser() / Path(path).expanduser()
    if tree.is_dir():
        tree = tree.resolve()
        return f"{_IMAGEFOLDER}{tree}", IMAGEFOLDER, tree
    if name.startswith(_IMAGEFOLDER) or os.sep in name:
        raise DatasetError(f"'{name}': no directory at {tree}; give an existing folder holding "
                           f"train/<class>/ and test/<class>/")
    raise DatasetError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}, or "
                       f"imagefolder:/path/to/tree (a folder with train/<class>/ and test/<class>/)")


def canonical_name(name: str, data_root: str | os.PathLike | None = None) -> str:
    """The name with any ImageFolder path made absolute: safe to hand to a process in another directory."""
    return _resolve(name, data_root)[0]


# ---------------------------------------------------------------------------------------------------
# The two public verbs


_MEMORY: dict[tuple[str, str], ImageData] = {}
_MEMORY_LOCK = threading.Lock()


def check_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False) -> None:
    """Cheap validation before any work: the name is known and its files are there (or will be
    downloaded). Raises DatasetError with a one-line message."""
    _, loader, root = _resolve(name, data_root)
    try:
        loader.find(root)
    except DatasetError:
        if not (download and loader.download):
            raise


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False) -> ImageData:
    """The dataset as tensors; loads once per process, and from the disk cache when it is current."""
    canonical, loader, root = _resolve(name, data_root)
    key = (canonical, str(root))
    with _MEMORY_LOCK:
        if key not in _MEMORY:
            _MEMORY[key] = _load(canonical, loader, root, download)
        return _MEMORY[key]


def clear_memory_cache() -> None:
    """Forget the datasets this process has loaded (the disk cache stays)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()


def _load(name: str, loader: Loader, root: Path | None, download: bool) -> ImageData:
    try:
        files = loader.find(root)
    except DatasetError:
        if not (download and loader.download):
            raise
        try:
            loader.download(root)
        except Exception as exc:  # no internet, disk full, bad checksum: say which, in one line
            raise DatasetError(f"{name}: download into {root} failed ({type(exc).__name__}: {exc}); "
                               f"without internet, copy the official files there by hand") from exc
        files = loader.find(root)
    if not loader.disk_cache:
        return loader.build(name, root, files)

    path = cache_dir() / "tensors" / f"{_slug(name)}-{_fingerprint(name, root, files)}.pt"
    data = _read_cache(name, path)
    if data is None:
        data = loader.build(name, root, files)
        _write_cache(data, path)
    return data


# ---------------------------------------------------------------------------------------------------
# Disk cache: one torch.save file per (dataset, source files), written atomically


def _slug(name: str) -> str:
    if name.startswith(_IMAGEFOLDER):
        name = "imagefolder-" + Path(name[len(_IMAGEFOLDER):]).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:60]


def _fingerprint(name: str, root: Path, files: list[str]) -> str:
    """Changes when a source file is added, removed, resized, touched or renamed (a rename touches its
    folder). Costs one stat per file: about 0.15 s for 60,000 files."""
    total, newest = 0, 0
    for f in files:
        st = os.stat(f)
        total, newest = total + st.st_size, max(newest, st.st_mtime_ns)
    for d in {os.path.dirname(f) for f in files}:
        newest = max(newest, os.stat(d).st_mtime_ns)
    key = json.dumps([_CACHE_FORMAT, name, str(root), len(files), total, newest])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _read_cache(name: str, path: Path) -> ImageData | None:
    if not path.is_file():
        return None
    try:
        # mmap: several trial processes on one machine share the file's pages instead of copying them.
        d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return ImageData(name=name, train_images=d["train_images"], train_labels=d["train_labels"],
                         test_images=d["test_images"], test_labels=d["test_labels"],
                         class_names=tuple(d["class_names"]))
    except Exception as exc:  # an unreadable cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable dataset cache {path}: {exc}", stacklevel=3)
        return None


def _write_cache(data: ImageData, path: Path) -> None:
    # Several Ray trials may build the same dataset at once: each writes its own temporary file and
    # renames it into place (atomic on POSIX), so a reader sees a whole file or none.
    payload = {"train_images": data.train_images, "train_labels": data.train_labels,
               "test_images": data.test_images, "test_labels": data.test_labels,
               "class_names": list(data.class_names)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:  # a read-only or full cache disk slows the next load, nothing more
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=3)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------------
# digits (scikit-learn)


def _digits(name: str, root: Path | None, files: list[str]) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are 0..16: scale to the 0..255 of every other dataset.
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = d.target.astype(np.int64)
    # Stratified split, a third of each class to test. RandomState's stream is frozen (NEP 19), so the
    # split is the same with every NumPy version.
    rng = np.random.RandomState(_DIGITS_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test[rng.permutation(idx)[: len(idx) // 3]] = True
    return ImageData(name=name, class_names=tuple(str(c) for c in range(10)),
                     train_images=torch.from_numpy(images[~test]),
                     train_labels=torch.from_numpy(labels[~test]),
                     test_images=torch.from_numpy(images[test]),
                     test_labels=torch.from_numpy(labels[test]))


# ---------------------------------------------------------------------------------------------------
# torchvision's datasets: official files, read here; torchvision only downloads


def _missing(name: str, path: Path) -> DatasetError:
    return DatasetError(f"{name}: no local copy at {path}; pass --data-root DIR (the folder holding it) "
                        f"or download it with --download (download=True)")


def _need(name: str, folder: Path, names: list[str]) -> list[str]:
    files = [folder / n for n in names]
    if not all(f.is_file() for f in files):
        raise _missing(name, folder)
    return [str(f) for f in files]


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # Python 2 pickles, as published


def _cifar_images(rows: np.ndarray) -> torch.Tensor:
    # rows: (N, 3072), each row the R, G and B planes of one image, 32x32 each.
    return torch.from_numpy(np.ascontiguousarray(rows.reshape(-1, 3, 32, 32)))


_CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _find_cifar10(root: Path) -> list[str]:
    return _need("cifar10", root / "cifar-10-batches-py", _CIFAR10_FILES)


def _build_cifar10(name: str, root: Path, files: list[str]) -> ImageData:
    *train, test, meta = [_unpickle(f) for f in files]
    return ImageData(
        name=name,
        train_images=_cifar_images(np.concatenate([b["data"] for b in train])),
        train_labels=torch.tensor(np.concatenate([b["labels"] for b in train]), dtype=torch.int64),
        test_images=_cifar_images(test["data"]),
        test_labels=torch.tensor(test["labels"], dtype=torch.int64),
        class_names=tuple(meta["label_names"]),
    )


def _download_cifar10(root: Path) -> None:
    import torchvision

    torchvision.datasets.CIFAR10(str(root), train=True, download=True)  # one archive holds both splits


def _find_cifar100(root: Path) -> list[str]:
    return _need("cifar100", root / "cifar-100-python", ["train", "test", "meta"])


def _build_cifar100(name: str, root: Path, files: list[str]) -> ImageData:
    # The 20 super-classes ("coarse labels"), the usual one-class protocol for CIFAR-100.
    train, test, meta = [_unpickle(f) for f in files]
    return ImageData(
        name=name,
        train_images=_cifar_images(train["data"]),
        train_labels=torch.tensor(train["coarse_labels"], dtype=torch.int64),
        test_images=_cifar_images(test["data"]),
        test_labels=torch.tensor(test["coarse_labels"], dtype=torch.int64),
        class_names=tuple(meta["coarse_label_names"]),
    )


def _download_cifar100(root: Path) -> None:
    import torchvision

    torchvision.datasets.CIFAR100(str(root), train=True, download=True)


_MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_mnist(root: Path) -> list[str]:
    """The four idx files, plain or .gz, in root or in root/MNIST/raw (where torchvision puts them)."""

    def find(folder: Path, stem: str) -> Path | None:
        return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)

    for folder in (root, root / "MNIST" / "raw"):
        train, test = [find(folder, s) for s in _MNIST_TRAIN], [find(folder, s) for s in _MNIST_TEST]
        if all(train) and all(test):
            return [str(p) for p in (*train, *test)]
        if all(test):
            raise DatasetError(f"mnist: {folder} holds the test set but not the training files "
                               f"{' and '.join(s + '[.gz]' for s in _MNIST_TRAIN)}; put them beside it or "
                               f"pass --download (download=True) with a writable --data-root "
                               f"(no split is invented from the test set)")
    raise _missing("mnist", root)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx file (LeCun's MNIST format, optionally gzipped) as a uint8 array of its stated shape."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    # Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each size as
    # a big-endian uint32.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 idx file (header {raw[:4].hex()})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} but the file holds {len(raw) - offset} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _build_mnist(name: str, root: Path, files: list[str]) -> ImageData:
    x_train, y_train, x_test, y_test = [read_idx(f) for f in files]
    return ImageData(
        name=name,
        train_images=torch.from_numpy(x_train[:, None].copy()),  # (60000, 1, 28, 28)
        train_labels=torch.from_numpy(y_train.astype(np.int64)),
        test_images=torch.from_numpy(x_test[:, None].copy()),
        test_labels=torch.from_numpy(y_test.astype(np.int64)),
        class_names=tuple(str(c) for c in range(10)),
    )


def _download_mnist(root: Path) -> None:
    import torchvision

    torchvision.datasets.MNIST(str(root), train=True, download=True)  # fetches all four files


def _find_svhn(root: Path) -> list[str]:
    return _need("svhn", root, ["train_32x32.mat", "test_32x32.mat"])


def _build_svhn(name: str, root: Path, files: list[str]) -> ImageData:
    from scipy.io import loadmat

    def read(path: str) -> tuple[torch.Tensor, torch.Tensor]:
        mat = loadmat(path)
        x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        y = mat["y"].astype(np.int64).reshape(-1)
        y[y == 10] = 0  # the digit 0 is stored as label 10
        return torch.from_numpy(x), torch.from_numpy(y)

    (x_train, y_train), (x_test, y_test) = read(files[0]), read(files[1])
    return ImageData(name=name, train_images=x_train, train_labels=y_train, test_images=x_test,
                     test_labels=y_test, class_names=tuple(str(c) for c in range(10)))


def _download_svhn(root: Path) -> None:
    import torchvision

    for split in ("train", "test"):
        torchvision.datasets.SVHN(str(root), split=split, download=True)


# ---------------------------------------------------------------------------------------------------
# ImageFolder trees


def _classes(root: Path, split: str) -> list[str]:
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"{root} has no {split}/ folder; an ImageFolder tree needs train/<class>/ and "
                           f"test/<class>/")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder} has no class folders; put the images in {split}/<class>/")
    return classes


def _find_imagefolder(root: Path) -> list[str]:
    """Every image, train then test, each split by sorted class then file name."""
    train, test = _classes(root, "train"), _classes(root, "test")
    if train != test:
        only = sorted(set(train) ^ set(test))
        raise DatasetError(f"{root}: train/ and test/ have different class folders (only in one: "
                           f"{', '.join(only[:5])}{' ...' if len(only) > 5 else ''}); "
                           f"give both the same classes")
    files = []
    for split in ("train", "test"):
        for c in train:
            folder = os.path.join(root, split, c)
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it if e.name.lower().endswith(_IMAGE_SUFFIXES)
                               and not e.name.startswith(".") and e.is_file())
            if not names:
                raise DatasetError(f"{folder} holds no .jpg/.jpeg/.png images; remove the folder or add "
                                   f"images")
            files += [os.path.join(folder, n) for n in names]
    return files


def _decoder() -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from encoded bytes (uint8 1-D tensor) to a uint8 (C, H, W) image, channels as stored."""
    import torchvision.io  # noqa: F401  (registers the image ops)

    # torchvision 0.29's public decode_image warns "deprecated, use TorchCodec" on every call (60,000
    # warnings for CIFAR-10); its registered op decodes the same without the warning.
    op = getattr(getattr(torch.ops, "image", None), "decode_image", None)
    if op is not None:
        return lambda data: op(data, 0, False)  # 0 = ImageReadMode.UNCHANGED, no EXIF rotation
    from io import BytesIO

    from PIL import Image

    def pil(data: torch.Tensor) -> torch.Tensor:  # a torchvision without image ops
        img = np.asarray(Image.open(BytesIO(data.numpy().tobytes())))
        return torch.from_numpy(img[:, :, None] if img.ndim == 2 else img).permute(2, 0, 1)

    return pil


def _decode_files(paths: list[str]) -> list[torch.Tensor]:
    """Read and decode many small image files, in chunks over a few threads. Threads pay off where reads
    wait on a disk; with files in the page cache on 2 cores they change little (about 45 us an image)."""
    decode = _decoder()

    def chunk(ps: list[str]) -> list[torch.Tensor]:
        out = []
        for p in ps:
            try:
                out.append(decode(torch.from_numpy(np.fromfile(p, dtype=np.uint8))))
            except Exception as exc:
                raise DatasetError(f"cannot decode {p} ({type(exc).__name__}: {exc}); remove or replace it") \
                    from exc
        return out

    size = 1000
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        parts = pool.map(chunk, [paths[i:i + size] for i in range(0, len(paths), size)])
        return [img for part in parts for img in part]


def _build_imagefolder(name: str, root: Path, files: list[str]) -> ImageData:
    classes = _classes(root, "train")
    index = {c: i for i, c in enumerate(classes)}
    images = _decode_files(files)
    h, w = images[0].shape[1:]
    for img, f in zip(images, files, strict=True):
        if img.shape[1:] != (h, w):
            raise DatasetError(f"{root}: images differ in size ({files[0]} is {h}x{w}, {f} is "
                               f"{img.shape[1]}x{img.shape[2]}); resize the tree to one size first")
    # Grey trees stay one channel; a tree with any colour image becomes RGB (grey repeated, alpha dropped).
    c = 3 if any(img.shape[0] >= 3 for img in images) else 1

    def stack(imgs: list[torch.Tensor]) -> torch.Tensor:  # -> (N, c, H, W)
        if any(img.shape[0] != c for img in imgs):
            imgs = [img[:3] if img.shape[0] >= 3 else img[:1].expand(c, h, w) for img in imgs]
        return torch.stack(imgs)

    split_class = [f.rsplit(os.sep, 3)[1:3] for f in files]  # root/<split>/<class>/<file>
    labels = torch.tensor([index[c] for _, c in split_class], dtype=torch.int64)
    n = sum(1 for split, _ in split_class if split == "train")  # train files come first
    return ImageData(name=name, class_names=tuple(classes),
                     train_images=stack(images[:n]), train_labels=labels[:n].clone(),
                     test_images=stack(images[n:]), test_labels=labels[n:].clone())


IMAGEFOLDER = Loader("an ImageFolder tree: train/<class>/*.jpg|png and test/<class>/*",
                     _find_imagefolder, _build_imagefolder)


# ---------------------------------------------------------------------------------------------------
# The registry

DATASETS: dict[str, Loader] = {
    "digits": Loader("scikit-learn 8x8 digits, fixed stratified 2/3 train split (offline)",
                     lambda root: [], _digits, needs_root=False, disk_cache=False),
    "cifar10": Loader("CIFAR-10, 32x32 RGB, 10 classes", _find_cifar10, _build_cifar10, _download_cifar10),
    "cifar100": Loader("CIFAR-100 with its 20 coarse super-classes, 32x32 RGB", _find_cifar100,
                       _build_cifar100, _download_cifar100),
    "mnist": Loader("MNIST, 28x28 grey, 10 classes", _find_mnist, _build_mnist, _download_mnist),
    "svhn": Loader("SVHN cropped digits, 32x32 RGB, 10 classes (train and test, not extra)", _find_svhn,
                   _build_svhn, _download_svhn),
}
