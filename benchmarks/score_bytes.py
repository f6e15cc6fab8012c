"""Bytes per trial of the per-sample score store, for CIFAR-10's 10,000 test images.

    python benchmarks/score_bytes.py

Writes one real score file (float32 scores from a smooth distribution, CIFAR-10's test labels
layout: 1,000 images of each class) with the store's own writer and reports its size.
Writes benchmarks/records/score_bytes.json.
"""

import json
import tempfile
from pathlib import Path

import numpy as np

from orchestrator.store import ScoreStore

ROOT = Path(__file__).resolve().parent.parent


def main():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 1000)
    scores = rng.normal(size=10_000) + (labels != 0)  # continuous scores: no easy compression
    row = {"trial_key": "0" * 20, "profile": "paper", "scenario": "scenario2", "method": "hscl"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(ScoreStore(tmp).write(row, scores, labels, normal_class=0))
        size = path.stat().st_size
    record = {"test_images": 10_000, "bytes_per_trial": size, "bytes_per_image": round(size / 10_000, 2)}
    out = ROOT / "benchmarks" / "records" / "score_bytes.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
