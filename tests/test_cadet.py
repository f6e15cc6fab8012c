"""CADet (methods/cadet.py) and its experiments (orchestrator/cadet_experiments.py): the MMD estimator against
the direct formula, permutation p-values under the null and under a shift, MMD-CC's clean calibration,
Eq. (5)-(8) on hand-checked inputs and on real digits (gamma equalises the variances, p-values hold their
false positive rate), LARS, 2-worker DDP pre-training on CPU (gloo), the attacks, and both scenario runners
on real data (sklearn digits; MNIST test digits as another dataset). About a minute on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from scipy import stats

from methods.augment import eval_views, gaussian_blur, simclr_views
from methods.base import TrainSet
from methods.cadet import (
    CADet,
    CADetConfig,
    CADetNet,
    calibrated_p_values,
    calibration_sizes,
    equalising_gamma,
    in_out_similarities,
)
from methods.losses import contrastive_loss, nt_xent, view_partner
from methods.mmd import cosine_kernel, mmd_cc_null, mmd_cc_test, mmd_test, mmd_u2, mmd_u2_split, random_orders
from methods.networks import build_backbone
from methods.optim import LARS
from orchestrator.data.datasets import DataSource, load_dataset
from orchestrator.experiments import adversarial, attacks, cadet_setup, two_sample
from orchestrator.experiments import adversarial_baselines as bl
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.grid.trial import Trial
from orchestrator.planner import expand
from orchestrator.search import load_space
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
MNIST_TEST = SHARED_DATA / "mnist-test"


def quick(seed: int = 0, **over) -> CADet:
    """CADet with the quick profile's config and the given overrides."""
    return CADet(CADetConfig(**{**CADet.profiles["quick"], **over}), CPU, seed)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_dataset("digits")


# ---- Eq. (4) and the permutation tests ---------------------------------------------------------------


