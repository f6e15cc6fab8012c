"""The whole quick scenario2 on this machine: wall time, peak memory, Ray's cost.

    python benchmarks/quick_sweep.py                             # 7 methods, 1,890 trials: ~11 min on 2 cores
    python benchmarks/quick_sweep.py --methods hscl              # HSCL alone, 270 trials
    python benchmarks/quick_sweep.py --baseline ../old-checkout  # the same sweep on another checkout first,
                                                                 # then this one: the ratio of the two

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
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process, cpu: dict[int, tuple[str, float]]) -> int:
    """Resident memory of the whole tree; also notes each process's role and CPU seconds so far in ``cpu``."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            times = p.cpu_times()
            cpu[p.pid] = (role(p, proc), times.user + times.system)
        except psutil.Error:
            pass
    return total


def role(p: psutil.Process, driver: psutil.Process) -> str:
    """driver, trial process (Ray's worker actors) or Ray daemon (GCS, raylet, dashboard agents, log monitor)."""
    if p.pid == driver.pid:
        return "driver"
    cmdline = " ".join(p.cmdline())
    return "trial processes" if "default_worker.py" in cmdline or p.name().startswith("ray::") else "ray daemons"


def cpu_model() -> str:
    """The CPU's model name and whether it computes bf16 natively: wall times compare only on the same CPU."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from methods.trainer import cpu_has_bf16

    return f"{name} ({'native' if cpu_has_bf16() else 'no'} bf16)"


def measure(code: Path, extra: list[str]) -> dict:
    """Run the sweep with the code of checkout `code` (its own orchestrator/ and methods/) into a fresh store."""
    store = Path(tempfile.mkdtemp(prefix="adsweep-bench-")) / "results"
    cmd = [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--storage", str(store), *extra]
    env = {**os.environ, "PYTHONPATH": str(code)}  # Ray's workers inherit it: they import the same checkout
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds at its last sample)
    output = []
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps, cpu))
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
    packed = re.search(r"up to (\d+) a Ray Tune trial", text)
    cpu_by_role: dict[str, float] = {}
    for name, seconds in cpu.values():
        cpu_by_role[name] = round(cpu_by_role.get(name, 0.0) + seconds, 1)

    rows = pd.read_parquet(store)
    ok = rows[rows["status"] == "ok"]
    own = float(rows["trial_seconds"].sum())
    return {
        "code": str(code),
        "command": " ".join(cmd[1:]).replace(str(store), "STORE"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "trials": len(rows),
        "ok": len(ok),
        "concurrent": concurrent,
        "points_per_tune_trial": int(packed.group(1)) if packed else 1,
        # CPU seconds per role (sampled every 0.2 s, so a process's last 0.2 s may be missing): what the driver
        # and Ray's daemons take from the trials on a machine with as many cores as trials at once.
        "cpu_seconds_by_role": cpu_by_role,
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "sum_trial_seconds": round(own, 1),
        "sum_train_seconds": round(float(rows["train_seconds"].sum()), 1),
        "mean_trial_seconds": round(float(rows["trial_seconds"].mean()), 2),
        "efficiency": round(own / (wall * concurrent), 3),
        "sum_trial_seconds_by_method": {
            str(k): round(v, 1) for k, v in rows.groupby("method")["trial_seconds"].sum().items()
        },
        "mean_auroc_pooled_by_method": {
            str(k): round(v, 4) for k, v in ok.groupby("method")["auroc_pooled"].mean().items()
        },
        # The validation AUROC (held-out training images): a speed setting that costs quality shows here first.
        "mean_auroc_val_by_method": {
            str(k): round(v, 4) for k, v in ok.groupby("method")["auroc_val"].mean().items()
        },
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=None, help="another checkout to measure first, for a ratio")
    parser.add_argument("extra", nargs="*", help="extra sweep arguments, e.g. -- --methods hscl")
    args = parser.parse_args()
    runs = [measure(Path(args.baseline).resolve(), args.extra)] if args.baseline else []
    runs.append(measure(ROOT, args.extra))
    record = {"runs": runs}
    if args.baseline:
        record["wall_ratio_this_over_baseline"] = round(runs[1]["wall_seconds"] / runs[0]["wall_seconds"], 3)
    out = ROOT / "benchmarks" / "records" / "quick_sweep.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    for r in runs:
        print(f"{r['code']}: wall {r['wall_seconds'] / 60:.1f} min, peak {r['peak_rss_gb']:.2f} GB, "
              f"efficiency {r['efficiency']:.3f}, up to {r['points_per_tune_trial']} points a Tune trial, "
              f"CPU s {r['cpu_seconds_by_role']}")


if __name__ == "__main__":
    main()
