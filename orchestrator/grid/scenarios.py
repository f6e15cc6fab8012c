"""Scenarios and profiles as plain data.

A *scenario* is a paper's experimental grid: which kind of experiment (orchestrator/experiments), which
methods, which classes and ratios, which named variants and extra axes, and its table layout. A *profile*
says at what scale to run it: ``quick`` (digits, small CNN, a laptop CPU in minutes), ``small`` (CIFAR-10
on a CPU) or ``paper`` (CIFAR-10, the papers' hyperparameters, a GPU cluster). orchestrator/planner.py
expands a scenario at a profile into trials.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    methods: tuple[str, ...]
    gamma_p: tuple[float, ...]
    gamma_l: tuple[float, ...]
    # Labeled normals (Scenario-1); None ties them to gamma_l ("both at gamma_l").
    gamma_l_normal: tuple[float, ...] | None = (0.0,)
    # Per-method labeled-normal ratio where the paper's number for that method comes from another protocol
    # ({method: ratio}): HSCL's tables copy Deep SAD's numbers, and Deep SAD's protocol labels no normals.
    gamma_l_normal_of: dict[str, float] | None = None
    # What a label-free method (uses_labels False) does with the grid point's labeled anomalies: "dropped"
    # (it trains on the unlabeled set and the labeled normals only, so gamma_p = 0 is its clean one-class
    # result, as the papers' unsupervised columns are) or "unlabeled" (they stay in as pollution).
    label_free_anomalies: str = "dropped"
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
    # The kind of experiment every trial runs (orchestrator/experiments: one_class, cross_dataset,
    # two_sample, adversarial), the kind's settings this scenario fixes, and extra grid axes over settings.
    kind: str = "one_class"
    settings: dict | None = None
    axes: dict[str, tuple] | None = None
    # The paper's row order for row keys that are not variants (e.g. CADet Table 3's detectors): {key: values}.
    row_order: dict[str, tuple] | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str
    description: str
    # The most grid points one Ray Tune trial runs, one after another, each its own TorchTrainer and row
    # (orchestrator/sweep.py: points_per_tune_trial). Ray's cost is per Tune trial, not per grid point.
    max_points_per_tune_trial: int = 1


SCENARIOS = {
    "scenario2": Scenario(
        name="scenario2",
        description="HSCL Scenario-2 (Table 2): contaminated one-class classification, "
        "10 normal x 9 known-anomaly classes, gamma_p in {0, .05, .10}, gamma_l = .05",
        methods=("hscl", "csi", "deepsad", "deepsvdd", "ocsvm", "iforest", "kde"),
        gamma_p=(0.0, 0.05, 0.10),
        gamma_l=(0.05,),
        # Sec. 4.1: "in addition to a small labeled subset of normal and abnormal samples": X_n and X_a both
        # at gamma_l. Deep SAD's Table 2 numbers come from Deep SAD's own protocol, which labels no normals.
        gamma_l_normal=None,
        gamma_l_normal_of={"deepsad": 0.0},
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
        gamma_l_normal_of={"deepsad": 0.0},  # Table 1's Deep SAD numbers: Deep SAD's protocol, no labeled normals
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
        gamma_l_normal=None,  # the Scenario-2 setting: labeled normals at gamma_l too
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
        gamma_l_normal=None,  # the Scenario-2 setting: labeled normals at gamma_l too
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
        gamma_l_normal=None,  # the Scenario-2 setting: labeled normals at gamma_l too
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
        kind="cross_dataset",
        settings={"labeled": "imagenet", "test": ["cifar100", "svhn", "lsun", "imagenet"]},
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
    # CADet (paper 004): experiments of their own (orchestrator/experiments/two_sample.py, adversarial.py), one
    # training per trial and many rows. normal_class c: the in-distribution is class c and the classes after it
    # (digits 0-4 in quick, all of CIFAR-10 in paper); c = 0 unless --normal-classes asks for more. Axis `training`:
    # CADet's contrastive pre-training or a supervised classifier's features (the paper's two kinds of rows); the
    # profile's settings (sample sizes, attack budgets, classifier) come from orchestrator/experiments/cadet_setup.py.
    "twosample": Scenario(
        name="twosample",
        description="CADet Table 2: MMD and MMD-CC two-sample tests with the learned similarity, in-distribution "
        "samples against unknown classes, other datasets and PGD examples, sample sizes 3-20: detection AUROC, "
        "and rejection rates at alpha = .05 (in `extra`)",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        kind="two_sample",
        axes={"training": ("contrastive", "supervised")},
        table_rows=("test_dataset", "variant"),
        table_columns="sample_size",
    ),
    "adversarial": Scenario(
        name="adversarial",
        description="CADet Table 4: a classifier trained on the in-distribution data attacked by PGD (L_inf), CW (L2) "
        "and FGSM (L_inf); AUROC of CADet's score_C and of m_in, m_out alone (Table 5) against the attacked images, "
        "and of the paper's baselines on the classifier (Hu et al. tuned on adversarial images and self-calibrated, "
        "ODIN tuned on adversarial images)",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        kind="adversarial",
        axes={"training": ("contrastive", "supervised")},
        table_rows=("variant",),
        table_columns="test_dataset",
        row_order={"variant": ("CADet + contrastive", "CADet + supervised", "ODIN (tuned on adv) + supervised",
                               "Hu (tuned on adv) + supervised", "Hu + self-calibration + supervised",
                               *(f"{m} + {t}" for m in ("m_in", "m_out") for t in ("contrastive", "supervised")))},
    ),
    "rejection": Scenario(
        name="rejection",
        description="CADet Table 1: rejection rate of h0 at alpha = .05 by MMD and MMD-CC against the sample size n "
        "(the paper's 50-2000, capped per profile), 100 samplings (quick: 20); in-distribution test samples "
        "against held-out training images (the null), a class-prior shift of them, and CIFAR-10.1 or any set "
        "named with --test-datasets where this machine has it (else listed in skipped_shifts)",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        kind="rejection",
        axes={"training": ("contrastive", "supervised")},
        table_rows=("test_dataset", "variant"),
        table_columns="sample_size",
        metric="rejection_rate",
    ),
    "ood-detection": Scenario(
        name="ood-detection",
        description="CADet Table 3: single-image OOD detection; in distribution = some classes of the dataset "
        "(CIFAR-10 0-5, digits 0-4), near OOD = its other classes, far OOD = the MNIST test set and any set named "
        "with --test-datasets; CADet on contrastive and supervised features, and the post-hoc baselines (MSP, "
        "Energy, ODIN, MaxLogit, KL matching, ReAct, Mahalanobis, Residual, ViM; pytorch-ood) on the classifier",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        kind="ood_detection",
        axes={"training": ("contrastive", "supervised")},
        table_rows=("variant",),
        table_columns="test_dataset",
        row_order={"variant": (*(f"{d} + supervised" for d in ("MSP", "Energy", "ODIN", "MaxLogit", "KL Matching",
                                                               "ReAct", "Mahalanobis", "Residual", "ViM", "CADet")),
                               "CADet + contrastive")},
    ),
    "cadet-transforms": Scenario(
        name="cadet-transforms",
        description="CADet Figure 2: AUROC of CADet (contrastive) against the number of transformations n_trs "
        "(2-20, paper profile 2-50), near and far OOD as in ood-detection; one pre-training per trial, "
        "recalibrated at each n_trs",
        methods=("cadet",),
        gamma_p=(0.0,),
        gamma_l=(0.0,),
        normal_classes=(0,),
        kind="transforms_curve",
        settings={"baselines": []},
        axes={"training": ("contrastive",)},
        table_rows=("variant",),
        table_columns="test_dataset",
    ),
}

PROFILES = {
    # choice: quick trials last 0.3-1.8 s and each Ray Tune trial costs about 0.06 s of a slot's wall time, half
    # of it CPU the driver and Ray's daemons take from the trials on a 2-core laptop (a placement group, registry
    # look-ups, the controller's loop): efficiency 0.889. Up to 5 points a Tune trial: 0.922, wall 521 -> 458 s
    # (benchmarks/quick_sweep.py).
    # small and paper trials last minutes: one point each, so the scheduler balances them at the finest grain.
    "quick": Profile("quick", "digits", "sklearn digits, small CNN, few epochs: minutes on a laptop CPU",
                     max_points_per_tune_trial=5),
    "small": Profile("small", "cifar10", "CIFAR-10 at 32x32, a quarter-width ResNet-18, a few epochs: minutes "
                     "per trial on one CPU core (docs/reproduction.md)"),
    "paper": Profile("paper", "cifar10", "CIFAR-10 and the papers' hyperparameters: for a GPU cluster"),
}
