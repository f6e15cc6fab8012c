"""Scenarios and profiles as plain data, and their expansion into trials (a pure function).

A *scenario* is a paper's experimental grid (which classes, which ratios, which methods). A
*profile* says at what scale to run it: ``quick`` (digits, small CNN, a laptop CPU in minutes)
or ``paper`` (CIFAR-10, the papers' hyperparameters, a GPU cluster). A *trial* is one point of
the grid for one method and one seed, written as a plain dict; its ``trial_key`` is a hash of
that dict, so the same experiment always has the same key, whoever runs it and wherever.

>>> trials = expand(SCENARIOS["scenario2"], PROFILES["quick"], methods=["hscl"], seeds=[0],
...                 num_classes=10, normal_classes=[0], anomaly_classes=[1, 2])
>>> len(trials), sorted({t["gamma_p"] for t in trials})
(6, [0.0, 0.05, 0.1])
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass

from methods.registry import get_method


@dataclass(frozen=True)
class CrossDatasets:
    """Scenario-3 roles: all of the profile's dataset is normal, another dataset gives the labeled
    anomalies, and each test dataset's test split is one set of test anomalies (one row each).
    Names are registered datasets or ImageFolder paths; images are resized to the normal shape."""

    labeled: str
    test: tuple[str, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    methods: tuple[str, ...]
    gamma_p: tuple[float, ...]
    gamma_l: tuple[float, ...]
    # Labeled normals (Scenario-1); None ties them to gamma_l ("both at gamma_l").
    gamma_l_normal: tuple[float, ...] | None = (0.0,)
    # None: every class of the dataset; anomaly classes default to every class but the normal one.
    normal_classes: tuple[int, ...] | None = None
    anomaly_classes: tuple[int, ...] | None = None
    # Named parameter settings of one method (ablations, sensitivity curves): each is one more grid
    # axis. A variant's values win over profile and --set values: they define the experiment.
    variants: dict[str, dict] | None = None
    # The paper's table layout for this scenario: row keys, the column axis and the metric.
    table_rows: tuple[str, ...] = ("method",)
    table_columns: str = "gamma_p"
    metric: str = "auroc_pooled"
    cross: CrossDatasets | None = None  # Scenario-3 (cross-dataset); None for one-class grids
    # An experiment of its own instead of train-and-score-the-test-split: "module:function"
    # (see orchestrator.runner.train_loop); its extra grid axes are plain data in `axes`.
    runner: str | None = None
    axes: dict[str, tuple] | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str
    description: str


SCENARIOS = {
    "scenario2": Scenario(
        name="scenario2",
        description="HSCL Scenario-2 (Table 2): contaminated one-class classification, "
        "10 normal x 9 known-anomaly classes, gamma_p in {0, .05, .10}, gamma_l = .05",
        methods=("hscl", "csi", "deepsad", "deepsvdd", "ocsvm", "iforest", "kde"),
        gamma_p=(0.0, 0.05, 0.10),
        gamma_l=(0.05,),
    ),
    "scenario1": Scenario(
        name="scenario1",
        description="HSCL Scenario-1 (Table 1): semi-supervised one-class classification, 10 normal x 9 "
        "known-anomaly classes, labeled normals and anomalies both at gamma_l in {.01, .05, .10}, no pollution "
        "(--gamma-l 0 gives the .00 column of the unsupervised methods)",
        methods=("hscl", "csi", "deepsad", "deepsvdd", "ocsvm", "iforest", "kde"),
        gamma_p=(0.0,),
        gamma_l=(0.01, 0.05, 0.10),
        gamma_l_normal=None,  # "the labeled ratio of X_n and X_a both as gamma_l"
        table_columns="gamma_l",
    ),
    # HSCL's ablations (Sec. 4.4) run in the Scenario-2 setting gamma_p = gamma_l = .05, the one the
    # paper names for its visualisation (Fig. 3). Rows: the settings; columns: the dataset, as in
    # Table 5 and in Fig. 4's curves (one per dataset).
    "hscl-ablation": Scenario(
        name="hscl-ablation",
        description="HSCL Table 5: each relation (S-S, S-P, N-A) and each term of Eq. (4) removed in turn, "
        "10 normal x 9 known-anomaly classes, gamma_p = gamma_l = .05",
        methods=("hscl",),
        gamma_p=(0.05,),
        gamma_l=(0.05,),
        variants={
            "w/o S-S": {"use_ss": False},
            "w/o S-P": {"use_sp": False},  # k-NN score instead of prototypes, no soft weights
            "w/o N-A": {"use_na": False},
            "w/o pos in S-P": {"sp_pos": False},
            "w/o neg in S-P": {"sp_neg": False},
            "full": {},
        },
        table_rows=("variant",),
        table_columns="dataset",
    ),
    "hscl-wdelta": Scenario(
        name="hscl-wdelta",
        description="HSCL Fig. 4 left: AUROC against the sampling threshold w_delta of Eq. (7) in {.2, ..., .8}, "
        "normal class 0 only (the paper's 'plane') x 9 known-anomaly classes, gamma_p = gamma_l = .05",
        methods=("hscl",),
        gamma_p=(0.05,),
        gamma_l=(0.05,),
        normal_classes=(0,),
        variants={f"w_delta={w}": {"w_delta": w} for w in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)},
        table_rows=("variant",),
        table_columns="dataset",
    ),
    "hscl-prototypes": Scenario(
        name="hscl-prototypes",
        description="HSCL Fig. 4 right: AUROC against the number of prototypes K in {1, 2, 4, 8}, "
        "10 normal x 9 known-anomaly classes, gamma_p = gamma_l = .05",
        methods=("hscl",),
        gamma_p=(0.05,),
        gamma_l=(0.05,),
        variants={f"K={k}": {"n_prototypes": k} for k in (1, 2, 4, 8)},
        table_rows=("variant",),
        table_columns="dataset",
    ),
    "scenario3": Scenario(
        name="scenario3",
        description="HSCL Scenario-3 (Table 4): all of the profile's dataset (CIFAR-10) is normal, another "
        "dataset (the paper: down-sampled ImageNet) gives labeled anomalies at gamma_l, and each test dataset "
        "(CIFAR-100, SVHN, LSUN, ImageNet) is one set of test anomalies: one row per test dataset. Pass the "
        "datasets you have with --labeled-dataset and --test-datasets (names or ImageFolder paths).",
        methods=("hscl", "csi", "deepsad"),
        gamma_p=(0.0,),
        gamma_l=(0.05,),
        cross=CrossDatasets(labeled="imagenet", test=("cifar100", "svhn", "lsun", "imagenet")),
        table_columns="test_dataset",
    ),
    # The MIL-convex paper (Sec. 4): unsupervised one-class, the unlabeled training set polluted from all
    # other classes, no labels at all. Rows: method and gamma; columns: the normal class (Table 1).
    "contamination": Scenario(
        name="contamination",
        description="MIL-convex Tables 1-2: unsupervised one-class classification, 10 normal classes, the "
        "unlabeled training set contaminated from all other classes at gamma_p in {.02, .05, .10}, no labels",
        methods=("milconvex", "csi", "msc"),
        gamma_p=(0.02, 0.05, 0.10),
        gamma_l=(0.0,),
        table_rows=("method", "gamma_p"),
        table_columns="normal_class",
    ),
    # Table 3: which of Eq. (10)'s parts train, at gamma = .05 (see methods/milconvex.py for the reading).
    "milconvex-ablation": Scenario(
        name="milconvex-ablation",
        description="MIL-convex Table 3: {Rot}, {Rot + Mean}, {Rot + ADL} and all components, unsupervised "
        "one-class, 10 normal classes, gamma_p = .05",
        methods=("milconvex",),
        gamma_p=(0.05,),
        gamma_l=(0.0,),
        variants={
            "Rot": {"lambda_conv": 0.0, "mean_shift": False},
            "Rot + Mean": {"lambda_conv": 0.0, "mean_shift": True},
            "Rot + ADL": {"lambda_conv": 1.0, "mean_shift": False},
            "all": {"lambda_conv": 1.0, "mean_shift": True},
        },
        table_rows=("variant",),
        table_columns="normal_class",
    ),
    # CADet (paper 004): experiments of their own (orchestrator/cadet_experiments.py), one training per trial
    # and many rows. normal_class c: the in-distribution is class c and the classes after it (digits 0-4 in
    # quick, all of CIFAR-10 in paper); c = 0 unless --normal-classes asks for more. Axis `training`: CADet's
    # contrastive pre-training or a supervised classifier's features (the paper's two kinds of rows).
    "twosample": Scenario(
        name="twosample",
        description="CADet Tables 1-2: MMD and MMD-CC two-sample tests with the learned similarity, in-distribution "
        "samples against unknown classes, other datasets and PGD examples, sample sizes 3-20: detection AUROC, "
        "and rejection rates at alpha = .05 (in `extra`)",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        runner="orchestrator.cadet_experiments:run_twosample",
        axes={"training": ("contrastive", "supervised")},
        table_rows=("test_dataset", "variant"),
        table_columns="sample_size",
    ),
    "adversarial": Scenario(
        name="adversarial",
        description="CADet Table 4: a classifier trained on the in-distribution data attacked by PGD (L_inf), CW (L2) "
        "and FGSM (L_inf); AUROC of CADet's score_C and of m_in, m_out alone (Table 5) against the attacked images",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        runner="orchestrator.cadet_experiments:run_adversarial",
        axes={"training": ("contrastive", "supervised")},
        table_rows=("test_dataset",),
        table_columns="variant",
    ),
}

PROFILES = {
    "quick": Profile("quick", "digits", "sklearn digits, small CNN, few epochs: minutes on a laptop CPU"),
    "small": Profile("small", "cifar10", "CIFAR-10 at 32x32, a quarter-width ResNet-18, a few epochs: minutes "
                     "per trial on one CPU core (docs/reproduction.md)"),
    "paper": Profile("paper", "cifar10", "CIFAR-10 and the papers' hyperparameters: for a GPU cluster"),
}


def trial_key(trial: dict) -> str:
    """Stable hash of a trial's canonical JSON (sorted keys): same experiment, same key."""
    return hashlib.sha256(json.dumps(trial, sort_keys=True).encode()).hexdigest()[:20]


