"""The grid: every scenario's expansion as one table (trial counts and the axes that vary), stable keys, the
parameter layering, variants, and the one seeding rule. Pure: no data is read, nothing runs."""

from __future__ import annotations

import pytest

from orchestrator.experiments import KINDS
from orchestrator.experiments.cadet_setup import add_shifts
from orchestrator.grid.scenarios import PROFILES, SCENARIOS, Scenario
from orchestrator.grid.trial import Trial
from orchestrator.planner import expand, method_params

QUICK = PROFILES["quick"]
TABLE_2 = ["hscl", "csi", "deepsad", "deepsvdd", "ocsvm", "iforest", "kde"]
VARYING = ("kind", "method", "variant", "normal_class", "anomaly_class", "gamma_p", "gamma_l", "gamma_l_normal")

# scenario, expand() arguments, trials, {field: number of distinct values} for the fields above that vary
GRIDS = [
    ("scenario2", {}, 1890, {"method": 7, "normal_class": 10, "anomaly_class": 10, "gamma_p": 3,
                             "gamma_l_normal": 2}),  # Deep SAD: no labeled normals, the others at gamma_l
    ("scenario2", {"methods": ["hscl"], "anomaly_classes": "next"}, 30,
     {"normal_class": 10, "anomaly_class": 10, "gamma_p": 3}),
    ("scenario2", {"methods": ["hscl"], "normal_classes": [3], "gamma_l": [0.0]}, 3, {"gamma_p": 3}),
    ("scenario1", {}, 1890, {"method": 7, "normal_class": 10, "anomaly_class": 10, "gamma_l": 3,
                             "gamma_l_normal": 4}),
    ("scenario1", {"methods": ["hscl"], "gamma_l": [0.0]}, 10, {"normal_class": 10}),
    ("hscl-ablation", {}, 540, {"variant": 6, "normal_class": 10, "anomaly_class": 10}),
    ("hscl-wdelta", {}, 63, {"variant": 7, "anomaly_class": 9}),
    ("hscl-prototypes", {}, 360, {"variant": 4, "normal_class": 10, "anomaly_class": 10}),
    ("scenario3", {}, 3, {"method": 3}),
    ("contamination", {}, 90, {"method": 3, "normal_class": 10, "gamma_p": 3}),
    ("milconvex-ablation", {}, 40, {"variant": 4, "normal_class": 10}),
    ("twosample", {}, 2, {}),
    ("adversarial", {}, 2, {}),
    ("rejection", {}, 2, {}),
    ("ood-detection", {}, 2, {}),
    ("cadet-transforms", {}, 1, {}),
]


def test_the_table_covers_every_scenario():
    assert {name for name, *_ in GRIDS} == set(SCENARIOS)


@pytest.mark.parametrize("name, kwargs, n_trials, varying", GRIDS)
def test_every_scenario_expands_to_its_grid(name, kwargs, n_trials, varying):
    trials = expand(SCENARIOS[name], QUICK, seeds=[0], num_classes=10, **kwargs)
    assert len(trials) == n_trials and len({t.key for t in trials}) == n_trials
    counts = {f: len({getattr(t, f) for t in trials}) for f in VARYING}
    assert {f: n for f, n in counts.items() if n > 1} == varying
    assert {t.kind for t in trials} == {SCENARIOS[name].kind} and SCENARIOS[name].kind in KINDS
    assert all(t.normal_class != t.anomaly_class or t.normal_class is None for t in trials)


def test_seeds_multiply_the_grid_and_share_nothing_else():
    one = expand(SCENARIOS["scenario2"], QUICK, seeds=[0], num_classes=10, methods=["hscl"], normal_classes=[0])
    three = expand(SCENARIOS["scenario2"], QUICK, seeds=[0, 1, 2], num_classes=10, methods=["hscl"],
                   normal_classes=[0])
    assert len(three) == 3 * len(one) == 81 and len({t.training_seed for t in three}) == 81


def test_cadet_scenarios_carry_the_profile_settings_and_the_training_axis():
    for name in ("twosample", "adversarial"):
        trials = expand(SCENARIOS[name], QUICK, seeds=[0], num_classes=10)
        assert {t.settings["training"] for t in trials} == {"contrastive", "supervised"}
        assert all(t.normal_class == 0 and t.settings["in_classes"] == 5 for t in trials)
        paper = expand(SCENARIOS[name], PROFILES["paper"], seeds=[0], num_classes=10)
        assert {t.settings["n_samplings"] for t in paper} == {5000}  # profile settings are in the trial...
        assert {t.key for t in paper}.isdisjoint(t.key for t in trials)  # ...and so in its key


