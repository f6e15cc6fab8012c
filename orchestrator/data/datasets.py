"""Image datasets as whole uint8 tensors: names, one loader call, caches per process and on disk.

Every dataset comes back as an ``ImageData`` (orchestrator/data/formats.py): train and test images as
uint8 ``(N, C, H, W)`` CPU tensors with int64 labels and the class names. Methods convert to float
themselves; an experiment indexes the training tensor with the split's indices.

Names ``load_dataset`` accepts:

- ``digits``: scikit-learn's 1,797 8x8 digits, offline, with a fixed stratified 2/3 : 1/3 split.
- ``cifar10``, ``cifar100`` (its 20 coarse super-classes), ``mnist``, ``svhn``: the official files
  under ``data_root`` (default ``$ADSWEEP_CACHE/data``, i.e. ``~/.cache/adsweep/data``), in the layout
  torchvision's ``download=True`` leaves there.
- ``imagefolder:/path/to/tree``, a plain existing directory, or a folder under ``data_root``:
  ``train/<class>/*.jpg|png`` and ``test/<class>/*``, class index = position in the sorted folder names.

Sets used only as shifts or out-of-distribution test images (CADet's experiments), read by
``load_shift_images`` into the in-distribution shape; they need no training split:

- ``mnist``: the test files alone suffice (t10k-images/labels-idx*-ubyte[.gz] under ``data_root`` or
  ``data_root/MNIST/raw``), so the 10,000 MNIST test digits serve as far OOD where the training files are absent.
- ``cifar10.1``: CIFAR-10.1 (Recht et al. 2019), ``data_root/CIFAR-10.1/cifar10.1_v6_data.npy`` (or ``_v4_``,
  or the file directly under ``data_root``), as its authors distribute it: uint8 (N, 32, 32, 3).
- ``imagenet-o`` and ``inaturalist``: folders of images under ``data_root`` (``imagenet-o/<wnid>/*.jpg`` as
  Hendrycks et al. ship it; ``iNaturalist/`` (any layout below it), the plant subset of Huang & Li 2021), each
  image centre-cropped to a square and resized.
- ``images:/path``: any folder of images (searched recursively), the same way.
- any other name ``load_dataset`` accepts (an ImageFolder tree, cifar100, svhn): its test split.

A trial stores a dataset's name, never the folder one machine keeps it in: an ImageFolder tree is
``imagefolder:<folder name>``, and the run's ``DataSource`` maps that name to the folder (or finds it
under ``data_root`` on another machine).

Cost (2 CPU cores, all 60,000 CIFAR-10 JPEGs as an ImageFolder tree, n=3): decoding takes 2.2-2.4 s,
the whole first load 2.8-3.6 s (plus 1.7 s to import torchvision.io); a later process loads the disk
cache in 0.25 s, mostly listing and stat-ing the 60,000 files to check that the cache is current.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orchestrator.data.formats import DATASETS, IMAGEFOLDER, DatasetError, ImageData, Loader, read_idx

__all__ = ["DataSource", "DatasetError", "ImageData", "check_dataset", "dataset_names", "dataset_ref",
           "check_shift_set", "is_shift_set", "load_dataset", "load_shift_images", "read_idx", "to_shape"]

# Bump when the tensors a loader builds change, so old disk caches are never read again.
_CACHE_FORMAT = 1
_IMAGEFOLDER = "imagefolder:"


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


def dataset_ref(name: str, data_root: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """(the name a trial stores, the folder it is read from). A registered dataset is its name (read from
    --data-root); an ImageFolder tree is stored as `imagefolder:<folder name>` with its path kept apart, so a
    trial's key and its row name the data, not where one machine keeps it."""
    canonical, loader, root = _resolve(name, data_root)
    if loader is IMAGEFOLDER:
        return f"{_IMAGEFOLDER}{root.name}", str(root)
    return canonical, None


@dataclass(frozen=True)
class DataSource:
    """Where a run reads its datasets: registered names from `root` (--data-root), each ImageFolder name
    from its folder. It travels with the run, not in the trial: the same trial reads the same data wherever
    a machine keeps it (a name missing from `folders` is looked up under `root`)."""

    root: str | None = None
    download: bool = False
    folders: dict[str, str] = field(default_factory=dict)  # "imagefolder:<name>" -> absolute path

    def add(self, name: str) -> tuple[str, DataSource]:
        """Register a dataset the user named -> (its stored name, the source that can read it)."""
        stored, folder = dataset_ref(name, self.root)
        if folder is None:
            return stored, self
        if self.folders.get(stored, folder) != folder:
            raise DatasetError(f"two ImageFolder trees are both named '{stored}' ({self.folders[stored]} and "
                               f"{folder}): rename one folder")
        return stored, DataSource(self.root, self.download, {**self.folders, stored: folder})

    def _path(self, name: str) -> str:
        return f"{_IMAGEFOLDER}{self.folders[name]}" if name in self.folders else name

    def check(self, name: str) -> None:
        check_dataset(self._path(name), self.root, self.download)

    def load(self, name: str) -> ImageData:
        return load_dataset(self._path(name), self.root, self.download)