def direct_mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Eq. (4) term by term: 1/(n(n-1)) sum_{i != j} k(Xi,Xj) + k(Yi,Yj) - k(Xi,Yj) - k(Yi,Xj), cosine k."""
    def k(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    n = len(x)
    total = sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(y[i], x[j])
                for i, j in itertools.product(range(n), repeat=2) if i != j)
    return total / (n * (n - 1))


def test_mmd_estimator_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    want = direct_mmd(x, y)
    assert mmd_u2(cosine_kernel(x), cosine_kernel(y), cosine_kernel(x, y)).item() == pytest.approx(want, abs=1e-6)
    # The split form used for all permutations at once: identity order = (X, Y) as given ...
    pool = torch.cat([x, y])
    k = cosine_kernel(pool)
    assert mmd_u2_split(k, torch.arange(10)[None]).item() == pytest.approx(want, abs=1e-6)
    # ... and any permutation = the direct formula on the rows it sends to X and Y, in that order.
    orders = random_orders((), 7, 10, g)
    got = mmd_u2_split(k, orders)
    for order, value in zip(orders, got, strict=True):
        assert value.item() == pytest.approx(direct_mmd(pool[order[:5]], pool[order[5:]]), abs=1e-6)
    # Batched over samplings (leading dims) = one at a time.
    xs, ys = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    _, est, _ = mmd_test(xs, ys, n_perm=5, generator=g)
    assert est.tolist() == pytest.approx([direct_mmd(a.double(), b.double()) for a, b in zip(xs, ys, strict=True)],
                                         abs=1e-5)


def test_permutation_p_values_are_uniform_under_the_null_and_small_under_a_shift():
    g = torch.Generator().manual_seed(1)
    draws, n, n_perm = 3000, 8, 19
    p, est, null = mmd_test(torch.randn(draws, n, 16, generator=g), torch.randn(draws, n, 16, generator=g),
                            n_perm, g)
    assert null.shape == (draws, n_perm)
    # p = (1 + #{null >= est}) / (n_perm + 1): never 0, on the grid k / 20.
    assert p.min() >= 1 / (n_perm + 1)
    assert torch.allclose(p * (n_perm + 1), (p * (n_perm + 1)).round())
    # Exchangeable under the null: P(p <= k/20) = k/20 for every k (binomial sd <= 0.0092 at 3000 draws).
    for k in range(1, n_perm + 2):
        assert (p <= k / (n_perm + 1)).double().mean().item() == pytest.approx(k / (n_perm + 1), abs=0.03)
    counts = np.bincount((p.numpy() * (n_perm + 1)).round().astype(int) - 1, minlength=n_perm + 1)
    assert stats.chisquare(counts).pvalue > 1e-3  # each of the 20 values equally likely
    # With many permutations the p-values approach the continuous uniform: a KS test (grid step 1/200).
    p200, _, _ = mmd_test(torch.randn(2000, n, 16, generator=g), torch.randn(2000, n, 16, generator=g), 199, g)
    assert stats.kstest(p200.numpy(), "uniform").statistic < 0.045
    # A null distribution taken without pooling S_Q (e.g. splits of S_P only) is not this one: the test
    # above would fail it. A clear shift: p at its minimum almost always.
    shift = torch.randn(200, n, 16, generator=g) + 0.8
    p_shift, _, _ = mmd_test(torch.randn(200, n, 16, generator=g), shift, 199, g)
    assert (p_shift <= 0.05).double().mean() > 0.95 and p_shift.median() == pytest.approx(1 / 200)


def test_mmd_cc_calibration_uses_only_clean_sets():
    g = torch.Generator().manual_seed(2)
    p1, p2 = torch.randn(50, 6, 8, generator=g), torch.randn(50, 6, 8, generator=g)
    q_clean, q_far = torch.randn(50, 6, 8, generator=g), torch.randn(50, 6, 8, generator=g) + 2
    runs = {}
    for name, q in [("clean", q_clean), ("far", q_far), ("nan", torch.full_like(q_clean, float("nan")))]:
        runs[name] = mmd_cc_test(p1, p2, q, 99, torch.Generator().manual_seed(7))
    null = mmd_cc_null(p1, p2, 99, torch.Generator().manual_seed(7))
    for _, _, n in runs.values():  # S_Q never enters the null: not even NaNs in it change it
        assert torch.equal(n, null) and torch.isfinite(n).all()
    assert not torch.equal(mmd_cc_null(p1, p2 + 1, 99, torch.Generator().manual_seed(7)), null)
    assert (runs["far"][0] <= 0.05).double().mean() > 0.9 and runs["clean"][0].median() > 0.2
    # Under the null MMD-CC rejects about alpha of the time.
    gen = torch.Generator().manual_seed(3)
    p, _, _ = mmd_cc_test(*(torch.randn(2000, 6, 8, generator=gen) for _ in range(3)), 99, gen)
    assert 0.02 < (p <= 0.05).double().mean().item() < 0.09


# ---- Eq. (5)-(8) ---------------------------------------------------------------------------------------


def test_in_out_similarities_and_p_values_by_hand():
    g = torch.Generator().manual_seed(4)
    u = F.normalize(torch.randn(5, 3, 4, generator=g, dtype=torch.float64), dim=-1)  # 5 views of 3 images
    v = F.normalize(torch.randn(5, 7, 4, generator=g, dtype=torch.float64), dim=-1)  # 5 views of 7 X_val^(1)
    m_in, m_out = in_out_similarities(u, v.mean(dim=(0, 1)))
    for b in range(3):
        pairs = [float(u[i, b] @ u[j, b]) for i in range(5) for j in range(5) if i != j]
        assert m_in[b].item() == pytest.approx(sum(pairs) / (5 * 4))  # mean over the T (T - 1) pairs
        cross = [float(u[i, b] @ v[j, k]) for i in range(5) for j in range(5) for k in range(7)]
        assert m_out[b].item() == pytest.approx(sum(cross) / (5 * 5 * 7))  # Eq. (5)'s n_trs^2 |X_val^(1)|
    # Eq. (8): strictly smaller calibration scores, + 1, over |X_val^(2)| + 1.
    cal = torch.tensor([0.1, 0.2, 0.2, 0.5])
    assert calibrated_p_values(torch.tensor([0.05, 0.2, 0.3, 0.9]), cal).tolist() == pytest.approx(
        [1 / 5, 2 / 5, 4 / 5, 5 / 5])
    assert equalising_gamma(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.5])) == pytest.approx(4.0)


def test_gamma_equalises_the_variances_on_calibration_data(digits):
    m = quick(epochs=5, n_val1=40, n_val2=300)
    x = digits.train_images
    m.fit(TrainSet(x, torch.zeros(len(x), dtype=torch.int8)))
    cal = m.calibration
    assert cal["m_in"].numel() == 300 and m.gamma > 0
    assert cal["m_in"].var().item() == pytest.approx((m.gamma * cal["m_out"]).var().item(), rel=1e-5)
    assert cal["score"].tolist() == pytest.approx((cal["m_in"] + m.gamma * cal["m_out"]).tolist())
    # On fresh transforms of new in-distribution images the two terms still vary about alike.
    fresh = m.statistics(digits.test_images)
    ratio = fresh["m_in"].var() / (m.gamma * fresh["m_out"]).var()
    assert 0.5 < ratio.item() < 2.0
    # Same images, same statistics (seeded transforms); score() is -score_C.
    assert np.allclose(m.score(digits.test_images), -fresh["score"].numpy())


def test_calibrated_p_values_hold_the_false_positive_rate(digits):
    # Calibration images held out of pre-training, like the test images: p-values are exchangeable.
    m = quick(epochs=10, n_val2=400, max_calib_fraction=0.6)
    summary = m.fit(TrainSet(digits.train_images, torch.zeros(len(digits.train_images), dtype=torch.int8)))
    assert summary["n_val2"] == 400 and summary["n_pretrain"] == len(digits.train_images) - 430
    p = m.p_values(digits.test_images)  # 596 clean held-out digits
    for alpha in (0.05, 0.1, 0.2):
        assert (p <= alpha).mean() == pytest.approx(alpha, abs=0.03 + 0.2 * alpha)


def test_calibration_sizes_shrink_to_fit():
    cfg = CADetConfig(n_val1=300, n_val2=2000)
    assert calibration_sizes(100_000, cfg) == (300, 2000)
    n1, n2 = calibration_sizes(1000, cfg)  # at most half of the training set, in the same proportion
    assert n1 + n2 == 500 and n1 == int(300 * 500 / 2300)
    assert calibration_sizes(1000, dataclasses.replace(cfg, calib_holdout=False)) == (130, 870)


# ---- pre-training pieces ----------------------------------------------------------------------------------


def test_lars_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    w.grad, b.grad = torch.tensor([[0.0, 1.6]]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.3, 2.0]])  # grad + wd * w
    trust = 0.01 * 5 / g.norm()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    assert b.item() == pytest.approx(1.0 - 0.5 * 2.0)  # 1-D: no decay, no trust ratio
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    before = b.item()
    opt.step()  # momentum carries 0.9 of the last step
    assert b.item() == pytest.approx(before - 0.9 * 0.5 * 2.0)


def test_backbones_and_user_weights(tmp_path):
    x = torch.rand(2, 3, 32, 32)
    for name, dim in [("cnn_small", 64), ("resnet18", 512), ("resnet50", 2048), ("resnet50_cifar", 2048)]:
        enc, f = build_backbone(name, 3)
        assert f == dim and enc.eval()(x).shape == (2, dim)
    # Encoder weights from a file (torchvision-style keys with a classifier "fc"), then features agree.
    cfg = CADetConfig(**{**CADet.profiles["quick"], "epochs": 0})
    src = CADetNet(cfg, 1)
    state = {f"module.{k}": v for k, v in src.encoder.state_dict().items()} | {"fc.weight": torch.zeros(10, 64)}
    torch.save(state, tmp_path / "enc.pt")
    m = CADet(dataclasses.replace(cfg, weights_path=str(tmp_path / "enc.pt")), CPU, seed=123)
    m.net = m.build_net(1)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(m.net.encoder.state_dict()[k], v)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        CADet(dataclasses.replace(cfg, weights_path=str(tmp_path / "bad.pt")), CPU, 0).build_net(1)
    with pytest.raises(ValueError, match="optimizer"):
        CADetConfig(optimizer="rmsprop")


def test_augmentations():
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    t_train = {"jitter": CADetConfig.jitter, "blur_p": 1.0}  # CADet's T_train, always blurred
    v = simclr_views(x, generator=torch.Generator().manual_seed(0), **t_train)
    assert v.shape == (8, 3, 32, 32)
    assert torch.equal(v, simclr_views(x, generator=torch.Generator().manual_seed(0), **t_train))
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0, g), flat, atol=1e-6)  # a blur keeps a constant image
    noisy = torch.rand(2, 3, 32, 32, generator=g)
    assert gaussian_blur(noisy, 1.0, g).std() < noisy.std()
    e = eval_views(x.float() / 255, 5, 0.75, generator=g)
    assert e.shape == (20, 3, 32, 32) and e.abs().max() <= 1 + 1e-6


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, images, z_global):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # The gathered NT-Xent: rank r holds block r of the global rows.
        z = z_global[rank].clone().requires_grad_(True)
        loss = contrastive_loss(z, tau=0.1, gather=True)
        loss.backward()
        m = quick(epochs=2, batch_size=64, optimizer="lars", lr=1.0, weight_decay=1e-4, n_val2=60)
        summary = m.fit(TrainSet(images, torch.zeros(len(images), dtype=torch.int8)))
        torch.save({"summary": summary, "state": m.net.state_dict(), "gamma": m.gamma, "loss": loss.detach(),
                    "grad": z.grad, "cal": m.calibration["score"]}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_worker_ddp_pretraining_agrees_on_the_weights(tmp_path, digits):
    images = digits.train_images[:400]
    b, d = 6, 8
    z_global = torch.randn(2, 2 * b, d, generator=torch.Generator().manual_seed(5))  # (rank, [view0; view1], D)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), images, z_global), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["summary"]["world_size"] == 2 and r0["summary"]["final_loss"] == r1["summary"]["final_loss"]
    for name, t in r0["state"].items():  # parameters and BatchNorm buffers
        assert torch.equal(t, r1["state"][name]), name
    assert r0["gamma"] == r1["gamma"] and torch.equal(r0["cal"], r1["cal"])
    # The gathered loss is the single-process loss of the global batch, and each rank's gradient is world x
    # its rows' share, so DDP's averaging gives exactly the global gradient.
    zg = z_global.reshape(-1, d).clone().requires_grad_(True)
    want = nt_xent(F.normalize(zg, dim=1), view_partner(2, b), 0.1)
    want.backward()
    assert r0["loss"].item() == pytest.approx(want.item(), rel=1e-6) and r1["loss"].item() == r0["loss"].item()
    for rank, r in enumerate((r0, r1)):
        assert torch.allclose(r["grad"] / 2, zg.grad.view(2, 2 * b, d)[rank], atol=1e-6)


# ---- attacks and the two scenario runners --------------------------------------------------------------


def test_each_attack_lowers_the_classifiers_accuracy_by_20_points(digits):
    """At the quick profile's budgets on held-out digits; the CIFAR version at the CIFAR profiles' budgets is
    tests/test_attacks.py's slow test."""
    s = cadet_setup.SETTINGS["quick"]
    keep = digits.train_labels < 5
    clf, _ = cadet_setup.train_classifier(digits.train_images[keep], digits.train_labels[keep], 5, s, 0, CPU)
    test = digits.test_labels < 5
    x, y = digits.test_images[test].float() / 255, digits.test_labels[test]
    clean = cadet_setup.predict(clf, x)
    accuracy = (clean == y).float().mean().item()
    assert accuracy > 0.95
    for name in ("pgd", "cw", "fgsm"):
        adv = attacks.attack(name, clf, x, y, s, seed=0)
        record, _ = attacks.attack_summary(x, adv, y, clean, cadet_setup.predict(clf, adv))
        assert record["adv_accuracy"] <= accuracy - 0.20, (name, record)
        assert adv.min() >= 0 and adv.max() <= 1
        if name == "cw":
            assert record["l2_max"] <= s.cw_l2 + 1e-5
        else:
            assert record["linf_max"] <= (s.pgd_eps if name == "pgd" else s.fgsm_eps) + 1e-6


