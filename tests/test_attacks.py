"""The attacks CADet's experiments use (orchestrator/experiments/attacks.py): Carlini-Wagner L2 as defined (binary
search over c, never past its budget), what an attack row records (success rate, perturbation norms, the flag
for an attack that barely succeeds), the CIFAR profiles' shared budgets, and every attack at the CIFAR
profiles' budgets against a CIFAR-10 classifier trained here (slow tier). Seeded; one CPU thread.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch

from orchestrator.data.datasets import load_dataset
from orchestrator.experiments import attacks, cadet_setup
from orchestrator.experiments.cadet_setup import SETTINGS, predict, train_classifier
from tests.conftest import SHARED_DATA

CPU = torch.device("cpu")
CIFAR_TAR = SHARED_DATA / "cifar10-jpeg.tar.gz"
CIFAR_TREE = Path("/tmp/cifar10-jpeg")


@pytest.fixture(scope="module")
def digits_classifier():
    """The quick profile's classifier on digits 0-4, and the held-out test digits 0-4 in [0, 1]."""
    torch.set_num_threads(1)
    data = load_dataset("digits")
    s = SETTINGS["quick"]
    keep = data.train_labels < 5
    clf, _ = train_classifier(data.train_images[keep], data.train_labels[keep], 5, s, 0, CPU)
    test = data.test_labels < 5
    return clf, data.test_images[test].float() / 255, data.test_labels[test]


def test_cw_stays_inside_its_budget_and_finds_the_smallest_attack(digits_classifier):
    clf, x, y = digits_classifier
    for p in clf.parameters():
        p.requires_grad_(False)
    clean = predict(clf, x)
    rates = []
    for budget in (0.05, 0.3, 1.0, 1e6):
        adv = attacks.cw_l2(clf, x, y, budget, lr=0.03, steps=50, c=1.0, search_steps=5)
        norms = (adv - x).flatten(1).norm(dim=1)
        assert norms.max() <= budget + 1e-5 and adv.min() >= 0 and adv.max() <= 1
        record, fooled = attacks.attack_summary(x, adv, y, clean, predict(clf, adv))
        assert record["l2_max"] == pytest.approx(norms.max().item())
        assert record["linf_max"] == pytest.approx((adv - x).abs().max().item())
        rates.append(record["attack_success_rate"])
        if budget == 1e6:  # unbounded: CW finds an adversarial image for (nearly) every correct digit
            assert record["attack_success_rate"] > 0.95 and record["attack_succeeded"] and "note" not in record
            # ... and keeps the smallest it saw: the binary search lowers c once it succeeds.
            assert norms[fooled].median() < 1.0
        if budget == 0.05:  # a budget far below the digits' margins: flagged, with the reason
            assert not record["attack_succeeded"] and "fooled" in record["note"]
    assert rates == sorted(rates) and rates[0] < attacks.SUCCESS_THRESHOLD < rates[2]
    # The binary search matters: one round at a small fixed c finds far fewer attacks within the same budget.
    one_round = attacks.cw_l2(clf, x, y, 1.0, lr=0.03, steps=50, c=0.01, search_steps=1)
    fixed = attacks.attack_summary(x, one_round, y, clean, predict(clf, one_round))[0]["attack_success_rate"]
    assert fixed < rates[2] - 0.3


def test_small_and_paper_profiles_attack_with_the_same_budgets():
    assert "small" in SETTINGS
    small, paper = SETTINGS["small"], SETTINGS["paper"]
    for name in ("pgd", "cw", "fgsm"):
        assert attacks.budget_of(name, small) == attacks.budget_of(name, paper), name
    assert small.attacks == paper.attacks and small.in_classes == paper.in_classes == 0
    # The paper's per-pixel L_inf budgets; CW: an L2 ball on [0, 1] images that lets CW succeed at 32x32.
    assert (paper.pgd_eps, paper.pgd_step, paper.pgd_steps, paper.fgsm_eps) == (0.02, 0.002, 50, 0.05)
    assert paper.cw_l2 == 0.5 and paper.cw_search_steps > 1 and (paper.cw_lr, paper.cw_steps) == (0.03, 50)
    # The small profile is sized for a CPU: a narrower network, fewer epochs, fewer samplings.
    assert small.clf_net == "resnet18_narrow" and small.clf_epochs < paper.clf_epochs
    assert small.n_samplings < paper.n_samplings
    assert cadet_setup.profile_settings("small")["cw_l2"] == 0.5


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory) -> Path:
    if CIFAR_TREE.is_dir():
        return CIFAR_TREE
    assert CIFAR_TAR.is_file(), f"{CIFAR_TAR} missing: the CIFAR-10 JPEGs ship in shared/data (ADSWEEP_SHARED_DATA)"
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run(["tar", "xzf", str(CIFAR_TAR), "-C", str(out)], check=True)
    return out / "cifar10-jpeg"


