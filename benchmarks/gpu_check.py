"""One command for a lent GPU (issue 24): in under 5 minutes, one JSON record of what the hot path reaches there.

    python benchmarks/gpu_check.py                 # or: bash benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py --cuda-graphs   # + the small-batch step with CUDA graphs (~1 more minute)

On CUDA it measures, with the trainer's CUDA defaults (methods/trainer.py HotPath: fixed batch shapes,
torch.compile, cudnn.benchmark; fused Adam):
1. the HSCL paper step (`HSCL.loss`: 2 SimCLR views x 4 rotations of 256 images = 2,048 rows through the CIFAR
   ResNet-18 + head, Eq. 8, backward, Adam): images/s and MFU for fp32, bf16, bf16 + channels_last eager and
   bf16 + channels_last compiled; FLOPs from FlopCounterMode over one eager fp32 step, MFU against the card's
   dense bf16 peak (benchmarks/train_throughput.py's table; --peak-tflops otherwise);
2. trials/hour at 1, 2 and 4 trials per GPU: K processes at once, each running two short paper-profile HSCL
   trials (fit `--trial-epochs` epochs on `--trial-images` images + score 1,000), the first warming up (compile;
   Inductor's on-disk cache serves the later processes), the second timed; trials/hour = K x 3600 / the slowest
   second trial. Peak GPU memory per trial (torch.cuda.max_memory_allocated in each process);
3. with --cuda-graphs, Deep SVDD's paper step (128 images, ResNet-18) eager, compiled and compiled with
   mode="reduce-overhead" (CUDA graphs): whether graphs pay for the small-batch methods.
The images are random uint8 32x32 (throughput does not depend on content; the GPU machine has no CIFAR copy):
`--data-root DIR` uses the CIFAR-10 JPEGs in DIR/cifar10-jpeg instead. The record's `trial_estimates` give
orchestrator/estimate.py a basis for HSCL paper trials on this device kind.

Without CUDA the same code paths run on a tiny net (cnn_small, batch 8, 1 step a round, trials of 64 images):
the record says "cpu (tiny-net smoke run)" and its figures are not a GPU's. Writes
benchmarks/records/gpu_check.json (cpu: gpu_check-cpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from methods.base import TrainSet  # noqa: E402
from methods.deepsvdd import DeepSVDD, DeepSVDDConfig  # noqa: E402
from methods.hscl import HSCL, HSCLConfig  # noqa: E402
from methods.trainer import COMPILE_ENV, FIXED_SHAPES_ENV, HotPath  # noqa: E402

# A CIFAR-10 one-class trial trains on about 5,000 normal images plus pollution (the store's n_train: 5,000-5,523).
PAPER_N_TRAIN = 5250


def images_and_kind(n: int, device, data_root: str | None, size: int = 32):
    if data_root:
        from orchestrator.data.datasets import load_dataset

        images = load_dataset("cifar10-jpeg", data_root).train_images[:n]
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    r = torch.rand(len(images), generator=torch.Generator().manual_seed(1))
    kind = torch.where(r < 0.05, TrainSet.ANOMALY, torch.where(r < 0.10, TrainSet.NORMAL, TrainSet.UNLABELED))
    return images.to(device), kind.to(device, torch.int8)


class Step:
    """One training step of a method (HSCL or Deep SVDD) with given precision and hot path."""

    def __init__(self, method: str, net: str, batch: int, amp: bool, cl: bool, hot: HotPath, images, kind):
        device = images.device
        if method == "hscl":
            self.m = HSCL(HSCLConfig(net=net, batch_size=batch, amp=amp, channels_last=cl, cpu_bf16=True), device, 0)
        else:
            self.m = DeepSVDD(DeepSVDDConfig(net=net, batch_size=batch, amp=amp, channels_last=cl, cpu_bf16=True),
                              device, 0)
        self.m.net = self.m.build_net(images.shape[1])
        self.step_loss = self.m.step_loss(images, kind)
        self.forward = hot.wrap(self.m.net)
        self.opt = self.m.optimizer(list(self.m.net.parameters()))  # fused Adam on CUDA
        self.n, self.batch, self.device = len(images), batch, device
        self.gen = torch.Generator(device=device).manual_seed(0)

    def step(self):
        rows = torch.randint(0, self.n, (self.batch,), generator=self.gen, device=self.device)
        loss = self.step_loss(self.forward, rows, 1, self.gen)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last_loss = loss.detach()

    def run(self, steps: int) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync()
        return (time.perf_counter() - t0) / steps


def measure_steps(variants: dict, method, net, batch, images, kind, steps, repeats, peak_flops) -> dict:
    probe = Step(method, net, batch, False, False, HotPath(), images, kind)
    with FlopCounterMode(display=False) as fc:
        probe.step()
    flops = fc.get_total_flops()
    built, setup = {}, {}
    for name, (amp, cl, hot) in variants.items():
        t0 = time.perf_counter()
        built[name] = Step(method, net, batch, amp, cl, hot, images, kind)
        built[name].run(3)  # warm-up: compilation, cuDNN's autotuning
        setup[name] = round(time.perf_counter() - t0, 1)
        print(f"  {method} {name}: built and warmed up in {setup[name]} s", flush=True)
    times = {k: [] for k in built}
    for _ in range(repeats):
        for name, s in built.items():
            times[name].append(s.run(steps))
    base = next(iter(built))
    out = {"gflop_per_step": round(flops / 1e9, 2), "batch_images": batch, "variants": {}}
    for name in built:
        sec = statistics.median(times[name])
        out["variants"][name] = {
            "seconds_per_step": round(sec, 5), "images_per_second": round(batch / sec, 1),
            "mfu": round(flops / sec / peak_flops, 4) if peak_flops else None,
            f"speedup_vs_{base}": round(statistics.median(b / a for a, b in zip(times[name], times[base],
                                                                                strict=True)), 3),
            "setup_and_warmup_seconds": setup[name], "last_loss": round(float(built[name].last_loss), 4)}
        print(f"  {method} {name:22s} {batch / sec:9.1f} images/s", flush=True)
    return out


def trial_worker(args) -> None:
    """One process of the trials/hour measurement: two short HSCL trials, the second timed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images, kind = images_and_kind(args.trial_images, device, args.data_root)
    test = images_and_kind(1000 if device.type == "cuda" else 64, device, None)[0]
    cfg = {"net": args.net, "batch_size": args.batch, "epochs": args.trial_epochs, "warmup_epochs": 1}
    runs = []
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        m = HSCL(HSCLConfig(**cfg), device, 0)
        summary = m.fit(TrainSet(images, kind))
        fit_s = time.perf_counter() - t0
        m.score(test)
        runs.append({"seconds": time.perf_counter() - t0, "fit_seconds": fit_s, "compiled": summary["compiled"],
                     "fixed_batches": summary["fixed_batches"], "precision": summary["precision"],
                     "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None})
    Path(args.worker_out).write_text(json.dumps(runs))


def trials_per_hour(args, per_gpu: int) -> dict:
    outs = [Path(f"/tmp/gpu_check_trial_{per_gpu}_{i}.json") for i in range(per_gpu)]
    cmd = [sys.executable, __file__, "--trial-worker", "--net", args.net, "--batch", str(args.batch),
           "--trial-images", str(args.trial_images), "--trial-epochs", str(args.trial_epochs)]
    cmd += ["--data-root", args.data_root] if args.data_root else []
    env = dict(os.environ)
    if not torch.cuda.is_available():  # the CPU smoke run takes the CUDA hot path (compiled, fixed shapes) too
        env.update({COMPILE_ENV: "1", FIXED_SHAPES_ENV: "1"})
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--worker-out", str(o)], env=env) for o in outs]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        return {"error": f"worker exit codes {codes}"}
    runs = [json.loads(o.read_text()) for o in outs]
    timed = [r[1] for r in runs]
    slowest = max(r["seconds"] for r in timed)
    return {"trials_per_gpu": per_gpu, "trials_per_hour": round(per_gpu * 3600 / slowest, 1),
            "timed_trial_seconds": [round(r["seconds"], 2) for r in timed],
            "first_trial_seconds_with_compile": [round(r[0]["seconds"], 2) for r in runs],
            "peak_memory_gib_per_trial": [round(r["peak_memory_gib"], 2) if r["peak_memory_gib"] else None
                                          for r in timed],
            "hot_path": {k: timed[0][k] for k in ("compiled", "fixed_batches", "precision")},
            "wall_seconds_all": round(wall, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder with cifar10-jpeg (default: random uint8 images)")
    p.add_argument("--steps", type=int, default=None, help="timed steps a round (CUDA 10, CPU 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per-gpu", default="1,2,4", help="trials per GPU to measure")
    p.add_argument("--trial-images", type=int, default=None, help="CUDA 2,560 (10 steps an epoch), CPU 64")
    p.add_argument("--trial-epochs", type=int, default=2)
    p.add_argument("--cuda-graphs", action="store_true", help="also Deep SVDD's step with CUDA graphs")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--trial-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--net", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    args.net = args.net or ("resnet18" if cuda else "cnn_small")
    args.batch = args.batch or (256 if cuda else 8)
    args.trial_images = args.trial_images or (2560 if cuda else 64)
    if not cuda:
        torch.set_num_threads(1)
    if args.trial_worker:
        return trial_worker(args)

    t_start = time.perf_counter()
    device = torch.device("cuda" if cuda else "cpu")
    from train_throughput import gpu_peak

    from orchestrator.experiments.fitting import device_name

    name = device_name(device)
    peak = gpu_peak(torch.cuda.get_device_name(), args.peak_tflops) if cuda else None
    peak_flops = peak * 1e12 if peak else None
    steps = args.steps or (10 if cuda else 1)
    images, kind = images_and_kind(5000 if cuda else 256, device, args.data_root)
    print(f"gpu_check on {name}{'' if cuda else ' (no CUDA: tiny-net smoke run)'}", flush=True)

    compiled = HotPath(compile=True, fixed_shapes=True)
    hscl = measure_steps({"fp32": (False, False, HotPath()), "bf16": (True, False, HotPath()),
                          "bf16+cl": (True, True, HotPath()), "bf16+cl+compile": (True, True, compiled)},
                         "hscl", args.net, args.batch, images, kind, steps, args.repeats, peak_flops)
    graphs = None
    if args.cuda_graphs:
        graphs = measure_steps({"bf16+cl": (True, True, HotPath()), "bf16+cl+compile": (True, True, compiled),
                                "bf16+cl+compile+graphs": (True, True, HotPath(True, True, cuda_graphs=cuda))},
                               "deepsvdd", args.net, 128 if cuda else 8, images, kind, steps, args.repeats,
                               peak_flops)
    concurrency = [trials_per_hour(args, int(k)) for k in args.per_gpu.split(",")]
    one = next((c for c in concurrency if c.get("trials_per_gpu") == 1 and "error" not in c), None)
    estimates = []
    if one and cuda:
        timed = one["timed_trial_seconds"][0]
        scale = PAPER_N_TRAIN / args.trial_images
        estimates.append({"method": "hscl", "profile": "paper", "device": name, "epochs": args.trial_epochs,
                          "trial_seconds": round(timed * scale, 2), "train_seconds": round(timed * scale, 2),
                          "note": f"a {args.trial_epochs}-epoch trial on {args.trial_images} images, x{scale:.2f} "
                                  f"to a CIFAR-10 one-class trial's ~{PAPER_N_TRAIN} images; scoring counted as "
                                  "training (it scales with the images too)"})
    record = {
        "benchmark": "gpu_check", "device": name if cuda else f"{name} (tiny-net smoke run: not a GPU figure)",
        "torch": torch.__version__, "peak_bf16_tflops": peak,
        "data": f"cifar10-jpeg from {args.data_root}" if args.data_root else "random uint8 32x32 images",
        "hscl_paper_step" if cuda else "hscl_tiny_step": hscl,
        "small_batch_cuda_graphs": graphs,
        "trials": {"what": f"HSCL {'paper' if cuda else 'tiny'} trial: {args.net}, batch {args.batch}, "
                           f"{args.trial_epochs} epochs on {args.trial_images} images, trainer defaults",
                   "per_gpu": concurrency},
        "trial_estimates": estimates,
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    out = ROOT / "benchmarks" / "records" / ("gpu_check.json" if cuda else "gpu_check-cpu.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"wrote {out} in {record['seconds_total']} s")


if __name__ == "__main__":
    main()