def mnist_imagefolder(root: Path, per_class: int = 30) -> Path:
    """An ImageFolder tree of real MNIST test digits (the only MNIST files here), train/ and test/."""
    import torchvision.io

    def idx(name):
        with gzip.open(MNIST_TEST / name) as f:
            data = f.read()
        return np.frombuffer(data, np.uint8, offset=16 if "images" in name else 8)

    x = idx("t10k-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28)
    y = idx("t10k-labels-idx1-ubyte.gz")
    for split, offset in (("train", 0), ("test", 5000)):
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(y[offset:] == c)[:per_class]:
                torchvision.io.write_png(torch.from_numpy(x[offset + i].copy()), str(folder / f"{i}.png"))
    return root


def small_trial(name: str, **settings) -> Trial:
    trials = expand(SCENARIOS[name], PROFILES["quick"], seeds=[0], num_classes=10, dataset="digits",
                    overrides={"epochs": 8})
    return dataclasses.replace(trials[0], settings={**trials[0].settings, **settings})


@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason="needs ../shared/data/mnist-test")
def test_twosample_runner_on_digits_with_another_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("ADSWEEP_CACHE", str(tmp_path / "cache"))
    tree = mnist_imagefolder(tmp_path / "mnist")
    trial = small_trial("twosample", sample_sizes=[5, 10], n_samplings=60, n_perm=99,
                        shifts=["unknown", "pgd", str(tree), str(tmp_path / "absent")])
    out = two_sample.run(trial, DataSource())
    rows = out["rows"]
    assert {r["test_dataset"] for r in rows} == {"unknown classes 5-9", "PGD", "mnist"}
    assert len(rows) == 3 * 2 * 2 and {r["variant"] for r in rows} == {"MMD + contrastive", "MMD-CC + contrastive"}
    for r in rows:
        assert 0 <= r["auroc_pooled"] <= 1 and r["fpr_at_alpha"] <= 0.2 and r["sample_size"] in (5, 10)
        assert 0 <= r["extra"]["rejection_rate"] <= 1 and "absent" in r["extra"]["skipped_shifts"][0]
    by = {(r["test_dataset"], r["sample_size"], r["variant"]): r for r in rows}
    # Upscaled-then-shrunk MNIST digits against sklearn's digits: a plain dataset shift, found at n = 10.
    assert by[("mnist", 10, "MMD-CC + contrastive")]["auroc_pooled"] > 0.8
    assert out["world_size"] == 1 and out["epochs"] == 8 and math.isfinite(out["final_loss"])


