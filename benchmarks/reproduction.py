"""Evidence on CIFAR-10: run the `small` profile on a slice of the papers' grids, then write
docs/reproduction.md from the result store. One command does both; re-running it trains only what is
missing (the sweeps skip finished trials), and `--report-only` rewrites the document from the store.

    tar xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp       # or the official files under --data-root
    python benchmarks/reproduction.py --data-root /tmp --dataset cifar10-jpeg
    python benchmarks/reproduction.py --report-only          # the document again, from the committed store

The slice (each step is one `python -m orchestrator.sweep` call, in this order; seed 0 of everything first,
so a run cut short still gives every table):
1. scenario2 (HSCL Table 2), HSCL and CSI: all 10 normal classes, one known anomaly class each
   ((normal + 1) mod 10), gamma_p in {0, .10}, gamma_l = .05, seed 0.
2. the same grid for the raw-pixel baselines OC-SVM, IF and KDE, and for Deep SVDD and Deep SAD, seed 0.
3. step 1 again with seeds 1 and 2 (the relations between HSCL and CSI are tested over 3 seeds).
4. milconvex-ablation (MIL-convex Table 3, gamma_p = .05) on the normal classes --mil-classes (default 0-4),
   seed 0.
5. contamination (MIL-convex Table 1) at gamma_p = .10 for MIL-convex, CSI and MSC on the same classes, seed 0;
6. and at gamma_p = .02 (seed 0) for the degradation from .02 to .10.
7-10. CADet, into its own store (--cadet-store, no per-sample scores): Table 1 (rejection), Table 4
   (adversarial), Table 3 (ood-detection; MNIST's test files as far OOD, read from --mnist-root) and Figure 2
   (cadet-transforms), seed 0; 11-13: Tables 3, 4 and 1 again with seeds 1 and 2. Each is two trials
   (contrastive and supervised features) of 45-90 min on one CPU thread.
14-15. steps 4 and 5 again with seeds 1 and 2 (the MIL-convex relations are tested over 3 seeds).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The store behind docs/reproduction.md is committed (one small Parquet file per trial), so the document
# regenerates from a fresh clone and a later run only adds what is missing. The per-sample scores (about
# 100 KB a trial) stay out of git, in runs/.
DEFAULT_STORE = "benchmarks/records/reproduction"
DEFAULT_CADET_STORE = "benchmarks/records/cadet"  # CADet's scenarios (a section of the document when present)
DEFAULT_SCORES = "runs/reproduction-scores"

TABLE_2 = ["--anomaly-classes", "next", "--gamma-p", "0,0.1"]
STEPS = [
    ("scenario2", ["--methods", "hscl,csi", *TABLE_2, "--seeds", "0"]),
    ("scenario2", ["--methods", "ocsvm,iforest,kde,deepsvdd,deepsad", *TABLE_2, "--seeds", "0"]),
    ("scenario2", ["--methods", "hscl,csi", *TABLE_2, "--seeds", "1,2"]),
    ("milconvex-ablation", ["--seeds", "0"]),
    ("contamination", ["--methods", "milconvex,csi,msc", "--gamma-p", "0.1", "--seeds", "0"]),
    ("contamination", ["--methods", "milconvex,csi,msc", "--gamma-p", "0.02", "--seeds", "0"]),
    *((name, ["--seeds", "0"]) for name in ("rejection", "adversarial", "ood-detection", "cadet-transforms")),
    *((name, ["--seeds", "1,2"]) for name in ("ood-detection", "adversarial", "rejection")),
    # Seeds 1 and 2 of steps 4 and 5, last so that a run cut short has seed 0 of every MIL-convex table first.
    ("milconvex-ablation", ["--seeds", "1,2"]),
    ("contamination", ["--methods", "milconvex,csi,msc", "--gamma-p", "0.1", "--seeds", "1,2"]),
]
CADET = {"rejection", "adversarial", "ood-detection", "cadet-transforms"}  # steps that write the CADet store


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=DEFAULT_STORE, help=f"result store (default {DEFAULT_STORE})")
    p.add_argument("--scores-store", default=None,
                   help=f"per-sample scores (default: beside --store; {DEFAULT_SCORES} for the default store)")
    p.add_argument("--dataset", default=None, help="CIFAR-10 name or ImageFolder tree (default: cifar10)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset")
    p.add_argument("--profile", default="small")
    p.add_argument("--normal-classes", default=None, help="normal classes of the scenario2 slice (default: all)")
    p.add_argument("--mil-classes", default="0,1,2,3,4", help="normal classes of the MIL-convex sweeps (steps 4-5)")
    p.add_argument("--steps", default=None, help="run only these steps (1-based, e.g. 2,3; default: all)")
    p.add_argument("--max-concurrent", type=int, default=None, help="passed to every sweep")
    p.add_argument("--out", default=str(ROOT / "docs" / "reproduction.md"))
    p.add_argument("--cadet-store", default=None,
                   help=f"CADet scenarios' store for the document's CADet section (default {DEFAULT_CADET_STORE} "
                        "with the default store)")
    p.add_argument("--mnist-root", default=None,
                   help="folder holding MNIST/raw/t10k-*-ubyte.gz, CADet Table 3's far OOD (default: --data-root)")
    p.add_argument("--report-only", action="store_true", help="write the document from the store, train nothing")
    args = p.parse_args(argv)
    # The sweeps run from the repo root, so paths the caller typed are made absolute against the caller's
    # folder first; the defaults live in the repo wherever the script is called from.
    default_store = args.store == DEFAULT_STORE
    store = str(ROOT / DEFAULT_STORE) if default_store else str(Path(args.store).resolve())
    scores = args.scores_store or (str(ROOT / DEFAULT_SCORES) if default_store else None)
    scores = str(Path(scores).resolve()) if scores else None
    data_root = str(Path(args.data_root).resolve()) if args.data_root else None
    cadet = str(Path(args.cadet_store).resolve()) if args.cadet_store else (
        str(ROOT / DEFAULT_CADET_STORE) if default_store else None)

    if not args.report_only:
        common = ["--profile", args.profile, "--storage", store]
        common += ["--scores-storage", scores] if scores else []
        common += ["--dataset", args.dataset] if args.dataset else []
        common += ["--data-root", data_root] if data_root else []
        common += ["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []
        wanted = {int(x) for x in args.steps.split(",")} if args.steps else set(range(1, len(STEPS) + 1))
        for step, (scenario, extra) in enumerate(STEPS, start=1):
            if step not in wanted:
                continue
            if scenario in CADET:
                if not cadet:
                    print(f"  step {step} ({scenario}) skipped: no --cadet-store", flush=True)
                    continue
                cmd = [sys.executable, "-m", "orchestrator.sweep", scenario, *cadet_args(args, data_root, cadet),
                       *extra]
            else:
                if scenario in ("milconvex-ablation", "contamination"):
                    extra = [*extra, "--normal-classes", args.mil_classes]
                elif args.normal_classes:
                    extra = [*extra, "--normal-classes", args.normal_classes]
                cmd = [sys.executable, "-m", "orchestrator.sweep", scenario, *common, *extra]
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.monotonic()
            rc = subprocess.call(cmd, cwd=ROOT)
            print(f"  exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
            if rc != 0:
                return rc
    sys.path.insert(0, str(ROOT))
    from orchestrator.report.reproduction import write_report

    path = write_report(store, args.out, profile=args.profile, cadet_storage=cadet)
    print(f"wrote {path}")
    return 0


def cadet_args(args, data_root: str | None, cadet_store: str) -> list[str]:
    """A CADet sweep's arguments: the dataset by its full path (so --data-root is free to name MNIST's test
    files, Table 3's far OOD), the CADet store, no per-sample scores."""
    dataset = args.dataset
    if dataset and data_root and not Path(dataset).is_absolute():
        dataset = str(Path(data_root) / dataset) if (Path(data_root) / dataset).is_dir() else dataset
    mnist = str(Path(args.mnist_root).resolve()) if args.mnist_root else data_root
    out = ["--profile", args.profile, "--storage", cadet_store, "--no-scores"]
    out += ["--dataset", dataset] if dataset else []
    out += ["--data-root", mnist] if mnist else []
    out += ["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []
    return out


if __name__ == "__main__":
    raise SystemExit(main())
