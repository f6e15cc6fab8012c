"""The papers' protocols as the grid hands them to the methods: who gets labeled normals (HSCL Sec. 4.1:
"a small labeled subset of normal and abnormal samples", both at gamma_l; Deep SAD's protocol: none), and what
a label-free method's training set is in a semi-supervised grid point (the labeled anomalies dropped, or kept
as pollution). Real digits, real splits, no training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from methods.base import TrainSet
from methods.hscl import sample_weights
from methods.registry import METHODS
from orchestrator.data.datasets import DataSource
from orchestrator.experiments import one_class
from orchestrator.grid.scenarios import PROFILES, SCENARIOS
from orchestrator.planner import expand

HSCL_SCENARIOS = ("scenario2", "hscl-ablation", "hscl-wdelta", "hscl-prototypes")


@pytest.mark.parametrize("name", HSCL_SCENARIOS)
def test_hscl_trials_label_normals_at_gamma_l(name):
    trials = expand(SCENARIOS[name], PROFILES["quick"], num_classes=10)
    hscl = [t for t in trials if t.method == "hscl"]
    assert hscl and all(t.gamma_l_normal == t.gamma_l == 0.05 for t in hscl)
    # Deep SAD keeps its own protocol (the source of its numbers in HSCL's tables): no labeled normals.
    assert all(t.gamma_l_normal == 0.0 for t in trials if t.method == "deepsad")


def test_hscl_fit_sees_the_labeled_normals_with_weight_one():
    (trial,) = expand(SCENARIOS["scenario2"], PROFILES["quick"], methods=["hscl"], num_classes=10,
                      normal_classes=[3], anomaly_classes=[5], gamma_p=[0.1])
    train, split = one_class.training_set(trial, DataSource())
    total = len(split.unlabeled) + len(split.labeled_normal) + len(split.labeled_anomaly)
    n_normal = int((train.kind == TrainSet.NORMAL).sum())
    assert n_normal == len(split.labeled_normal) > 0 and abs(n_normal - 0.05 * total) <= 1
    # Eq. (5): whatever the prototypes say, a labeled normal weighs 1, a labeled anomaly 0.
    w = sample_weights(torch.full((len(train.kind),), -0.3), train.kind)
    assert (w[train.kind == TrainSet.NORMAL] == 1).all() and (w[train.kind == TrainSet.ANOMALY] == 0).all()
    assert torch.allclose(w[train.kind == TrainSet.UNLABELED], torch.tensor(0.35))


@pytest.mark.parametrize("rule", ["dropped", "unlabeled"])
def test_a_label_free_method_trains_on_what_the_rule_says(rule):
    scenario = dataclasses.replace(SCENARIOS["scenario2"], label_free_anomalies=rule)
    trials = expand(scenario, PROFILES["quick"], methods=["csi", "hscl"], num_classes=10, normal_classes=[2],
                    anomaly_classes=[7], gamma_p=[0.0])
    csi, hscl = sorted(trials, key=lambda t: t.method)
    assert not METHODS["csi"].uses_labels and csi.labeled_anomalies == rule and hscl.labeled_anomalies == "used"
    csi_train, split = one_class.training_set(csi, DataSource())
    hscl_train, same_split = one_class.training_set(hscl, DataSource())
    assert (split.unlabeled == same_split.unlabeled).all()  # both methods draw the same images
    n_known = len(split.labeled_anomaly)
    assert n_known > 0 and int((hscl_train.kind == TrainSet.ANOMALY).sum()) == n_known
    seen = len(split.unlabeled) + len(split.labeled_normal) + (n_known if rule == "unlabeled" else 0)
    assert len(csi_train.kind) == seen
    if rule == "dropped":  # gamma_p = 0: a clean one-class training set, every image of the normal class
        data = DataSource().load(csi.dataset)
        normal = data.train_images[data.train_labels == 2]
        assert all((normal == img).all(dim=(1, 2, 3)).any() for img in csi_train.images)


def test_no_labeled_anomalies_means_no_rule():
    trials = expand(SCENARIOS["contamination"], PROFILES["quick"], num_classes=10, normal_classes=[0])
    assert {t.labeled_anomalies for t in trials} == {"none"}