def test_adversarial_runner_rows(monkeypatch):
    # CW inside an L2 ball of 0.01 (a per-pixel RMS of 0.00125 on 8x8 digits): an attack that barely succeeds.
    trial = small_trial("adversarial", training="supervised", attacks=["fgsm", "cw"], cw_l2=0.01, cw_search_steps=1,
                        n_attacked=120, baselines=[])  # Table 4's baselines: test_table4_baselines_...
    out = adversarial.run(trial, DataSource())
    assert all(r["n_test"] == 2 * 120 for r in out["rows"])  # a seeded subset of the test images is attacked
    assert [r["variant"] for r in out["rows"]] == ["CADet + supervised", "m_in + supervised", "m_out + supervised"] * 2
    for r in out["rows"]:
        e = r["extra"]
        # Both AUROCs, named; the headline (auroc_pooled) counts successful attacks only (adversarial.py says why).
        assert r["test_dataset"] in ("FGSM", "CW") and 0 <= e["auroc_all_attacked"] <= 1
        assert e["auroc_headline"] == "auroc_successful" and r["auroc_pooled"] == e["auroc_successful"]
        assert (r["auroc_pooled"] is None) == (e["n_successful"] == 0)
        # The attack itself: success among the correct images, accuracy before and after, perturbation norms.
        assert 0 <= e["linf_mean"] <= e["linf_max"] and 0 <= e["l2_mean"] <= e["l2_max"]
        assert e["clean_accuracy"] > 0.95 and e["attack_success_threshold"] == 0.5
        if r["test_dataset"] == "FGSM":
            assert e["attack_success_rate"] > 0.5 and e["budget"]["eps"] == 0.25 and e["linf_max"] <= 0.25 + 1e-6
            assert e["attack_succeeded"] is True and "note" not in e and e["adv_accuracy"] < e["clean_accuracy"] - 0.5
        else:  # flagged, so a table can say the column measures little
            assert e["l2_max"] <= 0.01 + 1e-6 and e["budget"]["search_steps"] == 1
            assert e["attack_succeeded"] is False and e["attack_success_rate"] < 0.5 and "fooled" in e["note"]
    assert cadet_setup.in_distribution(7, 5, 10) == [7, 8, 9, 0, 1]


