"""Trials per minute of a quick scenario2 slice with 1 vs 2 trials at once (CPU), or 1, 2, 4 per GPU.

    python benchmarks/concurrency.py                 # CPU: about 2 minutes on 2 cores
    python benchmarks/concurrency.py --repeats 2     # ABBA order, for a busy machine
    python benchmarks/concurrency.py -- --set epochs=20      # extra sweep arguments after --

Runs the real command, each time into a fresh temporary store:

    python -m orchestrator.sweep scenario2 --methods hscl --normal-classes 0,1 --anomaly-classes 2,3,4 \\
        --storage <tmp> --max-concurrent K                   (CPU: K = 1 and 2, 1 CPU per trial)
        --storage <tmp> --max-concurrent 1 --cpus-per-trial 2  (CPU, with --two-threads: one trial, 2 threads)
        --storage <tmp> --gpus-per-trial G                   (CUDA present: G = 1, 0.5, 0.25)

18 HSCL trials (2 normal x 3 known-anomaly classes x 3 gamma_p, quick profile: digits, small CNN).
Two rates per run: "wall" = trials / the command's whole wall time (Ray start, data load, the Tune
loop, the end-of-sweep table: what a user waits for), and "steady" = (trials - 1) / the time from
the first trial's end to the last one's (the rows' finished_at): the rate once the pool runs.
The configurations run in turns (ABBA with --repeats 2), so a shared machine's load hits all alike;
the record carries the load average. Writes benchmarks/records/concurrency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
SLICE = ["--methods", "hscl", "--normal-classes", "0,1", "--anomaly-classes", "2,3,4"]


def configs(cuda: bool, two_threads: bool) -> dict[str, list[str]]:
    if cuda:
        return {f"gpus_per_trial_{g}": ["--gpus-per-trial", str(g)] for g in (1, 0.5, 0.25)}
    plan = {"cpu_1_concurrent": ["--max-concurrent", "1"], "cpu_2_concurrent": ["--max-concurrent", "2"]}
    if two_threads:  # one trial on both cores (torch with 2 intra-op threads) instead of two trials
        plan["cpu_1_concurrent_2_threads"] = ["--max-concurrent", "1", "--cpus-per-trial", "2"]
    return plan


def run_sweep(flags: list[str], extra: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="adsweep-conc-"))
    cmd = [sys.executable, "-m", "orchestrator.sweep", "scenario2", *SLICE, "--storage", str(tmp / "results"),
           *flags, *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    concurrent = int(re.search(r"(\d+) at a time", text).group(1))
    rows = pd.read_parquet(tmp / "results")
    shutil.rmtree(tmp, ignore_errors=True)
    n = len(rows)
    ends = pd.to_datetime(rows["finished_at"]).sort_values()
    span = (ends.iloc[-1] - ends.iloc[0]).total_seconds()
    return {
        "command": " ".join(cmd[1:]).replace(str(tmp), "<tmp>"),
        "trials": n,
        "ok": int((rows["status"] == "ok").sum()),
        "concurrent": concurrent,
        "wall_seconds": round(wall, 1),
        "trials_per_minute_wall": round(n / wall * 60, 2),
        "trials_per_minute_steady": round((n - 1) / span * 60, 2) if span > 0 else None,
        "mean_train_seconds": round(float(rows["train_seconds"].mean()), 2),
        "mean_trial_seconds": round(float(rows["trial_seconds"].mean()), 2),
        "loadavg_1min_at_start": round(load, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the order alternates (ABBA)")
    parser.add_argument("--two-threads", action="store_true",
                        help="also run 1 trial at a time with --cpus-per-trial 2 (slow on a busy machine)")
    parser.add_argument("extra", nargs="*", help="extra sweep arguments (after --), e.g. --set epochs=20")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    plan = configs(cuda, args.two_threads)
    names = list(plan)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            res = run_sweep(plan[name], args.extra)
            runs[name].append(res)
            print(f"round {r + 1} {name:28s} {res['concurrent']} at a time: {res['trials']} trials in "
                  f"{res['wall_seconds']:.0f} s, {res['trials_per_minute_wall']:.1f} trials/min wall, "
                  f"{res['trials_per_minute_steady']} steady, mean train {res['mean_train_seconds']:.2f} s "
                  f"(load {res['loadavg_1min_at_start']:.1f})", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    base = names[0]
    ratios = {}
    for name in names[1:]:
        for key in ("trials_per_minute_wall", "trials_per_minute_steady"):
            ratios[f"{name}/{base} {key.removeprefix('trials_per_minute_')}"] = round(
                statistics.median(a[key] / b[key] for a, b in zip(runs[name], runs[base], strict=True)), 3)
    record = {
        "benchmark": "concurrency",
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "slice": " ".join(["scenario2", *SLICE, *args.extra]),
        "repeats": args.repeats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "median": {name: {k: med(name, k) for k in ("concurrent", "trials_per_minute_wall",
                                                    "trials_per_minute_steady", "mean_train_seconds")}
                   for name in names},
        "ratios": ratios,
        "runs": runs,
    }
    out = ROOT / "benchmarks" / "records" / "concurrency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}")
    print(f"load average (1 min) {load_before[0]:.1f} before, {record['loadavg_after'][0]:.1f} after, "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
