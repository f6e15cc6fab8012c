"""Scenario expansion is a pure function: table tests of its size and content, and stable keys."""

import pytest

from orchestrator.grid.scenarios import PROFILES, SCENARIOS, expand, method_params, trial_key

SC2, QUICK = SCENARIOS["scenario2"], PROFILES["quick"]


@pytest.mark.parametrize(
    "kwargs, n_trials",
    [
        ({}, 270),  # 10 normal x 9 known x 3 gamma_p
        ({"seeds": [0, 1, 2]}, 810),
        ({"normal_classes": [0]}, 27),
        ({"normal_classes": [0, 1], "anomaly_classes": [1, 2]}, 9),  # (0,1) (0,2) (1,2) x 3
        ({"normal_classes": [3], "gamma_p": [0.1]}, 9),
        ({"normal_classes": [3], "gamma_l": [0.0]}, 3),  # no known class: one trial per gamma_p
    ],
)
def test_grid_sizes(kwargs, n_trials):
    kwargs = {"seeds": [0], "methods": ["hscl"], **kwargs}
    assert len(expand(SC2, QUICK, num_classes=10, **kwargs)) == n_trials


def test_trials_cover_every_pair_once_and_never_pair_a_class_with_itself():
    trials = expand(SC2, QUICK, num_classes=10, methods=["hscl"])
    points = {(t["normal_class"], t["anomaly_class"], t["gamma_p"]) for t in trials}
    assert len(points) == 270
    assert all(t["normal_class"] != t["anomaly_class"] for t in trials)
    assert {t["gamma_l"] for t in trials} == {0.05}


def test_keys_are_stable_and_change_with_any_setting():
    a = expand(SC2, QUICK, num_classes=10, methods=["hscl"], normal_classes=[0], anomaly_classes=[1])
    b = expand(SC2, QUICK, num_classes=10, methods=["hscl"], normal_classes=[0], anomaly_classes=[1])
    assert [trial_key(t) for t in a] == [trial_key(t) for t in b]
    c = expand(SC2, QUICK, num_classes=10, methods=["hscl"], normal_classes=[0], anomaly_classes=[1],
               overrides={"tau": 0.2})
    d = expand(SC2, QUICK, num_classes=10, methods=["hscl"], normal_classes=[0], anomaly_classes=[1], seeds=[1])
    keys = {trial_key(t) for t in a + c + d}
    assert len(keys) == 9


def test_parameters_are_paper_defaults_then_profile_then_user():
    paper = method_params("hscl", "paper")
    assert (paper["tau"], paper["lambda1"], paper["lambda2"], paper["w_delta"], paper["epochs"]) == (
        0.5, 1.0, 1.0, 0.4, 250)
    quick = method_params("hscl", "quick")
    assert quick["net"] == "cnn_small" and quick["epochs"] < 250
    assert method_params("hscl", "quick", {"epochs": 3})["epochs"] == 3


def test_variants_are_a_grid_axis_whose_values_win():
    from orchestrator.grid.scenarios import Scenario

    ablation = Scenario(name="abl", description="", methods=("hscl",), gamma_p=(0.05,), gamma_l=(0.05,),
                        variants={"full": {}, "w/o N-A": {"use_na": False}}, table_rows=("variant",))
    trials = expand(ablation, QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1],
                    overrides={"use_na": True, "epochs": 2})
    by_variant = {t["variant"]: t["params"] for t in trials}
    assert set(by_variant) == {"full", "w/o N-A"}
    assert by_variant["full"]["use_na"] is True and by_variant["w/o N-A"]["use_na"] is False
    assert by_variant["w/o N-A"]["epochs"] == 2  # other --set values still apply
    bad = Scenario(name="bad", description="", methods=("hscl",), gamma_p=(0.0,), gamma_l=(0.05,),
                   variants={"typo": {"lamda1": 0.0}})
    with pytest.raises(ValueError, match="lamda1"):
        expand(bad, QUICK, num_classes=10)


def test_labeled_normals_can_be_tied_to_gamma_l():
    from orchestrator.grid.scenarios import Scenario

    tied = Scenario(name="s1", description="", methods=("hscl",), gamma_p=(0.0,), gamma_l=(0.01, 0.05),
                    gamma_l_normal=None)
    trials = expand(tied, QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1])
    assert [(t["gamma_l"], t["gamma_l_normal"]) for t in trials] == [(0.01, 0.01), (0.05, 0.05)]


def test_experiment_scenarios_take_extra_test_datasets_from_the_command_line():
    from orchestrator.cadet_experiments import settings_for

    trials = expand(SCENARIOS["twosample"], QUICK, num_classes=10, cross_test=["/data/svhn"])
    assert trials and all(t["test_datasets"] == ["/data/svhn"] for t in trials)
    shifts = settings_for(trials[0]).shifts
    assert shifts[-1] == "/data/svhn" and "unknown" in shifts  # added to the profile's shifts