def test_table4_baselines_are_tuned_on_attacked_calibration_images_only():
    """The supervised trial adds Hu et al. (tuned on adv, and self-calibrated) and ODIN (tuned on adv) per attack,
    scored on a seeded subset of the attacked test images and tuned on X_val^(2) and its attacked copies."""
    trial = small_trial("adversarial", training="supervised", attacks=["fgsm"], n_attacked=150, baseline_images=100,
                        calibration_attacked=80, hu_cap=40)
    assert trial.settings["baselines"] == ["Hu", "ODIN"]
    rows = adversarial.run(trial, DataSource())["rows"]
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"CADet + supervised", "m_in + supervised", "m_out + supervised",
                       "Hu (tuned on adv) + supervised", "Hu + self-calibration + supervised",
                       "ODIN (tuned on adv) + supervised"}
    baselines = ("Hu (tuned on adv) + supervised", "Hu + self-calibration + supervised",
                 "ODIN (tuned on adv) + supervised")
    tuned, selfcal, odin = (by[v]["extra"] for v in baselines)
    for v in baselines:
        r = by[v]
        assert r["n_test"] == 2 * 100 and by["CADet + supervised"]["n_test"] == 2 * 150
        assert r["auroc_pooled"] == r["extra"]["auroc_successful"] and 0 <= r["extra"]["auroc_all_attacked"] <= 1
        assert r["extra"]["n_calibration"] == 80 and 0 < r["extra"]["n_calibration_successful"] <= 80
        assert r["extra"]["attack_success_rate"] > 0.5  # the attack record travels with the baseline rows
    assert tuned["tuned_on"] == odin["tuned_on"] == "attacked calibration images"
    assert selfcal["tuned_on"] == "clean calibration images" and selfcal["hu_weight_c2"] == 1.0
    # The tuned weight is the grid's best on the calibration attacks, so never worse there than the fixed one.
    assert tuned["hu_weight_c2"] in bl.W_GRID and tuned["auroc_calibration"] >= selfcal["auroc_calibration"]
    assert (odin["odin_temperature"], odin["odin_eps"]) in bl.ODIN_GRID


