"""Does MIL-convex's anomaly discriminative learning find the pollution at this scale? A diagnostic, not a test.

    python benchmarks/milconvex_adl.py --dataset cifar10-jpeg --data-root /tmp --profile small \
        --normal-classes 0,3 --gamma-p 0.05 [--epochs 3] [--seed 0]

Trains the full method (variant `all` of the milconvex-ablation scenario) as the sweep does, through the
one_class experiment, and records, at every step, which of the batch's images ADL put in S_a (Sec. 3.2.2, the
lowest pseudo-normality). Against the true pollution of the training set it reports S_a's precision per epoch
next to the base rate (the batch's share of pollution). The method never sees the truth: it is read only here.

Only the validation part of the training data is scored (`evaluate_test=False`): nothing here looks at the
test split, so a run can inform a choice. Prints a table and writes benchmarks/records/milconvex_adl.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from methods.milconvex import MILConvex
from orchestrator.data.datasets import DataSource
from orchestrator.experiments import one_class
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.planner import expand

ROOT = Path(__file__).resolve().parent.parent


class SaRecorder:
    """Wraps MILConvex.step_loss and MILConvex.pseudo_labels: for every step, the epoch, the batch's rows of the
    training set and ADL's S_a mask over them."""

    def __init__(self):
        self.steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._rows: tuple[int, torch.Tensor] | None = None
        self._originals = MILConvex.step_loss, MILConvex.pseudo_labels

    def __enter__(self):
        step_loss, pseudo_labels = self._originals
        recorder = self

        def recording_step_loss(method, images, kind):
            inner = step_loss(method, images, kind)

            def step(forward, rows, epoch, g):
                recorder._rows = (epoch, rows.detach().cpu().clone())
                return inner(forward, rows, epoch, g)
            return step

        def recording_pseudo_labels(method, x):
            s, abnormal = pseudo_labels(method, x)
            epoch, rows = recorder._rows
            recorder.steps.append((epoch, rows, abnormal.detach().cpu().clone()))
            return s, abnormal

        MILConvex.step_loss, MILConvex.pseudo_labels = recording_step_loss, recording_pseudo_labels
        return self

    def __exit__(self, *exc):
        MILConvex.step_loss, MILConvex.pseudo_labels = self._originals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    p.add_argument("--normal-classes", default="0")
    p.add_argument("--gamma-p", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial gets 1 CPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "records" / "milconvex_adl.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    stored, data = DataSource(args.data_root).add(args.dataset)
    data.check(stored)
    labels = data.load(stored).train_labels
    overrides = {"epochs": args.epochs} if args.epochs else None
    records = []
    for normal in [int(c) for c in args.normal_classes.split(",")]:
        trials = expand(SCENARIOS["milconvex-ablation"], PROFILES[args.profile], num_classes=10, dataset=stored,
                        normal_classes=[normal], gamma_p=[args.gamma_p], seeds=[args.seed], overrides=overrides)
        (trial,) = [t for t in trials if t.variant == "all"]
        polluted = labels[one_class.training_set(trial, data)[1].unlabeled] != normal
        start = time.perf_counter()
        with SaRecorder() as rec:
            row = one_class.run(trial, data, evaluate_test=False)
        hits, sizes, seen, pollution = defaultdict(int), defaultdict(int), defaultdict(int), defaultdict(int)
        for epoch, rows, mask in rec.steps:
            hits[epoch] += int(polluted[rows[mask]].sum())
            sizes[epoch] += int(mask.sum())
            pollution[epoch] += int(polluted[rows].sum())
            seen[epoch] += len(rows)
        per_epoch = [{"epoch": e, "sa_precision": hits[e] / sizes[e], "base_rate": pollution[e] / seen[e],
                      "sa_recall": hits[e] / max(pollution[e], 1)} for e in sorted(sizes)]
        records.append({"normal_class": normal, "gamma_p": args.gamma_p, "seed": args.seed,
                        "epochs": row["epochs"], "auroc_val": row["auroc_val"], "per_epoch": per_epoch,
                        "seconds": round(time.perf_counter() - start, 1)})
        for e in per_epoch:
            print(f"class {normal}  epoch {e['epoch']}: S_a precision {e['sa_precision']:.3f} "
                  f"(base rate {e['base_rate']:.3f}), recall {e['sa_recall']:.3f}")
        print(f"class {normal}: validation AUROC {row['auroc_val']:.3f}, {records[-1]['seconds']} s")

    out = {"dataset": stored, "profile": args.profile, "device": f"cpu:{torch.get_num_threads()}threads",
           "trials": records}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