def method_params(method: str, profile: str, overrides: dict | None = None) -> dict:
    """The method's full config as plain data: paper defaults < profile overrides < user overrides."""
    cls = get_method(method)
    params = dataclasses.asdict(cls.Config())
    params.update(cls.profiles.get(profile, {}))
    for key, value in (overrides or {}).items():
        if key in params:
            params[key] = value
    # Building the config validates the values the dataclass itself checks.
    return dataclasses.asdict(cls.Config(**params))


def expand(
    scenario: Scenario,
    profile: Profile,
    *,
    methods: list[str] | None = None,
    seeds: list[int] = (0,),
    num_classes: int,
    dataset: str | None = None,
    normal_classes: list[int] | None = None,
    anomaly_classes: list[int] | str | None = None,
    overrides: dict | None = None,
    val_fraction: float = 0.05,
    gamma_p: list[float] | None = None,
    gamma_l: list[float] | None = None,
    method_overrides: dict[str, dict] | None = None,
    cross_labeled: str | None = None,
    cross_test: list[str] | None = None,
) -> list[dict]:
    """Every trial of a scenario, in a stable order. Pure: no data is read, nothing is run.

    ``gamma_p`` / ``gamma_l`` replace the scenario's own axes (e.g. to run one column of a table).
    ``overrides`` apply to every method that has the key; ``method_overrides[m]`` to method m only
    (e.g. a search's best parameters). ``anomaly_classes="next"`` gives each normal class one known
    anomaly class, (normal + 1) mod num_classes: a slice with every normal class at a tenth of the cost.
    """
    methods = list(methods or scenario.methods)
    normals = list(normal_classes if normal_classes is not None else scenario.normal_classes or range(num_classes))
    next_class = anomaly_classes == "next"
    anomalies = anomaly_classes if anomaly_classes is not None and not next_class else scenario.anomaly_classes
    anomalies = list(anomalies if anomalies is not None else range(num_classes))
    params = {m: method_params(m, profile.name, {**(overrides or {}), **(method_overrides or {}).get(m, {})})
              for m in methods}
    for name, values in (scenario.variants or {}).items():
        for m in methods:
            unknown = set(values) - set(params[m])
            if unknown:
                raise ValueError(f"variant '{name}' sets {sorted(unknown)}, which method {m} does not have")

    trials = []
    variants = scenario.variants or {None: {}}
    if scenario.cross is not None:  # no class grid: every normal image is used, classes play no part
        normals, anomalies = [None], [None]
    axes = scenario.axes or {}
    axis_values = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    grid = itertools.product(methods, variants, seeds, normals, gamma_l or scenario.gamma_l,
                             scenario.gamma_l_normal or [None], gamma_p or scenario.gamma_p, axis_values)
    for method, variant, seed, normal, g_l, g_ln, g_p, axis in grid:
        g_ln = g_l if g_ln is None else g_ln
        # With no labeled anomalies the known class plays no part: one trial, anomaly_class None.
        known = [a for a in anomalies if a != normal] if g_l > 0 and normal is not None else [None]
        if next_class and known != [None]:
            known = [(normal + 1) % num_classes]
        for anomaly in known:
            trials.append(
                {
                    "scenario": scenario.name,
                    "profile": profile.name,
                    "dataset": dataset or profile.dataset,
                    "method": method,
                    "variant": variant,
                    "normal_class": None if normal is None else int(normal),
                    "anomaly_class": None if anomaly is None else int(anomaly),
                    "gamma_p": float(g_p),
                    "gamma_l": float(g_l),
                    "gamma_l_normal": float(g_ln),
                    "val_fraction": float(val_fraction),
                    "seed": int(seed),
                    "params": {**params[method], **variants[variant]},
                    **({"runner": scenario.runner} if scenario.runner else {}),
                    **({"test_datasets": list(cross_test)} if scenario.runner and cross_test else {}),
                    **({"axes": axis} if axis else {}),
                    **({"cross": {"labeled": cross_labeled or scenario.cross.labeled,
                                  "test": list(cross_test or scenario.cross.test)}} if scenario.cross else {}),
                }
            )
    return trials