@pytest.mark.slow  # about 50 s on one CPU thread (about half of it training), the digits version in test_cadet.py
def test_every_attack_at_the_cifar_budgets_lowers_accuracy_by_20_points(cifar_tree):
    """A CIFAR-10 classifier trained here (cnn_small, 4 epochs of Adam on 10,000 training images: about 47 %
    test accuracy), attacked on 200 held-out test images at the small / paper profiles' budgets. The former
    CW (L2 0.0143, c fixed at 1) moved such a classifier from 0.468 to 0.455."""
    torch.set_num_threads(1)
    data = load_dataset(f"imagefolder:{cifar_tree}")
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(data.train_labels), generator=g)[:10_000]
    s = dataclasses.replace(SETTINGS["small"], clf_net="cnn_small", clf_epochs=4, clf_lr=3e-3, clf_crop_scale_min=1.0)
    clf, _ = train_classifier(data.train_images[rows], data.train_labels[rows], 10, s, 0, CPU)
    test = torch.randperm(len(data.test_labels), generator=g)[:200]
    x, y = data.test_images[test].float() / 255, data.test_labels[test]
    clean = predict(clf, x)
    accuracy = (clean == y).float().mean().item()
    assert accuracy > 0.35
    for name in ("pgd", "cw", "fgsm"):
        adv = attacks.attack(name, clf, x, y, s, seed=0)
        record, _ = attacks.attack_summary(x, adv, y, clean, predict(clf, adv))
        assert record["adv_accuracy"] <= accuracy - 0.20, (name, record)
        assert record["attack_succeeded"], (name, record)
        assert adv.min() >= 0 and adv.max() <= 1
        if name == "cw":
            assert record["l2_max"] <= s.cw_l2 + 1e-5
        else:
            assert record["linf_max"] <= (s.pgd_eps if name == "pgd" else s.fgsm_eps) + 1e-6


def test_cw_agrees_with_foolbox(digits_classifier):
    """foolbox 3's L2CarliniWagnerAttack (a test dependency) with the same settings fools about as many
    images within the same budget."""
    import foolbox as fb

    clf, x, y = digits_classifier
    clf.eval()
    clean = predict(clf, x)
    ours = attacks.cw_l2(clf, x, y, 1.0, lr=0.03, steps=50, c=1.0, search_steps=5)
    cw = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=50, stepsize=0.03, confidence=0,
                                          initial_const=1.0, abort_early=False)
    _, (theirs,), _ = cw(fb.PyTorchModel(clf, bounds=(0, 1)), x, y, epsilons=[1.0])
    rate = [attacks.attack_summary(x, a, y, clean, predict(clf, a))[0]["attack_success_rate"] for a in (ours, theirs)]
    assert rate[0] == pytest.approx(rate[1], abs=0.05)


def test_cadet_tables_print_beside_our_adversarial_and_two_sample_rows():
    """published.yaml's CADet Tables 1-5 (their table references in `source`); Tables 2 and 4 join our rows'
    keys, Table 5's means never stand in for an AUROC."""
    import pandas as pd

    from orchestrator.report.tables import published, wide_table

    sources = {s for name in ("rejection", "twosample", "ood-detection", "adversarial")
               for s in published(name)["source"]}
    assert {s.split(" (")[0] for s in sources} == {f"CADet Table {k}" for k in range(1, 6)}
    adv = pd.DataFrame([{"status": "ok", "seed": 0, "test_dataset": a, "variant": v, "auroc_pooled": 0.9}
                        for a in ("PGD", "CW", "FGSM") for v in ("CADet + contrastive", "m_in + contrastive")])
    wide = wide_table(adv, "adversarial", with_published=True, dataset="cifar10").set_index("variant")
    assert wide.loc["CADet + contrastive", "paper imagenet CW"] == "95.9 (-5.9)"  # methods x attacks, as the paper
    assert pd.isna(wide.loc["m_in + contrastive", "paper imagenet CW"])  # Table 5 holds means, not AUROCs
    two = pd.DataFrame([{"status": "ok", "seed": 0, "test_dataset": "PGD", "variant": "MMD-CC + contrastive",
                         "sample_size": n, "auroc_pooled": 0.8} for n in (3, 20)])
    wide = wide_table(two, "twosample", with_published=True, dataset="digits")
    assert wide["paper imagenet 3"].tolist() == ["70.5 (+9.5)"]
    assert wide["paper imagenet 20"].tolist() == ["99.5 (-19.5)"]
