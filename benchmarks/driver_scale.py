"""The sweep driver as the grid grows: wall time per trial and the driver process's peak memory.

    python benchmarks/driver_scale.py [--seeds 1,10] [--trials-per-tuner 500] [--normal-classes 0]

Runs ``python -m orchestrator.sweep scenario2 --methods iforest`` (quick profile: digits, a cheap
method, so the driver's own cost shows) into a fresh temporary store at each number of seeds,
smallest first, in one run: 1 seed = 270 trials, 10 seeds = 2,700. The driver's peak resident
memory is its own ``ru_maxrss`` (not Ray's processes), read at exit by a small wrapper. Per trial:
wall time of the whole command / trials, and the driver's overhead per trial = (wall - the
trials' own seconds / concurrency) / trials. Goal (issue 23): at the larger size both within
1.2x of the smaller. Writes benchmarks/records/driver_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
# Runs the sweep as __main__ and prints the process's own peak RSS when it ends.
WRAPPER = """
import atexit, resource, runpy, sys
atexit.register(lambda: print(f"DRIVER_MAXRSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True))
sys.argv = ["orchestrator.sweep", *sys.argv[1:]]
runpy.run_module("orchestrator.sweep", run_name="__main__")
"""


def one(seeds: int, trials_per_tuner: int, max_concurrent: int, normal_classes: str | None) -> dict:
    store = Path(tempfile.mkdtemp(prefix="adsweep-driver-")) / "results"
    cmd = [sys.executable, "-c", WRAPPER, "scenario2", "--methods", "iforest", "--seeds",
           ",".join(str(s) for s in range(seeds)), "--storage", str(store), "--no-scores",
           "--max-concurrent", str(max_concurrent), "--trials-per-tuner", str(trials_per_tuner)]
    if normal_classes:  # a slice of the grid, for a loaded machine: same 10x ratio at a tenth of the trials
        cmd += ["--normal-classes", normal_classes]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    rows = pd.read_parquet(store)
    trials = len(rows)
    concurrent = int(re.search(r"(\d+) at a time", run.stdout).group(1))
    own = float(rows["trial_seconds"].sum())
    maxrss_kb = int(re.search(r"DRIVER_MAXRSS_KB=(\d+)", run.stdout).group(1))
    return {"seeds": seeds, "trials": trials, "ok": int((rows["status"] == "ok").sum()), "concurrent": concurrent,
            "batches": int(re.search(r"in (\d+) batch", run.stdout).group(1)), "wall_s": round(wall, 1),
            "wall_per_trial_s": round(wall / trials, 4), "trials_own_s": round(own, 1),
            "overhead_per_trial_s": round((wall - own / concurrent) / trials, 4),
            "driver_peak_rss_mb": round(maxrss_kb / 1024, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,10", help="numbers of seeds to run, smallest first (270 trials each)")
    parser.add_argument("--trials-per-tuner", type=int, default=500)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--normal-classes", default=None, help="e.g. 0: 27 trials a seed instead of 270")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.seeds.split(","))
    load_before = os.getloadavg()
    results = []
    for seeds in sizes:
        results.append(one(seeds, args.trials_per_tuner, args.max_concurrent, args.normal_classes))
        print(json.dumps(results[-1]), flush=True)
    small, large = results[0], results[-1]
    ratios = {"wall_per_trial": round(large["wall_per_trial_s"] / small["wall_per_trial_s"], 3),
              "overhead_per_trial": round(large["overhead_per_trial_s"] / small["overhead_per_trial_s"], 3),
              "driver_peak_rss": round(large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3)}
    print(f"{large['trials']} vs {small['trials']} trials: wall per trial x{ratios['wall_per_trial']}, "
          f"driver overhead per trial x{ratios['overhead_per_trial']}, driver peak RSS x{ratios['driver_peak_rss']} "
          "(goal: <= 1.2)")
    record = {"benchmark": "driver_scale", "method": "iforest", "scenario": "scenario2", "profile": "quick",
              "trials_per_tuner": args.trials_per_tuner, "normal_classes": args.normal_classes, "runs": results,
              "ratios_large_over_small": ratios,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = ROOT / "benchmarks" / "records" / "driver_scale.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
