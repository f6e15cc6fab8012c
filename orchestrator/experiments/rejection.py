"""rejection: CADet Sec. 4.1, Table 1: how often MMD and MMD-CC (methods/mmd.py, Algorithm 1) reject h0 at
alpha = .05 against the sample size n, over `n_samplings` samplings of S_P^(1), S_P^(2) (in-distribution test
images) and S_Q (the shift), n_perm = 500 permutations each. ../shared/papers/004_fea3bd5cd4f38a35.txt.

The paper: CIFAR-10 test against CIFAR-10.1, n = 2000 ... 50, 100 samplings, a ResNet-50 pre-trained on
ImageNet. Here the network is trained on the trial's dataset (every class in distribution), with
`holdout` training images set aside from pre-training, the classifier and calibration, and the shifts are:
- `train-holdout`: S_Q drawn from those held-out TRAINING images, S_P from the TEST split. CIFAR-10's splits
  were drawn from one pool, so this is (up to the split's own curation) the null: its rejection rate measures
  the test's level at alpha, the baseline the other rows are read against.
- `class-prior`: S_Q drawn from the same held-out images, but the first half of the classes twice as likely as
  the rest (2/3 of S_Q instead of 1/2). Why this shift: like CIFAR-10 -> CIFAR-10.1 it keeps the label set,
  changes no pixel, involves no attack, and is real (deployment data rarely keeps the training class
  frequencies); it is subtle, a mixture-weight change that small samples cannot see and large ones must. It is
  paired with `train-holdout`: the same pool and draws, only the class weights differ.
- `cifar10.1` (CIFAR-10.1 v6, Recht et al. 2019: the paper's shift) and any other set the user names with
  --test-datasets (`imagenet-o`, `inaturalist`, an ImageFolder tree, images:/path; see
  orchestrator/data/datasets.load_shift_images), read when this machine has the files; otherwise named in
  every row's `extra.skipped_shifts`, as is a shift whose pool holds fewer than n images at some n.
Rows: one per shift x n x statistic, `variant` "<MMD | MMD-CC> + <training>", `sample_size` n, and in `extra`
`rejection_rate` (Table 1's number; `results table rejection` reads it from there), the median p-value, and
the samplings / permutations used. No AUROC: Table 1 has none (`auroc_pooled` stays empty).

Measured, quick profile (digits, 20 samplings, 200 permutations), seeds 0-2, mean rejection rate at n = 20 / 50 /
100: the null (held-out training digits) MMD + contrastive 0.07 / 0.05 / 0.12, MMD-CC 0.05 / 0.02 / 0.13, MMD-CC +
supervised 0.05 / 0.05 / 0.07; the class-prior shift MMD-CC + contrastive 0.05 / 0.08 / 0.15, + supervised 0.07 /
0.17 / 0.18 (60 samplings per cell: a binomial sd of 0.03 at 0.05). A 2:1 class prior is barely visible at
n <= 100 on digits; an 8:1 prior (n = 200 from a pool of 300, 40 samplings) was rejected 45-48 % of the time,
the null 0 %. 3-8 s a trial.

Sample sizes: the paper's n list capped per profile by what the data and a CPU allow (quick: n <= 100; small:
n <= 1000; paper: the paper's 50-2000). Finite pools: a sample drawn without replacement from a pool not much
larger than it is closer to the pool than an i.i.d. sample, and the test turns conservative (measured on digits,
n = 200 from a pool of 300 held-out images: median null p-value 0.78, no rejection in 40 samplings), so every
profile keeps its pools (test split for the two P samples, holdout for S_Q) at >= 4n; Table 1's own n = 2000
draws all of CIFAR-10.1's 2,000 images every time. Memory: the permutations of a batch
of samplings stay under methods/mmd.MEMORY_BUDGET whatever n is (samplings_per_batch), not chunk x (2n)^2.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from methods.mmd import cosine_kernel, mmd_cc_null, mmd_test, mmd_u2, permutation_p_value, samplings_per_batch
from orchestrator.data.datasets import DatasetError, DataSource, load_shift_images
from orchestrator.experiments.cadet_setup import (
    SETTINGS,
    Settings,
    add_shifts,
    generator,
    json_safe,
    measured,
    prepare,
    settings_of,
    summary_extra,
)
from orchestrator.experiments.kind import Kind
from orchestrator.grid.trial import Trial

PAPER_SIZES = (2000, 1000, 500, 200, 100, 50)


@dataclass(frozen=True)
class RejectionSettings(Settings):
    """Settings (cadet_setup.py) plus Table 1's own; `sample_sizes` are Table 1's n, `shifts` its shifts."""

    holdout: int = 2000
    """in-distribution training images set aside from all training: the pool of the train-holdout and
    class-prior shifts (at least the largest n)"""
    prior_ratio: float = 2.0
    """class-prior shift: the first half of the classes this many times as likely as the others"""


def _rejection(**over) -> RejectionSettings:
    return RejectionSettings(**{"in_classes": 0, "shifts": ("train-holdout", "class-prior", "cifar10.1"),
                                "attacks": (), **over})


REJECTION_SETTINGS = {
    # digits: 599 test images, 1,198 training images; n <= 100 keeps every pool >= 4n (see the docstring's
    # finite pools); 20 samplings (the paper: 100), 200 permutations (the paper: 500): a smoke scale.
    "quick": _rejection(sample_sizes=(20, 50, 100), n_samplings=20, n_perm=200, holdout=400),
    # CIFAR-10 on a CPU: n capped at 1,000 (the 2,000 row costs 4x the 1,000 row's permutations), 100 samplings.
    "small": _rejection(sample_sizes=tuple(n for n in PAPER_SIZES if n <= 1000), n_samplings=100, holdout=5000,
                        **{k: getattr(SETTINGS["small"], k) for k in ("clf_net", "clf_epochs", "clf_batch_size",
                                                                      "clf_optimizer", "clf_lr",
                                                                      "clf_weight_decay", "clf_crop_scale_min")}),
    "paper": _rejection(sample_sizes=PAPER_SIZES, n_samplings=100, holdout=10_000,
                        **{k: getattr(SETTINGS["paper"], k) for k in ("clf_net", "clf_epochs", "clf_batch_size",
                                                                      "clf_optimizer", "clf_lr",
                                                                      "clf_weight_decay", "clf_crop_scale_min")}),
}


def profile_settings(profile: str) -> dict:
    return json_safe(dataclasses.asdict(REJECTION_SETTINGS.get(profile, _rejection())))


def weighted_draws(weights: torch.Tensor, draws: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """`draws` samples of n distinct indices each, index i with probability proportional to weights[i] at every
    pick (Efraimidis-Spirakis: the n largest u^(1/w)) -> (draws, n)."""
    u = torch.rand(draws, len(weights), generator=gen, device=weights.device)
    return (u.log() / weights).topk(n, dim=1).indices


def rejection_draws(f_p: torch.Tensor, pools: dict[str, tuple[torch.Tensor, torch.Tensor]], n: int,
                    s: RejectionSettings, seed_parts: tuple) -> dict[str, dict[str, np.ndarray]]:
    """For sample size n: n_samplings draws of disjoint S_P^(1), S_P^(2) from f_p (N, D) and of S_Q from each
    shift's pool (features (M, D), sampling weights (M,)) -> {shift: {"MMD": p (S,), "MMD-CC": p (S,)}}.
    MMD: S_P^(1) against S_Q, null from splits of their union; MMD-CC: the same estimate, null from splits of
    S_P^(1) u S_P^(2) (Algorithm 1). Batches of samplings sized to the memory budget."""
    dev = f_p.device
    gen = generator(dev, "rejection-draws", *seed_parts, n)
    perm_gen = generator(dev, "rejection-permutations", *seed_parts, n)
    out: dict[str, dict[str, list]] = {name: {"MMD": [], "MMD-CC": []} for name in pools}
    batch = samplings_per_batch(n, s.n_perm, s.chunk)
    for start in range(0, s.n_samplings, batch):
        m = min(batch, s.n_samplings - start)
        pick = torch.rand(m, f_p.shape[0], generator=gen, device=dev).argsort(1)[:, : 2 * n]
        p1, p2 = f_p[pick[:, :n]], f_p[pick[:, n:]]
        cc_null = mmd_cc_null(p1, p2, s.n_perm, perm_gen)
        for name, (pool, weights) in pools.items():
            q = pool[weighted_draws(weights, m, n, gen)]
            p_mmd, _, _ = mmd_test(p1, q, s.n_perm, perm_gen)
            est = mmd_u2(cosine_kernel(p1), cosine_kernel(q), cosine_kernel(p1, q))
            out[name]["MMD"].append(p_mmd.cpu())
            out[name]["MMD-CC"].append(permutation_p_value(est, cc_null).cpu())
    return {k: {stat: torch.cat(v).double().numpy() for stat, v in d.items()} for k, d in out.items()}


def class_prior_weights(labels: torch.Tensor, num_classes: int, ratio: float) -> torch.Tensor:
    """Per image: `ratio` for the first half of the classes, 1 for the rest.

    >>> class_prior_weights(torch.tensor([0, 4, 5, 9]), 10, 2.0).tolist()
    [2.0, 2.0, 1.0, 1.0]
    """
    return torch.where(labels < num_classes // 2, float(ratio), 1.0)


def run(trial: Trial, source: DataSource, on_epoch: Callable | None = None) -> dict:
    """One trial: rows (shift x sample size x {MMD, MMD-CC})."""
    started = time.perf_counter()
    s = settings_of(trial, RejectionSettings)
    largest = max(s.sample_sizes)
    setup = prepare(trial, source, need_classifier=s.training == "supervised", settings=s, holdout=s.holdout)
    data, det = setup.data, setup.detector
    if setup.test_in.shape[0] < 2 * largest:
        raise ValueError(f"n = {largest} needs {2 * largest} in-distribution test images (two disjoint P samples); "
                         f"{trial.dataset} has {setup.test_in.shape[0]}")
    f_p = det.features(setup.test_in)
    f_held = det.features(setup.holdout)
    ones = torch.ones(len(f_held), device=f_held.device)

    pools, labels, skipped = {}, {}, []
    for shift in s.shifts:
        if shift == "train-holdout":
            name = trial.dataset.removeprefix("imagefolder:")
            pools[shift], labels[shift] = (f_held, ones), f"{name} train (held out)"
        elif shift == "class-prior":
            w = class_prior_weights(setup.holdout_labels, data.num_classes, s.prior_ratio).to(f_held.device)
            pools[shift], labels[shift] = (f_held, w), f"class prior {s.prior_ratio:g}:1"
        else:
            try:
                images = load_shift_images(shift, source, data.image_shape)
            except DatasetError as exc:  # a set this machine does not have: named in every row
                skipped.append(str(exc) if str(exc).startswith(shift) else f"{shift}: {exc}")
                continue
            f = det.features(images)
            pools[shift] = (f, torch.ones(len(f), device=f.device))
            labels[shift] = shift.removeprefix("imagefolder:").removeprefix("images:").rstrip("/").rsplit("/", 1)[-1]
    for shift, (f, _) in list(pools.items()):
        if len(f) < largest:
            skipped.append(f"{shift}: {len(f)} images, fewer than n = {largest}")
            del pools[shift]
    if not pools:
        raise ValueError(f"no shift to test: {'; '.join(skipped) or 'none given'}")

    rows = []
    for n in sorted(s.sample_sizes, reverse=True):  # the paper's column order
        res = rejection_draws(f_p, pools, n, s, (trial.training_seed,))
        for shift, label in labels.items():
            if shift not in pools:
                continue
            for stat in ("MMD", "MMD-CC"):
                p = res[shift][stat]
                rows.append({
                    "test_dataset": label, "sample_size": n, "variant": f"{stat} + {s.training}",
                    "n_test": s.n_samplings,
                    "extra": {"rejection_rate": float((p <= s.alpha).mean()), "alpha": s.alpha,
                              "median_p": float(np.median(p)), "n_samplings": s.n_samplings, "n_perm": s.n_perm,
                              "shift": shift, "skipped_shifts": skipped, **summary_extra(setup)},
                })
    return measured(setup, started, rows, n_test=int(f_p.shape[0] + sum(len(f) for f, _ in pools.values())))


KIND = Kind(run=run, class_grid=True, settings=profile_settings, with_datasets=add_shifts)
