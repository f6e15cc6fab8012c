"""The DeepSAD split protocol: counts, classes, disjointness, determinism, clear errors."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from orchestrator.data.splits import SplitError, SplitSpec, deepsad_counts, make_split

# CIFAR-10's training labels: 5,000 images in each of 10 classes.
CIFAR_LABELS = np.repeat(np.arange(10), 5000)
DIGITS_LABELS = load_digits().target


@pytest.mark.parametrize(
    "gamma_p, gamma_l, gamma_l_normal",
    [(0.0, 0.05, 0.0), (0.05, 0.05, 0.0), (0.10, 0.05, 0.0), (0.0, 0.01, 0.01), (0.10, 0.10, 0.10)],
)
def test_counts_match_the_requested_ratios(gamma_p, gamma_l, gamma_l_normal):
    spec = SplitSpec(normal_class=3, anomaly_class=7, gamma_p=gamma_p, gamma_l=gamma_l,
                     gamma_l_normal=gamma_l_normal, seed=1)
    s = make_split(CIFAR_LABELS, spec)
    total = len(s.unlabeled) + len(s.labeled_normal) + len(s.labeled_anomaly)
    # Ratios as DeepSAD defines them, to within one image of rounding.
    assert abs(s.n_pollution - gamma_p * len(s.unlabeled)) <= 1
    assert abs(len(s.labeled_anomaly) - gamma_l * total) <= 1
    assert abs(len(s.labeled_normal) - gamma_l_normal * total) <= 1
    # Every normal training image not held out for validation is used: 5000 - 5 % = 4750.
    assert (CIFAR_LABELS[s.unlabeled] == 3).sum() + len(s.labeled_normal) == 4750


def test_each_part_holds_the_right_classes_and_no_image_is_in_two_parts():
    spec = SplitSpec(normal_class=2, anomaly_class=5, gamma_p=0.10, gamma_l=0.05, seed=0)
    s = make_split(CIFAR_LABELS, spec)
    assert set(CIFAR_LABELS[s.labeled_anomaly]) == {5}
    pollution = s.unlabeled[CIFAR_LABELS[s.unlabeled] != 2]
    assert len(pollution) == s.n_pollution
    # Pollution comes from all nine other classes, roughly evenly.
    per_class = np.bincount(CIFAR_LABELS[pollution], minlength=10)
    assert per_class[2] == 0 and (per_class[np.arange(10) != 2] > 20).all()
    assert set(CIFAR_LABELS[s.val_normal]) == {2} and 2 not in set(CIFAR_LABELS[s.val_anomaly])
    parts = [s.unlabeled, s.labeled_normal, s.labeled_anomaly, s.val_normal, s.val_anomaly]
    everything = np.concatenate(parts)
    assert len(everything) == len(np.unique(everything))
    # Validation is 5 % of every class.
    assert len(s.val_normal) == 250 and len(s.val_anomaly) == 9 * 250


def test_same_seed_same_split_other_seed_other_split():
    spec = SplitSpec(normal_class=0, anomaly_class=1, gamma_p=0.05, gamma_l=0.05, seed=4)
    a, b = make_split(DIGITS_LABELS, spec), make_split(DIGITS_LABELS, spec)
    for name in ("unlabeled", "labeled_normal", "labeled_anomaly", "val_normal", "val_anomaly"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = make_split(DIGITS_LABELS, SplitSpec(normal_class=0, anomaly_class=1, gamma_p=0.05, gamma_l=0.05, seed=5))
    assert not np.array_equal(a.labeled_anomaly, c.labeled_anomaly)


def test_validation_hold_out_is_shared_across_ratios():
    # Methods and gamma values compared on one seed see the same validation images.
    a = make_split(CIFAR_LABELS, SplitSpec(normal_class=0, anomaly_class=1, gamma_p=0.0, gamma_l=0.05))
    b = make_split(CIFAR_LABELS, SplitSpec(normal_class=0, anomaly_class=4, gamma_p=0.1, gamma_l=0.05))
    assert np.array_equal(a.val_normal, b.val_normal)


def test_deepsad_counts_solve_the_system():
    c = deepsad_counts(5000, gamma_p=0.1, gamma_l=0.05, gamma_l_normal=0.0)
    unlabeled = c["unlabeled_normal"] + c["pollution"]
    total = unlabeled + c["labeled_anomaly"] + c["labeled_normal"]
    assert c["unlabeled_normal"] == 5000
    assert c["pollution"] == 556  # 0.1 = 556 / 5556
    assert c["labeled_anomaly"] == round(0.05 * total)


@pytest.mark.parametrize(
    "spec, message",
    [
        (SplitSpec(normal_class=0, anomaly_class=1, gamma_p=1.2, gamma_l=0.05), "gamma_p=1.2"),
        (SplitSpec(normal_class=0, anomaly_class=0, gamma_l=0.05), "equals the normal class"),
        (SplitSpec(normal_class=11, anomaly_class=1, gamma_l=0.05), "out of range"),
        (SplitSpec(normal_class=0, anomaly_class=None, gamma_l=0.05), "known anomaly class"),
        # Digits has about 170 images of class 1: half the training set cannot be labeled anomalies.
        (SplitSpec(normal_class=0, anomaly_class=1, gamma_l=0.6), "lower gamma_l"),
        (SplitSpec(normal_class=0, anomaly_class=1, gamma_p=0.95, gamma_l=0.01), "lower gamma_p"),
    ],
)
def test_impossible_ratios_raise_one_clear_line(spec, message):
    with pytest.raises(SplitError, match=message) as info:
        make_split(DIGITS_LABELS, spec, num_classes=10)
    assert "\n" not in str(info.value)
