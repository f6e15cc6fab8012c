"""The hot path on the CPU (issue 24): the compiled vs the eager training step of the small profile's network, and
a shortened small-profile HSCL trial with the CPU default (eager, near-equal batches) vs the CUDA default forced
onto the CPU (torch.compile + fixed batch shapes, ADSWEEP_COMPILE=1 ADSWEEP_FIXED_SHAPES=1).

    python benchmarks/compile_cpu.py --data-root /tmp          # CIFAR-10 JPEGs in /tmp/cifar10-jpeg; ~5 min

The CPU default did not change with issue 24 (same code path, scores bit for bit as before), so "before / after"
for a CPU trial is the same trial; what this measures is what the compiled option would give here.

Step: HSCL's own (`HSCL.loss`: 2 SimCLR views x 4 rotations of 64 CIFAR images = 512 rows through the
quarter-width ResNet-18 + head, Eq. 8, backward, Adam), the small profile's precision (bf16 + channels_last on
a CPU with native bf16, else fp32 channels_last). Eager and compiled (Inductor, static shapes) are built and
warmed up first (compile time recorded apart), then `--repeats` rounds of `--steps` steps each in turn; figures
are medians, the ratio is the median of per-round ratios.
Trial: `HSCL.fit` + `score` at the small profile with `--trial-epochs` epochs on `--trial-images` images of class
0 (90 % unlabeled, 5 % labeled normal, 5 % labeled anomaly from class 1), scored on 1,000 test images; order
compiled, eager, compiled, eager in one process: the first compiled trial pays the compilation, the second
reuses it (as the next trial of a Ray actor does). Writes benchmarks/records/compile_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from methods.base import TrainSet
from methods.contrastive import SMALL_CIFAR
from methods.hscl import HSCL, HSCLConfig
from methods.trainer import COMPILE_ENV, FIXED_SHAPES_ENV, HotPath

ROOT = Path(__file__).resolve().parent.parent


def small_hscl(**over) -> HSCLConfig:
    return HSCLConfig(**{**SMALL_CIFAR, **over})


class Step:
    """One HSCL small-profile training step, eager or compiled."""

    def __init__(self, hot: HotPath, images, kind, batch: int):
        self.method = m = HSCL(small_hscl(batch_size=batch), torch.device("cpu"), 0)
        m.net = m.build_net(images.shape[1])
        self.forward = hot.wrap(m.net)
        self.opt = m.optimizer(list(m.net.parameters()))
        self.images, self.kind, self.batch = images, kind, batch
        self.gen = torch.Generator().manual_seed(0)

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, len(self.images), (self.batch,), generator=self.gen)
            loss = self.method.loss(self.forward, self.images[idx], self.kind[idx], self.gen)["loss"]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.last_loss = float(loss)
        return (time.perf_counter() - t0) / steps


def trial(train: TrainSet, test: torch.Tensor, epochs: int, compiled: bool) -> dict:
    os.environ[COMPILE_ENV] = os.environ[FIXED_SHAPES_ENV] = "1" if compiled else "0"
    try:
        t0 = time.perf_counter()
        m = HSCL(small_hscl(epochs=epochs), torch.device("cpu"), 0)
        summary = m.fit(train)
        t_fit = time.perf_counter() - t0
        m.score(test)
        return {"seconds": time.perf_counter() - t0, "fit_seconds": t_fit, "final_loss": summary["final_loss"],
                "compiled": summary["compiled"], "fixed_batches": summary["fixed_batches"], "steps": summary["steps"]}
    finally:
        os.environ.pop(COMPILE_ENV)
        os.environ.pop(FIXED_SHAPES_ENV)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="cifar10-jpeg")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch", type=int, default=64, help="images per step (the small profile's 64)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trial-images", type=int, default=1000)
    parser.add_argument("--trial-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from orchestrator.data.datasets import load_dataset

    data = load_dataset(args.data, args.data_root)
    normal = data.train_images[data.train_labels == 0][: args.trial_images]
    anomalies = data.train_images[data.train_labels == 1][: len(normal) // 20]
    n_lab = len(normal) // 20
    images = torch.cat([normal, anomalies])
    kind = torch.zeros(len(images), dtype=torch.int8)
    kind[:n_lab], kind[len(normal):] = TrainSet.NORMAL, TrainSet.ANOMALY
    load_before = os.getloadavg()

    steps, setup = {}, {}
    for name, hot in (("eager", HotPath()), ("compiled", HotPath(compile=True, fixed_shapes=True))):
        t0 = time.perf_counter()
        steps[name] = Step(hot, images, kind, args.batch)
        steps[name].run(2)  # warm-up; compiling happens here
        setup[name] = round(time.perf_counter() - t0, 1)
        print(f"built and warmed up {name} in {setup[name]} s", flush=True)
    times = {k: [] for k in steps}
    for rnd in range(args.repeats):
        for name, s in steps.items():
            times[name].append(s.run(args.steps))
            print(f"round {rnd + 1}: {name:9s} {times[name][-1]:.3f} s/step", flush=True)
    step_ratio = statistics.median(e / c for e, c in zip(times["eager"], times["compiled"], strict=True))

    train, test = TrainSet(images, kind), data.test_images[:1000]
    trials = []
    for compiled in (True, False, True, False):
        trials.append({"compiled_option": compiled, **trial(train, test, args.trial_epochs, compiled)})
        print(f"trial compiled={compiled}: {trials[-1]['seconds']:.1f} s", flush=True)
    precision = steps["eager"].method.precision
    record = {
        "benchmark": "compile_cpu",
        "device": f"cpu: {os.cpu_count()} cores, {args.threads} thread(s)",
        "torch": torch.__version__,
        "precision": precision.name + (" channels_last" if precision.channels_last else ""),
        "step": {
            "model": "HSCL small-profile step: resnet18_narrow + head, 2 views x 4 rotations, Eq. 8, Adam",
            "batch_images": args.batch, "rows": 8 * args.batch, "steps_per_round": args.steps,
            "repeats": args.repeats, "setup_and_warmup_seconds": setup,
            "seconds_per_step": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "rounds_seconds_per_step": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "last_loss": {k: round(s.last_loss, 4) for k, s in steps.items()},
            "compiled_speedup_over_eager": round(step_ratio, 3),
        },
        "trial": {
            "what": f"HSCL small profile, {args.trial_epochs} epoch(s) on {len(images)} CIFAR-10 images "
                    f"(class 0 + 5 % labeled anomalies of class 1), scored on 1,000 test images",
            "runs_in_order": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in t.items()} for t in trials],
            # each compiled trial against the eager trial run right after it (the load moves between pairs)
            "compiled_first_over_eager": round(trials[0]["seconds"] / trials[1]["seconds"], 3),
            "compiled_reused_over_eager": round(trials[2]["seconds"] / trials[3]["seconds"], 3),
            "note": "the CPU default is unchanged by issue 24 (eager, near-equal batches; bit-identical scores), so "
                    "'before' and 'after' are the same trial; the compiled option is measured against it",
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    out = ROOT / "benchmarks" / "records" / "compile_cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