def test_extra_test_datasets_add_to_the_two_sample_shifts():
    settings = add_shifts(KINDS["two_sample"].settings("quick"), None, ["imagefolder:svhn-copy"])
    trials = expand(SCENARIOS["twosample"], QUICK, num_classes=10, settings=settings)
    assert all(t.settings["shifts"] == ["unknown", "pgd", "imagefolder:svhn-copy"] for t in trials)


def test_keys_are_stable_and_change_with_any_setting():
    def point(**kwargs):
        return expand(SCENARIOS["scenario2"], QUICK, num_classes=10, methods=["hscl"], normal_classes=[0],
                      anomaly_classes=[1], **kwargs)

    a, b = point(), point()
    assert [t.key for t in a] == [t.key for t in b] and all(Trial.from_dict(t.to_dict()) == t for t in a)
    keys = {t.key for t in a + point(overrides={"tau": 0.2}) + point(seeds=[1])}
    assert len(keys) == 9


def test_the_training_seed_ignores_params_variants_and_settings():
    """Variants and searched parameters start from the same weights and batches: paired comparisons."""
    trials = expand(SCENARIOS["hscl-ablation"], QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1])
    assert len({t.key for t in trials}) == 6 and len({t.training_seed for t in trials}) == 1
    other = expand(SCENARIOS["hscl-ablation"], QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[2])
    assert other[0].training_seed != trials[0].training_seed


def test_parameters_are_paper_defaults_then_profile_then_user():
    paper = method_params("hscl", "paper")
    assert (paper["tau"], paper["lambda1"], paper["lambda2"], paper["w_delta"], paper["epochs"]) == (
        0.5, 1.0, 1.0, 0.4, 250)
    quick = method_params("hscl", "quick")
    assert quick["net"] == "cnn_small" and quick["epochs"] < 250
    assert method_params("hscl", "quick", {"epochs": 3})["epochs"] == 3


def test_hscl_ablation_variants_set_the_table_5_switches_and_win_over_set():
    trials = expand(SCENARIOS["hscl-ablation"], QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1],
                    overrides={"use_na": True, "epochs": 2})
    switches = ("use_ss", "use_sp", "use_na", "sp_pos", "sp_neg")
    off = [(t.variant, [k for k in switches if not t.params[k]]) for t in trials]
    # Table 5's rows, in its order: each variant turns off one switch, "full" none.
    assert off == [("w/o S-S", ["use_ss"]), ("w/o S-P", ["use_sp"]), ("w/o N-A", ["use_na"]),
                   ("w/o pos in S-P", ["sp_pos"]), ("w/o neg in S-P", ["sp_neg"]), ("full", [])]
    assert {t.params["epochs"] for t in trials} == {2}  # other --set values still apply
    assert {(t.gamma_p, t.gamma_l) for t in trials} == {(0.05, 0.05)}


def test_figure_4_sweeps_set_one_parameter_each():
    wd = expand(SCENARIOS["hscl-wdelta"], QUICK, num_classes=10, anomaly_classes=[1])
    assert [t.params["w_delta"] for t in wd] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    k = expand(SCENARIOS["hscl-prototypes"], QUICK, num_classes=10, normal_classes=[3], anomaly_classes=[1],
               overrides={"n_prototypes": 5})
    assert [(t.variant, t.params["n_prototypes"]) for t in k] == [("K=1", 1), ("K=2", 2), ("K=4", 4), ("K=8", 8)]


def test_a_variant_setting_an_unknown_parameter_is_refused():
    bad = Scenario(name="bad", description="", methods=("hscl",), gamma_p=(0.0,), gamma_l=(0.05,),
                   variants={"typo": {"lamda1": 0.0}})
    with pytest.raises(ValueError, match="lamda1"):
        expand(bad, QUICK, num_classes=10)


def test_scenario1_ties_labeled_normals_to_gamma_l_and_tables_list_the_papers_rows():
    trials = expand(SCENARIOS["scenario1"], QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1])
    labeled = sorted({(t.gamma_l, t.gamma_l_normal) for t in trials if t.method != "deepsad"})
    assert labeled == [(0.01, 0.01), (0.05, 0.05), (0.1, 0.1)]
    assert {t.gamma_l_normal for t in trials if t.method == "deepsad"} == {0.0}  # Deep SAD's own protocol
    assert list(SCENARIOS["scenario2"].methods) == TABLE_2 == [t.method for t in trials[::3]]
