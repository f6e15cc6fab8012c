"""HSCL's other tables and figures as scenarios: table tests of their grids (pure expansion, no data)."""

import pytest

from orchestrator.grid.scenarios import PROFILES, SCENARIOS, expand

QUICK = PROFILES["quick"]
BASELINES = ["hscl", "csi", "deepsad", "deepsvdd", "ocsvm", "iforest", "kde"]


@pytest.mark.parametrize(
    "name, kwargs, n_trials",
    [
        ("scenario1", {}, 1890),  # 7 methods x 10 normal x 9 known x 3 gamma_l
        ("scenario1", {"normal_classes": [0], "anomaly_classes": [1, 2]}, 42),  # 7 x 2 x 3
        ("scenario1", {"methods": ["hscl"], "gamma_l": [0.0]}, 10),  # the .00 column: no known class
        ("scenario2", {}, 1890),  # 7 methods x 10 x 9 x 3 gamma_p
        ("scenario2", {"methods": ["hscl"]}, 270),
        ("hscl-ablation", {}, 540),  # 6 variants x 10 x 9
        ("hscl-ablation", {"normal_classes": [0], "anomaly_classes": [1, 2]}, 12),
        ("hscl-wdelta", {}, 63),  # 7 thresholds x class 0 x 9
        ("hscl-wdelta", {"seeds": [0, 1, 2]}, 189),
        ("hscl-prototypes", {}, 360),  # 4 K x 10 x 9
    ],
)
def test_grid_sizes(name, kwargs, n_trials):
    kwargs = {"seeds": [0], **kwargs}
    assert len(expand(SCENARIOS[name], QUICK, num_classes=10, **kwargs)) == n_trials


def test_scenario1_ties_labeled_normals_to_gamma_l_without_pollution():
    sc = SCENARIOS["scenario1"]
    trials = expand(sc, QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1])
    assert sorted({(t["gamma_l"], t["gamma_l_normal"]) for t in trials}) == [(0.01, 0.01), (0.05, 0.05), (0.1, 0.1)]
    assert {t["gamma_p"] for t in trials} == {0.0}
    assert [t["method"] for t in trials[::3]] == BASELINES and sc.table_columns == "gamma_l"


def test_table_2_lists_hscl_first_then_the_baselines():
    assert list(SCENARIOS["scenario2"].methods) == BASELINES
    assert SCENARIOS["scenario2"].table_columns == "gamma_p"


def test_ablation_variants_set_the_table_5_switches():
    trials = expand(SCENARIOS["hscl-ablation"], QUICK, num_classes=10, normal_classes=[0], anomaly_classes=[1])
    switches = ("use_ss", "use_sp", "use_na", "sp_pos", "sp_neg")
    off = {t["variant"]: [k for k in switches if not t["params"][k]] for t in trials}
    assert off == {"w/o S-S": ["use_ss"], "w/o S-P": ["use_sp"], "w/o N-A": ["use_na"],
                   "w/o pos in S-P": ["sp_pos"], "w/o neg in S-P": ["sp_neg"], "full": []}
    assert {(t["gamma_p"], t["gamma_l"]) for t in trials} == {(0.05, 0.05)}


def test_figure_4_sweeps_set_one_parameter_each():
    wd = expand(SCENARIOS["hscl-wdelta"], QUICK, num_classes=10, anomaly_classes=[1])
    assert [t["params"]["w_delta"] for t in wd] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert {t["normal_class"] for t in wd} == {0}  # the paper's "plane"
    k = expand(SCENARIOS["hscl-prototypes"], QUICK, num_classes=10, normal_classes=[3], anomaly_classes=[1])
    assert [(t["variant"], t["params"]["n_prototypes"]) for t in k] == [("K=1", 1), ("K=2", 2), ("K=4", 4), ("K=8", 8)]
    # A variant's value wins over --set, every other --set value applies.
    k = expand(SCENARIOS["hscl-prototypes"], QUICK, num_classes=10, normal_classes=[3], anomaly_classes=[1],
               overrides={"n_prototypes": 5, "epochs": 2})
    assert [t["params"]["n_prototypes"] for t in k] == [1, 2, 4, 8] and {t["params"]["epochs"] for t in k} == {2}


@pytest.mark.parametrize("name", ["hscl-ablation", "hscl-wdelta", "hscl-prototypes"])
def test_hscl_sensitivity_tables_read_like_the_paper(name):
    sc = SCENARIOS[name]
    assert sc.methods == ("hscl",) and sc.table_rows == ("variant",) and sc.table_columns == "dataset"
