"""Batched on-device augmentation (methods/augment.py) vs torchvision.transforms.v2 per image in a DataLoader.

    tar xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR       # once: the real CIFAR-10 JPEGs, into DIR/cifar10-jpeg
    python benchmarks/augment_throughput.py --data-root DIR [--repeats 3]

Both sides make HSCL's training input from the same 32x32 uint8 CIFAR-10 images (a slice of the
training set, decoded once): per image two SimCLR views (random resized crop of 8-100% of the area,
horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale with p 0.2, to float and
normalised), each rotated by 0, 90, 180 and 270 degrees (CSI's shifting transformation), laid out
as HSCL's loss wants them: (4 x 2 x B, 3, 32, 32), row = k * 2B + view * B + i. Two pipelines:

- "hscl": the above, 8 float images out per image in (what one HSCL step consumes);
- "view": one SimCLR view per image, no rotations (plain SimCLR / a DataLoader's usual job).

Ours: the whole slice as one uint8 tensor on the device, batches are index gathers from a random
permutation, `simclr_augment` + `rotations` on whole batches (exactly what `HSCL.loss` calls).
torchvision: a map-style Dataset over the same uint8 tensor whose `__getitem__` runs the v2
Compose once per view (and `torch.rot90` per rotation), a DataLoader with batch 256, shuffling,
`num_workers` 0 and 2 (persistent workers, started before timing: their start-up is not counted),
then HSCL's row layout (one transpose) and, on CUDA, the copy to the GPU (pinned memory).

The two are equivalent in distribution, not bit for bit: ours clamps an oversized crop instead of
re-drawing it, applies the jitter ops in a fixed order and shifts hue in YIQ instead of HSV.

Timing is side by side: the variants run in turns, `--repeats` rounds; a figure is the median over
rounds and a ratio the median of the per-round ratios, so load from other users of a shared machine
hits all of them alike. Torch runs on `--threads`
threads (default 1: on a shared 2-core machine 2 intra-op threads are up to 10x slower and erratic
when another process holds a core); DataLoader workers use 1 thread each, as PyTorch sets them.
On CUDA our side runs on the GPU (data resident there) and torchvision's in CPU workers + copy.
Writes benchmarks/records/augment_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from methods.augment import rotations, simclr_augment
from methods.hscl import HSCLConfig

ROOT = Path(__file__).resolve().parent.parent
CFG = HSCLConfig()  # the paper profile's augmentation parameters, the ones a CIFAR run uses


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tv_transform():
    """torchvision's SimCLR view with HSCLConfig's parameters, on one uint8 (3, H, W) tensor."""
    from torchvision.transforms import v2

    s = CFG.jitter
    return v2.Compose([
        v2.RandomResizedCrop(32, scale=(CFG.crop_scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(s, s, s, s / 4)], p=CFG.jitter_p),
        v2.RandomGrayscale(p=CFG.gray_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),  # methods.augment.normalize
    ])


class PerImage(Dataset):
    """Image i -> (R * V, C, H, W): V independent views, each rotated R times (row k * V + v)."""

    def __init__(self, images: torch.Tensor, n_views: int, n_rot: int):
        self.images, self.n_views, self.n_rot = images, n_views, n_rot
        self.transform = tv_transform()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        views = torch.stack([self.transform(self.images[i]) for _ in range(self.n_views)])  # (V, C, H, W)
        if self.n_rot > 1:
            views = torch.cat([torch.rot90(views, k, dims=(2, 3)) for k in range(self.n_rot)])
        return views


def run_ours(images: torch.Tensor, batch: int, n_views: int, n_rot: int, g: torch.Generator) -> int:
    """One pass over `images` (already on the device) -> number of images done."""
    n = images.shape[0]
    perm = torch.randperm(n, generator=g, device=images.device)
    for idx in perm.split(batch):
        x = images[idx]
        views = simclr_augment(x.repeat(n_views, 1, 1, 1), CFG.crop_scale_min, CFG.jitter, CFG.jitter_p,
                               CFG.gray_p, generator=g)
        out = rotations(views, n_rot)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape[0] == n_rot * n_views * idx.shape[0]
    return n


def run_loader(loader: DataLoader, device: torch.device, n_views: int, n_rot: int) -> int:
    n = 0
    for x in loader:  # (B, R * V, C, H, W) -> HSCL's (R * V * B, C, H, W)
        b = x.shape[0]
        x = x.to(device, non_blocking=True).transpose(0, 1).reshape(n_rot * n_views * b, *x.shape[2:])
        n += b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def time_once(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="cifar10-jpeg",
                        help="CIFAR-10: an ImageFolder tree (a path, or a folder under --data-root) or 'cifar10'")
    parser.add_argument("--data-root", default=None, help="the folder holding --data (default: the working folder)")
    parser.add_argument("--images", type=int, default=5000, help="slice of the training set our side passes over")
    parser.add_argument("--tv-images", type=int, default=1536, help="images per torchvision pass (it is slower)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", default="0,2", help="DataLoader num_workers to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pipelines", default="hscl,view")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from orchestrator.data.datasets import load_dataset

    data = load_dataset(args.data, args.data_root)
    images = data.train_images[: args.images].contiguous()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    on_dev = images.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    workers = [int(w) for w in args.workers.split(",")]
    shapes = {"hscl": (2, CFG.rotations), "view": (1, 1)}
    load_before = os.getloadavg()

    results = {}
    for name in args.pipelines.split(","):
        n_views, n_rot = shapes[name]
        tv_set = PerImage(images[: args.tv_images], n_views, n_rot)
        variants = {"ours_batched": lambda nv=n_views, nr=n_rot: run_ours(on_dev, args.batch, nv, nr, g)}
        for w in workers:
            loader = DataLoader(tv_set, batch_size=args.batch, shuffle=True, num_workers=w,
                                persistent_workers=w > 0, pin_memory=cuda, drop_last=False)
            if w > 0:  # start the workers with one untimed pass: start-up is paid once per run
                run_loader(loader, device, n_views, n_rot)
            variants[f"torchvision_v2_dataloader_w{w}"] = (
                lambda ld=loader, nv=n_views, nr=n_rot: run_loader(ld, device, nv, nr))
        run_ours(on_dev[: args.batch * 2], args.batch, n_views, n_rot, g)  # warm-up (kernels, allocator)
        rounds: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.repeats):
            for k, fn in variants.items():
                sec, n = time_once(fn)
                rounds[k].append(n / sec)
                print(f"  {name} round {r + 1}: {k:34s} {n / sec:9.0f} images/s", flush=True)
        med = {k: statistics.median(v) for k, v in rounds.items()}
        ours = rounds["ours_batched"]
        results[name] = {
            "views_per_image": n_views * n_rot,
            "images_per_second_median": {k: round(v, 1) for k, v in med.items()},
            "images_per_second_rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
            # Paired: each round's ours / that round's torchvision, then the median over rounds.
            "ratio_ours_vs": {k: round(statistics.median(a / b for a, b in zip(ours, v, strict=True)), 2)
                              for k, v in rounds.items() if k != "ours_batched"},
        }

    record = {
        "benchmark": "augment_throughput",
        "device": torch.cuda.get_device_name() if cuda else f"cpu: {cpu_model()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": args.threads,
        "data": f"{data.name} train[:{args.images}] (ours), train[:{args.tv_images}] (torchvision), uint8 32x32",
        "batch": args.batch,
        "repeats": args.repeats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    out = ROOT / "benchmarks" / "records" / "augment_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    where = "on the GPU" if cuda else f"on {args.threads} CPU thread(s)"
    for name, res in results.items():
        med = res["images_per_second_median"]
        print(f"{name} ({res['views_per_image']} float images out per image): ours {where} "
              f"{med['ours_batched']:.0f} images/s; " + "; ".join(
                  f"{k.replace('torchvision_v2_dataloader_', 'torchvision ')} {med[k]:.0f} images/s "
                  f"(ours x{ratio:.1f})" for k, ratio in res["ratio_ours_vs"].items()))
    print(f"load average (1 min) {load_before[0]:.1f} before, {record['loadavg_after'][0]:.1f} after, "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