def test_hu_targeted_steps_batched_equal_the_reference_one_image_at_a_time():
    """Hu et al.'s C2 as their detect.py counts it (one image, SGD on the input, clamp to [0, 1] and to the L_inf
    ball, stop when the predicted label changes or at the cap) against the batched version."""
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    x = torch.rand(24, 3, 4, 4)
    label = clf(x).argmax(1)
    targets = bl.random_other_labels(label, 5, torch.Generator().manual_seed(1))
    assert (targets != label).all()
    lr, radius, cap = 0.5, 0.3, 25

    def reference(img, target):
        x_var = img.clone().requires_grad_(True)
        start = clf(img).argmax(1).item()
        counter = 0
        while clf(x_var).argmax(1).item() == start:
            loss = F.cross_entropy(clf(x_var), target)
            (grad,) = torch.autograd.grad(loss, x_var)
            with torch.no_grad():
                x_var.data = torch.clamp(x_var - lr * grad, 0, 1)
                x_var.data = torch.clamp(x_var - img, -radius, radius) + img
            counter += 1
            if counter >= cap:
                break
        return counter

    expected = [reference(x[i:i + 1], targets[i:i + 1]) for i in range(len(x))]
    with bl.frozen(clf):
        got = bl.targeted_steps(clf, x, lr, radius, cap, targets=targets, chunk=10).tolist()
    assert got == expected
    assert len(set(expected)) > 3 and min(expected) < cap  # the counts differ: the stopping rule is exercised


def test_cadet_runs_as_a_one_class_method_too_and_has_a_search_space():
    one_class = expand(SCENARIOS["contamination"], PROFILES["quick"], methods=["cadet"], seeds=[0], num_classes=10)
    assert len(one_class) == 30 and {t.kind for t in one_class} == {"one_class"}
    space = load_space(str(ROOT / "search_spaces" / "cadet.yaml"))
    assert space["method"] == "cadet" and {"gamma_rule", "n_trs", "eval_crop_scale"} <= set(space["params"])


@pytest.mark.slow  # 18 s; test_adversarial_runner_rows runs the same runner in-process
def test_sweep_runs_the_adversarial_scenario_end_to_end(tmp_path):
    """Through Ray Tune + Train as a user runs it: 2 trials (contrastive, supervised), 9 rows each and 9 baseline
    rows in the supervised one."""
    store = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "adversarial", "--storage", str(store),
                          "--set", "epochs=3", "--no-scores"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})  # rich wraps a narrower table's cells
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2/2 trials ok" in run.stdout and "CADet + contrastive" in run.stdout
    import pandas as pd

    rows = pd.read_parquet(store)
    assert len(rows) == 27 and (rows.status == "ok").all() and rows.trial_key.nunique() == 2
    cadet = rows[~rows.variant.str.startswith(("Hu", "ODIN"))]
    assert set(rows.test_dataset) == {"PGD", "CW", "FGSM"} and cadet.fpr_at_alpha.notna().all() and len(cadet) == 18
