"""The whole quick scenario2 for HSCL (270 trials) on this machine: wall time, peak memory, Ray's cost.

    python benchmarks/quick_sweep.py            # about 10 minutes on 2 cores

Runs the real command (`python -m orchestrator.sweep scenario2`) into a fresh store, samples the
resident memory of the whole process tree (driver, Ray's GCS and raylet, trial actors) every
0.2 s, and reads the store afterwards. Ray's cost is reported as the efficiency

    sum of the trials' own times (split + train + score, measured inside each trial)
    / (sweep wall time x trials running at once)

which is 1.0 when Ray adds nothing. Budgets (issue "Foundation"): wall <= 10 min, efficiency >= 0.8,
peak memory < 6 GB. Writes benchmarks/records/quick_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("extra", nargs="*", help="extra sweep arguments, e.g. --normal-classes 0")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="adsweep-bench-")) / "results"
    cmd = [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", "--storage", str(store),
           *args.extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    output = []
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        line = proc.stdout.readline()
        while line:
            output.append(line)
            print(line, end="", flush=True)
            line = proc.stdout.readline()
        time.sleep(0.2)
    output.append(proc.stdout.read() or "")
    wall = time.perf_counter() - start
    text = "".join(output)
    concurrent = int(re.search(r"(\d+) at a time", text).group(1))

    rows = pd.read_parquet(store)
    ok = rows[rows["status"] == "ok"]
    own = float(rows["trial_seconds"].sum())
    record = {
        "command": " ".join(cmd[1:]),
        "cpus": os.cpu_count(),
        "trials": len(rows),
        "ok": len(ok),
        "concurrent": concurrent,
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "sum_trial_seconds": round(own, 1),
        "sum_train_seconds": round(float(rows["train_seconds"].sum()), 1),
        "mean_trial_seconds": round(float(rows["trial_seconds"].mean()), 2),
        "efficiency": round(own / (wall * concurrent), 3),
        "mean_auroc_pooled_by_gamma_p": {
            str(k): round(v, 4) for k, v in ok.groupby("gamma_p")["auroc_pooled"].mean().items()
        },
    }
    out = ROOT / "benchmarks" / "records" / "quick_sweep.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"wall {wall / 60:.1f} min (budget 10), peak {peak / 1e9:.2f} GB (budget 6), "
          f"efficiency {record['efficiency']:.2f} (budget >= 0.8)")


if __name__ == "__main__":
    main()
