"""Training throughput and model FLOP utilisation of HSCL's CIFAR ResNet-18 step, with and without each trick.

    tar xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR       # once: the real CIFAR-10 JPEGs, into DIR/cifar10-jpeg
    python benchmarks/train_throughput.py --data-root DIR       # CPU: 2-4 minutes on 2 shared cores
    python benchmarks/train_throughput.py --variants fp32,bf16 --batch 4 --steps 1

One step is HSCL's own: `HSCL.loss` (two SimCLR views x 4 rotations of B uint8 images, ResNet-18 +
projection head, the S-S, S-P and N-A losses of Eq. 8), backward, Adam, on a batch gathered from a
5,000-image slice of the real CIFAR-10 training set resident on the device (a fixed mix of
unlabeled, labeled normal and labeled anomaly samples, like a scenario2 split). A variant names
the tricks it turns on, joined by "+" ("fp32" = none):

- bf16:    bf16 autocast around the forward pass (HSCLConfig.amp)
- cl:      channels_last weights and inputs (HSCLConfig.channels_last)
- compile: torch.compile of the network (HSCLConfig.compile), default mode
- hostaug: augmentation on the host instead: torchvision.transforms.v2 per image in a DataLoader
           (benchmarks/augment_throughput.py's pipeline), copied to the device; rotations and
           everything after stay HSCL's. Without it, augmentation is batched on the device.

HSCL turns amp and channels_last on only on CUDA unless `cpu_bf16` is set (the `small` profile sets
it); this script sets it, so that on the CPU the variants show what each switch does there.
`--net resnet18_narrow` measures the small profile's network (train_throughput-resnet18_narrow.json).
The host-aug variant swaps `methods.hscl.simclr_views` for the loader's output during its steps; nothing else of
the step changes.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one eager fp32 step (forward + backward:
convolutions and matrix products; the elementwise rest is not counted), the same model FLOPs for
every variant. MFU = FLOPs per step / step time / peak. On GPU the peak is the card's dense bf16
tensor rate from the table below (the issue's yardstick, for every variant, fp32 ones included).
On CPU there is no datasheet: the peak is nominal, cores used (= `--threads`, default 1, as a sweep
trial) x clock x FLOPs per cycle per core from the ISA (64 fp32 with AVX-512: two 512-bit FMA
pipes; 32 with AVX2 + FMA; bf16 twice that with AVX512_BF16/AMX); each variant is measured against
the peak of the dtype its convolutions run in. The clock is measured (a chain of dependent adds,
compiled with the system's C compiler), because under a hypervisor /proc/cpuinfo shows the base
clock, not the boost clock the cores run at (here 2.6 vs about 4.1 GHz). torch's own fp32 and
bf16 matmul rates on the same threads are recorded beside it, as an empirical yardstick.

Timing is side by side: every variant is built and warmed up first (the compile time is recorded
apart), then `--repeats` rounds run each variant for `--steps` steps in turn; the figure is the
median round. Writes benchmarks/records/train_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import methods.hscl as hscl_module
from methods.base import TrainSet
from methods.hscl import HSCL, HSCLConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_throughput import PerImage  # noqa: E402  (the same torchvision pipeline)

ROOT = Path(__file__).resolve().parent.parent
TRICKS = ("bf16", "cl", "compile", "hostaug")
# Dense bf16 tensor-core peaks, TFLOP/s (NVIDIA datasheets; "with sparsity" figures halved). First match wins.
GPU_BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", None),  # AWS's A10G: no NVIDIA datasheet figure; pass --peak-tflops
    ("A10", 125.0),
]
CPU_DEFAULT = "fp32,bf16,cl,bf16+cl,compile,hostaug"
GPU_DEFAULT = "fp32,bf16,bf16+cl,bf16+cl+compile,bf16+cl+compile+hostaug,cl+compile,bf16+compile"


_CLOCK_PROBE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {  /* a chain of dependent adds: one per cycle, so adds per second = the core's clock */
    long n = 300000000L; unsigned long x = 1; struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        __asm__ volatile("add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\t"
                         "add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0" : "+r"(x));
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", 8.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9) / 1e9);
    return (int)(x & 1);
}
"""


