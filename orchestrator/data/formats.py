"""What each dataset is on disk: the classes a dataset comes back as (`ImageData`), how one kind of
dataset is found, read and downloaded (`Loader`), and the registry of names (`DATASETS`). Loading,
caching and naming live in orchestrator/data/datasets.py.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# The digits split is a property of the dataset: changing this seed changes every digits result.
_DIGITS_SPLIT_SEED = 20240501
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