def to_shape(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, *shape): gray <-> RGB, then an antialiased resize (a dataset of another
    shape used as anomalies: Scenario-3, CADet's shifts)."""
    channels, height, width = shape
    out = []
    for chunk in images.split(4096):  # bounded memory for large test sets
        x = chunk.float()
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-2:] != (height, width):
            x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, *shape))


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
# Sets used only as shifts / out-of-distribution test images (no training split needed)

_FOLDER_SETS = {"imagenet-o": ("imagenet-o", "imagenet_o", "ImageNet-O"), "inaturalist": ("iNaturalist", "inaturalist")}
SHIFT_SETS = ("mnist", "cifar10.1", *_FOLDER_SETS)
_IMAGE_FILES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


def _mnist_test(root: Path) -> torch.Tensor:
    for folder in (root, root / "MNIST" / "raw"):
        for stem in ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"):
            for path in (folder / stem, folder / f"{stem}.gz"):
                if path.is_file():
                    return torch.from_numpy(read_idx(path)[:, None].copy())
    raise DatasetError(f"mnist: no t10k-images-idx3-ubyte[.gz] in {root} or {root / 'MNIST' / 'raw'}")


def _cifar10_1(root: Path) -> torch.Tensor:
    import numpy as np

    for folder in (root / "CIFAR-10.1", root / "cifar10.1", root):
        for version in ("v6", "v4"):
            path = folder / f"cifar10.1_{version}_data.npy"
            if path.is_file():
                x = np.load(path)
                if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                    raise DatasetError(f"{path}: expected uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
                return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    raise DatasetError(f"cifar10.1: no cifar10.1_v6_data.npy (or _v4_) in {root}/CIFAR-10.1 or {root}; get it from "
                       "github.com/modestyachts/CIFAR-10.1 (datasets/)")


def _image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in _IMAGE_FILES and p.is_file()
                  and not p.name.startswith("."))


def _square_resize(images: list[torch.Tensor], shape: tuple[int, int, int]) -> torch.Tensor:
    """Each decoded image centre-cropped to a square, then to_shape (channels, antialiased resize)."""
    out = []
    for img in images:
        if img.shape[0] == 4:  # RGBA: drop alpha
            img = img[:3]
        h, w = img.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        out.append(to_shape(img[None, :, top:top + side, left:left + side], shape))
    return torch.cat(out) if out else torch.zeros((0, *shape), dtype=torch.uint8)


def is_shift_set(name: str) -> bool:
    """A name only load_shift_images reads (no training split): cifar10.1, imagenet-o, inaturalist, images:/path,
    and mnist (whose test files alone serve)."""
    return name in SHIFT_SETS or name.startswith("images:")


def check_shift_set(name: str, source: DataSource) -> None:
    """Cheap check before any work that load_shift_images can read `name` (files and folders exist)."""
    root = Path(source.root or default_data_root()).expanduser()
    if name == "mnist":
        try:
            source.check(name)
        except DatasetError:
            _mnist_test(root)
    elif name == "cifar10.1":
        if not any((f / f"cifar10.1_{v}_data.npy").is_file() for f in (root / "CIFAR-10.1", root / "cifar10.1", root)
                   for v in ("v6", "v4")):
            raise DatasetError(f"cifar10.1: no cifar10.1_v6_data.npy (or _v4_) in {root}/CIFAR-10.1 or {root}")
    elif name in _FOLDER_SETS or name.startswith("images:"):
        folders = ([root / f for f in _FOLDER_SETS[name]] if name in _FOLDER_SETS
                   else [Path(name[len("images:"):]).expanduser()])
        if not any(f.is_dir() for f in folders):
            raise DatasetError(f"{name}: no folder {' or '.join(map(str, folders))}")
    else:
        source.check(name)


def load_shift_images(name: str, source: DataSource, shape: tuple[int, int, int]) -> torch.Tensor:
    """The images of a set used as a shift or OOD test set (see the module docstring), uint8 (N, *shape).
    Raises DatasetError with one line when this machine does not have it."""
    from orchestrator.data.formats import _decode_files

    root = Path(source.root or default_data_root()).expanduser()
    if name == "mnist":
        try:
            return to_shape(source.load(name).test_images, shape)
        except DatasetError:  # the full set is absent; its test files alone are enough here
            return to_shape(_mnist_test(root), shape)
    if name == "cifar10.1":
        return to_shape(_cifar10_1(root), shape)
    if name in _FOLDER_SETS or name.startswith("images:"):
        folders = ([root / f for f in _FOLDER_SETS[name]] if name in _FOLDER_SETS
                   else [Path(name[len("images:"):]).expanduser()])
        folder = next((f for f in folders if f.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{name}: no folder {' or '.join(map(str, folders))}")
        files = _image_files(folder)
        if not files:
            raise DatasetError(f"{name}: {folder} holds no .jpg/.jpeg/.png images")
        return _square_resize(_decode_files(files), shape)
    return to_shape(source.load(name).test_images, shape)