def measured_clock_ghz() -> float | None:
    """The running core's clock, from a dependent-add chain (x86-64 and a C compiler needed), best of 3.
    Under a hypervisor /proc/cpuinfo gives the base (TSC) clock, not the boost clock the cores run at."""
    import shutil
    import subprocess
    import tempfile

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_PROBE)
        try:
            subprocess.run([cc, "-O2", str(src), "-o", str(exe)], check=True, capture_output=True, timeout=60)
            return max(float(subprocess.run([str(exe)], capture_output=True, text=True, timeout=60).stdout)
                       for _ in range(3))
        except (OSError, subprocess.SubprocessError, ValueError):
            return None


def gemm_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 4) -> float:
    """What torch's own matrix product reaches here (same threads): an empirical yardstick beside the peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cpu_peaks(threads: int) -> dict:
    """Nominal peak GFLOP/s of the cores this run computes on (see the module docstring)."""
    flags, mhz, model = set(), None, platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "model name":
                model = value.strip()
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    bf16_factor = 2 if {"avx512_bf16", "amx_bf16"} & flags else 1
    probe = measured_clock_ghz()
    ghz = probe or (mhz or 2000.0) / 1000
    fp32 = threads * ghz * per_cycle
    return {
        "model": model, "cores_used": threads, "cores_visible": os.cpu_count(),
        "clock_ghz": round(ghz, 3), "clock_source": "measured (dependent-add chain)" if probe else "/proc/cpuinfo",
        "cpuinfo_ghz": round(mhz / 1000, 3) if mhz else None,
        "fp32_flops_per_cycle_per_core": per_cycle, "bf16_over_fp32": bf16_factor,
        "peak_gflops": {"fp32": round(fp32, 1), "bf16": round(fp32 * bf16_factor, 1)},
        "gemm_gflops_measured": {"fp32": round(gemm_gflops(torch.float32), 1),
                                 "bf16": round(gemm_gflops(torch.bfloat16), 1)},
        "note": "nominal peak = cores used x clock x FLOPs/cycle from the ISA flags (AVX-512: two 512-bit FMA "
                "pipes = 64 fp32 FLOPs/cycle; AVX512_BF16 doubles it); not a datasheet figure. The cores are "
                "shared with other users. gemm_gflops_measured: torch's 2048^3 matmul on the same threads",
    }


def gpu_peak(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, tflops in GPU_BF16_PEAK_TFLOPS:
        if key in name:
            return tflops
    return None


class Variant:
    """One HSCL model + optimiser with a set of tricks; step() runs one training step."""

    def __init__(self, name: str, images: torch.Tensor, kind: torch.Tensor, batch: int, seed: int,
                 loader_workers: int):
        self.name = name
        self.tricks = set() if name == "fp32" else set(name.split("+"))
        unknown = self.tricks - set(TRICKS)
        if unknown:
            raise SystemExit(f"unknown trick(s) {sorted(unknown)} in variant '{name}'; known: {', '.join(TRICKS)}")
        dev = images.device
        # cpu_bf16: on the CPU too, amp and channels_last do what the variant asks (as the small profile).
        cfg = HSCLConfig(net=NET, batch_size=batch, amp="bf16" in self.tricks, channels_last="cl" in self.tricks,
                         compile="compile" in self.tricks, cpu_bf16=True)
        self.method = m = HSCL(cfg, dev, seed)
        m.net = m.build_net(images.shape[1])
        self.forward = torch.compile(m.net) if cfg.compile else m.net  # as HSCL.fit does
        self.opt = torch.optim.Adam(m.net.parameters(), lr=cfg.lr)
        self.images, self.kind, self.batch = images, kind, batch
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.loader = self.batches = None
        if "hostaug" in self.tricks:
            cpu_images = images.cpu()
            self.loader = DataLoader(PerImage(cpu_images, n_views=2, n_rot=1), batch_size=batch, shuffle=True,
                                     num_workers=loader_workers, persistent_workers=loader_workers > 0,
                                     pin_memory=dev.type == "cuda", drop_last=True)

    def _host_views(self) -> torch.Tensor:
        if self.batches is None:
            self.batches = iter(self.loader)
        try:
            x = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x = next(self.batches)
        # (B, 2, C, H, W) -> HSCL's (2B, C, H, W): rows [0, B) view 1, [B, 2B) view 2
        return x.to(self.images.device, non_blocking=True).transpose(0, 1).reshape(-1, *x.shape[2:])

    def step(self) -> None:
        idx = torch.randint(0, self.images.shape[0], (self.batch,), generator=self.gen, device=self.images.device)
        patch = contextlib.nullcontext()
        if self.loader is not None:
            views = self._host_views()
            patch = _swap_augment(lambda *a, **k: views)
        with patch:
            parts = self.method.loss(self.forward, self.images[idx], self.kind[idx], self.gen)
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.opt.step()
        self.last_loss = parts["loss"].detach()

    def run(self, steps: int) -> float:
        sync = torch.cuda.synchronize if self.images.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync()
        return (time.perf_counter() - t0) / steps


@contextlib.contextmanager
def _swap_augment(fn):
    saved = hscl_module.simclr_views
    hscl_module.simclr_views = fn
    try:
        yield
    finally:
        hscl_module.simclr_views = saved


NET = "resnet18"  # the encoder, from --net


def count_flops(images, kind, batch, seed) -> tuple[int, dict]:
    v = Variant("fp32", images, kind, batch, seed, 0)
    with FlopCounterMode(display=False) as fc:
        v.step()
    by_op = {str(k): int(n) for k, n in fc.get_flop_counts().get("Global", {}).items()}
    return int(fc.get_total_flops()), by_op


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="cifar10-jpeg",
                        help="CIFAR-10: an ImageFolder tree (a path, or a folder under --data-root) or 'cifar10'")
    parser.add_argument("--data-root", default=None, help="the folder holding --data (default: the working folder)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--net", default="resnet18", help="encoder: resnet18 (paper) or resnet18_narrow (small)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 8 on CPU, 256 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 2 CPU, 20 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=None, help=f"comma-separated (default CPU: {CPU_DEFAULT}; "
                                                          f"GPU: {GPU_DEFAULT})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loader-workers", type=int, default=None, help="hostaug DataLoader workers "
                                                                         "(default 0 on CPU, 4 on GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak, if not in the table")
    args = parser.parse_args()
    global NET
    NET = args.net
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (256 if cuda else 8)
    steps = args.steps or (20 if cuda else 2)
    workers = args.loader_workers if args.loader_workers is not None else (4 if cuda else 0)
    names = (args.variants or (GPU_DEFAULT if cuda else CPU_DEFAULT)).split(",")
    if cuda:
        torch.backends.cudnn.benchmark = True

    from orchestrator.data.datasets import load_dataset

    data = load_dataset(args.data, args.data_root)
    images = data.train_images[: args.images].contiguous().to(dev)
    # A scenario2-like mix: 90% unlabeled, 5% labeled normal, 5% labeled anomaly.
    r = torch.rand(images.shape[0], generator=torch.Generator().manual_seed(0))
    kind = torch.where(r < 0.05, TrainSet.ANOMALY, torch.where(r < 0.10, TrainSet.NORMAL, TrainSet.UNLABELED))
    kind = kind.to(dev, torch.int8)
    load_before = os.getloadavg()

    flops, flops_by_op = count_flops(images, kind, batch, seed=0)
    print(f"{flops / 1e9:.1f} GFLOP per step (batch {batch}: {8 * batch} rows through {NET})", flush=True)

    variants, setup = {}, {}
    for name in names:
        t0 = time.perf_counter()
        v = Variant(name, images, kind, batch, 0, workers)
        v.run(2 if "compile" in v.tricks else 1)  # warm-up; compiling happens here
        variants[name] = v
        setup[name] = round(time.perf_counter() - t0, 1)
        print(f"  built and warmed up {name} in {setup[name]:.1f} s", flush=True)

    times: dict[str, list[float]] = {k: [] for k in names}
    for rnd in range(args.repeats):
        for name, v in variants.items():
            sec = v.run(steps)
            times[name].append(sec)
            print(f"  round {rnd + 1}: {name:28s} {sec:7.3f} s/step  {batch / sec:8.1f} images/s", flush=True)

    if cuda:
        device_name = torch.cuda.get_device_name()
        peak_tflops = gpu_peak(device_name, args.peak_tflops)
        peaks = {"bf16_dense_tflops": peak_tflops, "source": "GPU_BF16_PEAK_TFLOPS table / --peak-tflops"}
    else:
        cpu = cpu_peaks(args.threads)
        device_name = f"cpu: {cpu['model']}, {cpu['cores_visible']} cores, {cpu['clock_ghz']} GHz"
        peaks = cpu

    def peak_flops(name: str) -> float | None:
        if cuda:
            return peaks["bf16_dense_tflops"] * 1e12 if peaks["bf16_dense_tflops"] else None
        return peaks["peak_gflops"]["bf16" if "bf16" in name else "fp32"] * 1e9

    base = names[0]
    results = {}
    for name in names:
        sec = statistics.median(times[name])
        peak = peak_flops(name)
        results[name] = {
            "seconds_per_step": round(sec, 4),
            "images_per_second": round(batch / sec, 2),
            "rows_per_second": round(8 * batch / sec, 1),
            "gflops_per_second": round(flops / sec / 1e9, 1),
            "mfu": round(flops / sec / peak, 4) if peak else None,
            "speedup_vs_" + base: round(statistics.median(
                b / a for a, b in zip(times[name], times[base], strict=True)), 3),
            "setup_and_warmup_seconds": setup[name],
            "last_loss": round(float(variants[name].last_loss), 4),
            "rounds_seconds_per_step": [round(x, 4) for x in times[name]],
        }
    record = {
        "benchmark": "train_throughput",
        "device": device_name,
        "torch": torch.__version__,
        "threads": None if cuda else args.threads,
        "model": f"HSCL step: {NET} (CIFAR) + 128-d head, 2 views x 4 rotations, Eq. 8, Adam",
        "data": f"{data.name} train[:{args.images}], uint8 32x32 on the device",
        "batch_images": batch,
        "rows_per_step": 8 * batch,
        "gflop_per_step": round(flops / 1e9, 2),
        "gflop_per_step_by_op": {k: round(n / 1e9, 2) for k, n in flops_by_op.items()},
        "peak": peaks,
        "mfu_against": "dense bf16 peak (all variants)" if cuda else "nominal CPU peak of the variant's dtype",
        "steps_per_round": steps,
        "repeats": args.repeats,
        "hostaug_loader_workers": workers,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    suffix = "" if NET == "resnet18" else f"-{NET}"
    out = ROOT / "benchmarks" / "records" / f"train_throughput{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    for name, res in results.items():
        mfu = f"MFU {100 * res['mfu']:.1f}%" if res["mfu"] is not None else "MFU n/a (unknown peak)"
        print(f"{name:28s} {res['images_per_second']:8.1f} images/s  {res['gflops_per_second']:8.1f} GFLOP/s  "
              f"{mfu}  x{res['speedup_vs_' + base]:.2f} vs {base}")
    print(f"load average (1 min) {load_before[0]:.1f} before, {record['loadavg_after'][0]:.1f} after, "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
