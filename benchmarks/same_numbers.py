"""Do two result stores hold the same numbers? For checking that a change of structure changed no result.

    python benchmarks/same_numbers.py BEFORE_STORE AFTER_STORE [--scenarios milconvex-ablation,hscl-ablation]

Pairs the ok rows of both stores by grid point (scenario, method, variant, classes, ratios, seed; not by
trial key, which changes when the trial's layout does) and reports, per scenario and variant: pairs,
rows whose AUROC is bit-identical, the largest absolute difference, both means, and the paired Wilcoxon p
of the differences where any differ. Writes benchmarks/records/same_numbers.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

POINT = ["scenario", "method", "variant", "normal_class", "anomaly_class", "gamma_p", "gamma_l", "seed"]
ROOT = Path(__file__).resolve().parent.parent


def ok_rows(store: str, scenarios: list[str] | None) -> pd.DataFrame:
    rows = pd.read_parquet(store)
    rows = rows[rows["status"] == "ok"]
    if scenarios:
        rows = rows[rows["scenario"].isin(scenarios)]
    return rows.astype({"scenario": str, "method": str}).fillna({"variant": "-", "anomaly_class": -1})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--scenarios", default=None, help="comma-separated (default: all)")
    p.add_argument("--metric", default="auroc_pooled")
    args = p.parse_args(argv)
    scenarios = args.scenarios.split(",") if args.scenarios else None
    a, b = ok_rows(args.before, scenarios), ok_rows(args.after, scenarios)
    pairs = a[[*POINT, args.metric]].merge(b[[*POINT, args.metric]], on=POINT, how="inner",
                                           suffixes=("_before", "_after"))
    lines = []
    for (scenario, variant), g in pairs.groupby(["scenario", "variant"], sort=True):
        x, y = g[f"{args.metric}_before"].to_numpy(), g[f"{args.metric}_after"].to_numpy()
        diff = y - x
        lines.append({"scenario": scenario, "variant": variant, "pairs": len(g), "identical": int((diff == 0).sum()),
                      "max_abs_diff": float(np.abs(diff).max()), "mean_before": round(100 * x.mean(), 2),
                      "mean_after": round(100 * y.mean(), 2),
                      "wilcoxon_p": float(wilcoxon(diff).pvalue) if np.any(diff != 0) else None})
    table = pd.DataFrame(lines)
    print(table.to_string(index=False))
    record = {"before_rows": len(a), "after_rows": len(b), "paired": len(pairs),
              "identical": int(table["identical"].sum()) if len(table) else 0, "by_variant": lines}
    print(f"{record['paired']} paired grid points ({len(a)} rows before, {len(b)} after), "
          f"{record['identical']} bit-identical")
    out = ROOT / "benchmarks" / "records" / "same_numbers.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if record["paired"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
