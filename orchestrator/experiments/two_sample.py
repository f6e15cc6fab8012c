"""two_sample: CADet Sec. 4.2 (Tables 1-2). MMD and MMD-CC two-sample tests (methods/mmd.py) with the
learned cosine similarity between a small in-distribution sample and a sample of each shift, for sample
sizes 3 to 20. Per sample size and shift, `n_samplings` draws of disjoint S_P^(1), S_P^(2) and a clean S_Q'
from the in-distribution test images, and of S_Q from the shift; each test gives a p-value from `n_perm`
permutations. A row (shift x size x statistic) holds the detection AUROC of 1 - p (clean S_Q' = negatives,
shifted S_Q = positives) in `auroc_pooled`, the clean samples' rejection rate at alpha (the test's false
positive rate) in `fpr_at_alpha`, and in `extra` the shifted samples' rejection rate (Table 1's "rejection
rate of h_0") and the AUROC of the raw MMD estimate. Shifts: `unknown` (the dataset's other classes), `pgd`
(PGD examples against a classifier the trial trains on the in-distribution data) and other datasets by name
(resized to the in-distribution shape; also the sets orchestrator/data/datasets.load_shift_images reads without a
training split: cifar10.1, imagenet-o, inaturalist, images:/path, MNIST from its test files); a dataset this
machine does not have is skipped and named in every row's `extra.skipped_shifts`.

Measured, quick profile, seeds 0-2 (before the one-trainer refactor; mean over seeds): AUROC (%) at n = 3 / 5 /
10 / 20: unknown classes 5-9, MMD-CC + contrastive 64.5 / 67.6 / 86.1 / 95.4, MMD-CC + supervised 53.3 / 65.3 /
75.6 / 87.8; PGD 49.9 / 49.1 / 52.7 / 53.9 (contrastive) and 49.2 / 56.9 / 58.4 / 68.0 (supervised).
Rejection rates at alpha .05 on clean samples 0.04-0.07.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from methods.augment import to_float
from methods.mmd import cosine_kernel, mmd_cc_null, mmd_test, mmd_u2, permutation_p_value, samplings_per_batch
from orchestrator.data.datasets import DatasetError, DataSource, load_shift_images
from orchestrator.data.splits import stable_seed
from orchestrator.experiments.attacks import attack
from orchestrator.experiments.cadet_setup import (
    Settings,
    add_shifts,
    auroc,
    generator,
    measured,
    prepare,
    profile_settings,
    settings_of,
    summary_extra,
    unknown_classes,
)
from orchestrator.experiments.kind import Kind
from orchestrator.grid.trial import Trial


def two_sample_draws(f_clean: torch.Tensor, shifted: dict[str, torch.Tensor], n: int, s: Settings,
                     seed_parts: tuple) -> dict[str, dict[str, np.ndarray]]:
    """For sample size n: n_samplings draws of disjoint S_P^(1), S_P^(2), S_Q' (clean) from f_clean (N, D) and
    of S_Q from each shifted pool (M, D). -> {"clean" | shift: {"MMD": p (S,), "MMD-CC": p, "MMD est": ...}}.
    Every draw's tests run at once, in batches of at most s.chunk draws (fewer where n is large, so memory stays
    under methods/mmd.MEMORY_BUDGET), all permutations in one tensor op."""
    dev = f_clean.device
    gen = generator(dev, "draws", *seed_parts, n)
    perm_gen = generator(dev, "permutations", *seed_parts, n)
    out: dict[str, dict[str, list]] = {}

    def add(key, stat, value):
        out.setdefault(key, {}).setdefault(stat, []).append(value.cpu())

    batch = samplings_per_batch(n, s.n_perm, s.chunk)
    for start in range(0, s.n_samplings, batch):
        m = min(batch, s.n_samplings - start)
        pick = torch.rand(m, f_clean.shape[0], generator=gen, device=dev).argsort(1)[:, : 3 * n]  # no replacement
        p1, p2, q0 = (f_clean[pick[:, k * n:(k + 1) * n]] for k in range(3))  # (m, n, D) each
        cc_null = mmd_cc_null(p1, p2, s.n_perm, perm_gen)  # Algorithm 1's null: clean samples only
        samples = {"clean": q0}
        for name, pool in shifted.items():
            samples[name] = pool[torch.rand(m, pool.shape[0], generator=gen, device=dev).argsort(1)[:, :n]]
        for name, q in samples.items():
            p_mmd, est, _ = mmd_test(p1, q, s.n_perm, perm_gen)
            est_cc = mmd_u2(cosine_kernel(p1), cosine_kernel(q), cosine_kernel(p1, q))
            add(name, "MMD", p_mmd)
            add(name, "MMD est", est)
            add(name, "MMD-CC", permutation_p_value(est_cc, cc_null))
            add(name, "MMD-CC est", est_cc)
    return {k: {stat: torch.cat(v).double().numpy() for stat, v in d.items()} for k, d in out.items()}


def run(trial: Trial, source: DataSource, on_epoch: Callable | None = None) -> dict:
    """One trial: rows (shift x sample size x {MMD, MMD-CC})."""
    started = time.perf_counter()
    s = settings_of(trial)
    setup = prepare(trial, source, need_classifier="pgd" in s.shifts)
    data, det, dev = setup.data, setup.detector, setup.device

    # In-distribution test images: half for the clean samples, half as originals of the PGD shift (so an
    # attacked image never meets its own clean original in one test).
    n_in = setup.test_in.shape[0]
    order = torch.randperm(n_in, generator=generator("cpu", "halves", trial.dataset, setup.classes, trial.seed))
    clean_idx, attack_idx = (order[: n_in // 2], order[n_in // 2:]) if "pgd" in s.shifts else (order, order[:0])
    f_clean = det.features(setup.test_in[clean_idx])

    shifted, labels, skipped = {}, {}, []
    for shift in s.shifts:
        if shift == "unknown":
            if (unknown := unknown_classes(setup)) is None:
                skipped.append("unknown: every class is in-distribution")
                continue
            labels[shift], images = unknown
            shifted[shift] = det.features(images)
        elif shift == "pgd":
            x = to_float(setup.test_in[attack_idx].to(dev))
            adv = attack("pgd", setup.clf, x, setup.test_in_labels[attack_idx].to(dev), s,
                         stable_seed("attack", trial.dataset, setup.classes, trial.seed))
            shifted[shift], labels[shift] = det.features(adv), "PGD"
        else:
            try:  # a dataset's test split, or a set read without one (datasets.load_shift_images)
                other = load_shift_images(shift, source, data.image_shape)
            except DatasetError as exc:  # a dataset this machine does not have: noted in every row, not fatal
                skipped.append(f"{shift}: {exc}")
                continue
            shifted[shift] = det.features(other)
            labels[shift] = shift.removeprefix("imagefolder:").rstrip("/").rsplit("/", 1)[-1]

    rows = []
    for n in s.sample_sizes:
        if n < 2 or f_clean.shape[0] < 3 * n or any(f.shape[0] < n for f in shifted.values()):
            raise ValueError(f"sample size {n} needs {3 * n} clean in-distribution test images (have "
                             f"{f_clean.shape[0]}) and {n} of every shift")
        res = two_sample_draws(f_clean, shifted, n, s, (trial.training_seed,))
        for shift, label in labels.items():
            for stat in ("MMD", "MMD-CC"):
                p_null, p_shift = res["clean"][stat], res[shift][stat]
                est_null, est_shift = res["clean"][f"{stat} est"], res[shift][f"{stat} est"]
                rows.append({
                    "test_dataset": label, "sample_size": n, "variant": f"{stat} + {s.training}",
                    "auroc_pooled": auroc(1 - p_null, 1 - p_shift),
                    "fpr_at_alpha": float((p_null <= s.alpha).mean()),
                    "n_test": 2 * s.n_samplings,
                    "extra": {"rejection_rate": float((p_shift <= s.alpha).mean()), "alpha": s.alpha,
                              "n_samplings": s.n_samplings, "n_perm": s.n_perm,
                              "auroc_statistic": auroc(est_null, est_shift),
                              "median_p_shift": float(np.median(p_shift)), "skipped_shifts": skipped,
                              **summary_extra(setup)},
                })
    if not rows:
        raise ValueError(f"no shift to test: {', '.join(skipped) or 'none given'}")
    return measured(setup, started, rows, n_test=int(f_clean.shape[0] + sum(f.shape[0] for f in shifted.values())))


KIND = Kind(run=run, settings=profile_settings, with_datasets=add_shifts)
