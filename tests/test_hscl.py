"""HSCL: each loss term on hand-computed inputs, then training on real data (sklearn digits, CPU)."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from methods.base import TrainSet
from methods.hscl import (
    HSCL,
    draw,
    na_loss,
    normality,
    prototype_similarity,
    sample_weights,
    sampling_distribution,
    sp_terms,
)
from methods.losses import nt_xent
from tests.conftest import assert_two_ddp_ranks_agree, digits_70_30


def unit(*degrees: float) -> torch.Tensor:
    """2-D unit vectors at the given angles, (len, 2)."""
    a = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


# ---- the loss terms, on 2-D unit vectors --------------------------------------------------------


def test_ss_infonce_hand_checked():
    # Eq. (1)-(2), tau = 1. Rows a = b = (1, 0) are a positive pair, c = (0, 1) and d = (0, -1) another.
    # a: positive a.b = 1, negatives a.c = a.d = 0 -> -log(e / (e + 2)) = log(1 + 2/e) = 0.5515 (b same)
    # c: positive c.d = -1, negatives 0, 0       -> -log(e^-1 / (e^-1 + 2)) = log(1 + 2e) = 1.8620 (d same)
    z = unit(0, 0, 90, -90)
    loss = nt_xent(z, torch.tensor([1, 0, 3, 2]), tau=1.0)
    assert loss.item() == pytest.approx((math.log(1 + 2 / math.e) + math.log(1 + 2 * math.e)) / 2)
    # tau = 0.5 doubles every logit: log(1 + 2e^-2) and log(1 + 2e^2).
    loss = nt_xent(z, torch.tensor([1, 0, 3, 2]), tau=0.5)
    assert loss.item() == pytest.approx((math.log(1 + 2 * math.e**-2) + math.log(1 + 2 * math.e**2)) / 2)


def test_sp_loss_and_weights_hand_checked():
    # One prototype V = (1, 0). Samples at 0, 90, 60, 120 degrees: max_k z^T V_k = 1, 0, 0.5, -0.5.
    V = unit(0).T  # (D=2, K=1)
    sim = prototype_similarity(unit(0, 90, 60, 120), V)
    assert sim.tolist() == pytest.approx([1.0, 0.0, 0.5, -0.5])
    kind = torch.tensor([1, 0, -1, -1], dtype=torch.int8)  # labeled normal, unlabeled, 2 anomalies
    # Eq. (5): labeled normal 1; unlabeled (0 + 1) / 2 = 0.5; anomalies are not in n u u -> 0.
    w = sample_weights(sim, kind)
    assert w.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    # Eq. (4): pos = (1 * (1 - 1)^2 + 0.5 * (1 - 0)^2) / (1 + 0.5) = 1/3; neg = (0.5^2 + 0^2) / 2 = 0.125
    pos, neg = sp_terms(sim, kind, w)
    assert pos.item() == pytest.approx(1 / 3)
    assert neg.item() == pytest.approx(0.125)


def test_sp_without_anomalies_is_zero_but_connected():
    V = torch.nn.Parameter(torch.tensor([[1.0], [0.0]]))
    z = unit(30, 60).float()
    sim = prototype_similarity(z, F.normalize(V, dim=0))
    pos, neg = sp_terms(sim, torch.zeros(2, dtype=torch.int8), sample_weights(sim.detach(), torch.zeros(2)))
    assert neg.item() == 0.0
    (pos + neg).backward()  # still a graph through V: DDP gets a gradient for the prototypes
    assert V.grad is not None and torch.isfinite(V.grad).all()


def test_eq5_weights_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(500, 16, generator=g), dim=1)
    V = F.normalize(torch.randn(16, 3, generator=g), dim=0)
    kind = torch.randint(-1, 2, (500,), generator=g).to(torch.int8)
    w = sample_weights(prototype_similarity(z, V), kind)
    assert (w >= 0).all() and (w <= 1).all()
    assert (w[kind == 1] == 1).all()
    # Extremes: a sample on the prototype has w = 1, one opposite to it w = 0.
    assert sample_weights(torch.tensor([1.0, -1.0]), torch.zeros(2)).tolist() == [1.0, 0.0]


def test_eq7_sampling_never_draws_below_threshold():
    w = torch.tensor([0.9, 0.4, 0.3, 0.6, 0.41, 0.0])
    p = sampling_distribution(w, w_delta=0.4)
    # Eq. (7): 1[w > 0.4] w / sum = (0.9, 0, 0, 0.6, 0.41, 0) / 1.91 (w = 0.4 itself is excluded)
    assert p.tolist() == pytest.approx([0.9 / 1.91, 0, 0, 0.6 / 1.91, 0.41 / 1.91, 0])
    g = torch.Generator().manual_seed(0)
    idx, valid = draw(p, 20000, g)
    assert valid.all()
    assert set(idx.unique().tolist()) == {0, 3, 4}  # never w <= w_delta
    freq = torch.bincount(idx, minlength=6).double() / 20000
    assert torch.allclose(freq, p.double(), atol=0.015)  # and in proportion to w
    # A positive must differ from its anchor.
    anchor = torch.tensor([0, 3, 4] * 1000)
    positive, ok = draw(p, anchor.shape[0], g, exclude=anchor)
    assert ok.all() and (positive != anchor).all()
    # Nothing above the threshold: every draw is marked invalid instead of failing.
    _, valid = draw(sampling_distribution(torch.tensor([0.1, 0.2]), 0.4), 5, g)
    assert not valid.any()
    # Only one eligible sample: it can be an anchor but has no other sample as its positive.
    p1 = sampling_distribution(torch.tensor([0.9, 0.1]), 0.4)
    _, ok = draw(p1, 3, g, exclude=torch.zeros(3, dtype=torch.long))
    assert not ok.any()


def test_na_loss_hand_checked():
    # Rows: n1 = n2 = (1, 0) normal, a = (0, 1) labeled anomaly. Anchor n1, positive n2, tau = 1:
    # -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.31326
    z = unit(0, 0, 90)
    negative = torch.tensor([False, False, True])
    loss = na_loss(z, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]), negative, tau=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # Two draws, the second invalid: it is left out of the mean.
    loss2 = na_loss(z, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([True, False]), negative, 1.0)
    assert loss2.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # No labeled anomaly in the batch: the term is exactly 0.
    assert na_loss(z, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]),
                   torch.zeros(3, dtype=torch.bool), 1.0).item() == 0.0


def test_eq9_normality_hand_checked():
    # Prototypes (1, 0) and (0, 1); a sample at 30 degrees: max(cos 30, cos 60) = 0.8660
    V = unit(0, 90).T
    assert normality(unit(30, 180), V).tolist() == pytest.approx([math.cos(math.pi / 6), 0.0])


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="net='vgg'"):
        HSCL.Config(net="vgg")
    with pytest.raises(ValueError, match="tau=0.0.*rotations=5"):
        HSCL.Config(tau=0.0, rotations=5)
    assert HSCL.Config(**HSCL.profiles["quick"]).net == "cnn_small"


# ---- training on real data ----------------------------------------------------------------------

_X_TR, _X_TE, _Y_TR, _Y_TE = digits_70_30()


def one_class_split(normal: int, anomaly: int, seed: int = 0):
    """Scenario 2 in miniature: all ~125 training images of `normal` (6 of them labeled), 5 unlabeled
    pollution images from other classes, 7 labeled anomalies of class `anomaly`. Test: the test part,
    `normal` vs the rest (label 1 = anomaly)."""
    rng = np.random.default_rng(seed)
    normal_idx = np.where(_Y_TR == normal)[0]
    labeled_a = rng.choice(np.where(_Y_TR == anomaly)[0], 7, replace=False)
    pollution = rng.choice(np.setdiff1d(np.where(_Y_TR != normal)[0], labeled_a), 5, replace=False)
    kind = np.zeros(len(normal_idx) + 5 + 7, dtype=np.int8)
    kind[rng.choice(len(normal_idx), 6, replace=False)] = TrainSet.NORMAL
    kind[-7:] = TrainSet.ANOMALY
    train = TrainSet(_X_TR[np.concatenate([normal_idx, pollution, labeled_a])], torch.from_numpy(kind))
    return train, _X_TE, (_Y_TE != normal).astype(int)


def quick(seed: int = 0, **overrides) -> HSCL:
    """HSCL as the runner builds it: Config defaults, then the quick profile, then overrides."""
    params = {**dataclasses.asdict(HSCL.Config()), **HSCL.profiles["quick"], **overrides}
    return HSCL(HSCL.Config(**params), torch.device("cpu"), seed=seed)


def test_trained_beats_chance_and_untrained():
    torch.set_num_threads(1)  # as a quick-profile trial runs
    trained, untrained = [], []
    for normal, anomaly in [(0, 1), (4, 9), (7, 2)]:
        train, test_x, test_y = one_class_split(normal, anomaly)
        epochs: list[tuple[int, float]] = []
        m = quick()
        summary = m.fit(train, on_epoch=lambda e, logs, out=epochs: out.append((e, logs["loss"])))
        assert [e for e, _ in epochs] == list(range(1, HSCL.profiles["quick"]["epochs"] + 1))
        assert summary["epochs"] == len(epochs) and np.isfinite(summary["final_loss"])
        scores = m.score(test_x)
        assert scores.shape == (len(test_x),) and np.isfinite(scores).all()
        trained.append(roc_auc_score(test_y, scores))
        u = quick(epochs=0)
        u.fit(train)
        untrained.append(roc_auc_score(test_y, u.score(test_x)))
    print(f"AUROC trained {np.round(trained, 3)} untrained {np.round(untrained, 3)}")
    assert np.mean(trained) > 0.8
    assert np.mean(trained) > np.mean(untrained) + 0.15


def test_score_is_negated_eq9():
    train, test_x, _ = one_class_split(0, 1)
    m = quick(epochs=1)
    m.fit(train)
    z = m.embed(test_x[:50])
    expected = -normality(z, m.net.unit_prototypes())
    assert np.allclose(m.score(test_x[:50]), expected.detach().numpy())


def test_same_seed_same_scores():
    train, test_x, _ = one_class_split(5, 6)
    a, b, c = quick(epochs=2), quick(epochs=2), quick(seed=1, epochs=2)
    for m in (a, b, c):
        m.fit(train)
    assert np.array_equal(a.score(test_x), b.score(test_x))
    assert not np.array_equal(a.score(test_x), c.score(test_x))


# What each Table 5 switch does to the loss and the trained weights: tests/test_baselines.py (one place).
def test_without_prototypes_the_score_is_knn():
    # w/o S-P: the k-NN score (Sec. 4.4) over the normal and unlabeled training images, so a training
    # image is its own nearest neighbour (cosine 1, score -1).
    train, test_x, _ = one_class_split(2, 3)
    m = quick(epochs=1, use_sp=False)
    m.fit(train)
    assert np.isfinite(m.score(test_x)).all()
    own = m.score(train.images[train.kind >= 0][:20])
    assert np.allclose(own, -1.0, atol=1e-5)


def test_ddp_two_ranks_stay_identical(tmp_path):
    train, _, _ = one_class_split(7, 2)
    r0 = assert_two_ddp_ranks_agree(tmp_path, functools.partial(quick, epochs=2, batch_size=32),
                                    train.images, train.kind)
    # And the ranks did train: the weights moved away from the seed's initialisation.
    init = quick().build_net(1).state_dict()
    assert not torch.equal(init["head.2.weight"], r0["state"]["head.2.weight"])
