"""CADet pre-training throughput (images per second) with 1 and 2 DDP workers on CPU (gloo), and their ratio.

    python benchmarks/cadet_ddp.py                        # both workloads, 3 repeats: about 4 minutes on 2 cores
    python benchmarks/cadet_ddp.py --workloads digits --repeats 1

Each worker is one process with one torch thread (a Ray Train worker of `--workers N` gets one CPU),
started by torch.multiprocessing with a gloo process group of world size N (N = 1 too, as Ray Train
does), and runs `CADet.pretrain`: two SimCLR views per image, the NT-Xent over the embeddings of all
workers (gathered), backward, DDP's gradient all-reduce, the optimiser step. Two warm-up steps first,
then `--epochs` timed epochs; images/s = images of the global batches / wall time, as
`CADet.pretrain` reports it. The global batch is the same for 1 and 2 workers (2 workers: half each).

Workloads:
- digits: the quick profile as a sweep trial runs it (cnn_small, 8x8 sklearn digits 0-4, batch 128, Adam);
- cifar:  the paper profile's network and optimiser (CIFAR ResNet-18, SimCLRv2 head, LARS) on 32x32x3
          images at batch 64 (random pixels: throughput does not depend on content).

A control runs 1 worker at half the global batch, the per-worker batch of the 2-worker run: the ratio
against it separates the second core's gain from the effect of a smaller per-process batch. Repeats
cycle through the three settings; the figure is the median repeat. The 2 cores are shared with other
users' processes: the load average before and after is recorded, and the ratio is only as clean as
the machine was idle. Writes benchmarks/records/cadet_ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from methods.cadet import CADet, CADetConfig  # noqa: E402

RECORD = Path(__file__).resolve().parent / "records" / "cadet_ddp.json"

WORKLOADS = {
    "digits": {"config": {**CADet.profiles["quick"], "epochs": 20, "warmup_epochs": 0},
               "description": "quick profile: cnn_small, 8x8x1 sklearn digits 0-4 (602 images), batch 128, Adam"},
    "cifar": {"config": {**CADet.profiles["paper"], "epochs": 1, "warmup_epochs": 0, "batch_size": 64},
              "description": "paper profile's net and optimiser: CIFAR ResNet-18 + 3-layer head, LARS, "
                             "384 random 32x32x3 images, batch 64", "n": 384},
}


def images_for(name: str) -> torch.Tensor:
    if name == "digits":
        from orchestrator.data.datasets import load_dataset

        d = load_dataset("digits")
        return d.train_images[d.train_labels < 5]
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (WORKLOADS[name]["n"], 3, 32, 32), generator=g, dtype=torch.uint8)


def _worker(rank: int, world: int, init_file: str, out: str, name: str, epochs: int, batch: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images = images_for(name)
        cfg = CADetConfig(**{**WORKLOADS[name]["config"], "epochs": 1, "batch_size": batch})
        m = CADet(cfg, torch.device("cpu"), seed=0)
        m.net = m.build_net(images.shape[1])
        m.encoder = m.net.encoder
        m.pretrain(images[: 2 * batch])  # warm-up: 2 steps (allocator, gloo buffers, first-call overheads)
        m.config = CADetConfig(**{**WORKLOADS[name]["config"], "epochs": epochs, "batch_size": batch})
        summary = m.pretrain(images)
        if rank == 0:
            Path(out).write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


def measure(name: str, world: int, epochs: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "summary.json")
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), out, name, epochs, batch), nprocs=world)
        summary = json.loads(Path(out).read_text())
        summary["process_seconds"] = time.perf_counter() - t0
        return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="digits,cifar")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="timed epochs (default: the workload's)")
    p.add_argument("--out", default=str(RECORD))
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    results = {}
    for name in args.workloads.split(","):
        epochs = args.epochs or WORKLOADS[name]["config"]["epochs"]
        batch = WORKLOADS[name]["config"]["batch_size"]
        # (workers, global batch): the comparison, plus 1 worker at the 2-worker run's per-worker batch (a
        # control: how much of the ratio is the smaller per-process batch rather than the second core).
        settings = {"1_worker": (1, batch), "2_workers": (2, batch), "1_worker_half_batch": (1, batch // 2)}
        runs: dict[str, list[float]] = {k: [] for k in settings}
        for r in range(args.repeats):
            for key, (world, b) in settings.items():
                s = measure(name, world, epochs, b)
                runs[key].append(s["pretrain_images_per_second"])
                print(f"{name} repeat {r + 1}: {key} (global batch {b}) {s['pretrain_images_per_second']:.0f} "
                      f"images/s ({s['pretrain_seconds']:.2f} s for {s['steps']} steps)", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        results[name] = {"description": WORKLOADS[name]["description"], "timed_epochs": epochs, "global_batch": batch,
                         "images_per_second": {k: round(v, 1) for k, v in med.items()},
                         "ratio_2_over_1": round(med["2_workers"] / med["1_worker"], 3),
                         "ratio_2_over_1_same_per_worker_batch":
                             round(med["2_workers"] / med["1_worker_half_batch"], 3),
                         "per_repeat": {k: [round(v, 1) for v in vs] for k, vs in runs.items()}}
        print(f"{name}: 1 worker {med['1_worker']:.0f} images/s, 2 workers {med['2_workers']:.0f} images/s, ratio "
              f"{med['2_workers'] / med['1_worker']:.2f} ({med['2_workers'] / med['1_worker_half_batch']:.2f} "
              f"against 1 worker at half the batch)")
    record = {
        "benchmark": "cadet_ddp",
        "what": "CADet.pretrain throughput, DDP over gloo on CPU, 1 torch thread per worker",
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "torch": torch.__version__,
        "repeats": args.repeats,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "workloads": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
