"""From what a user asked for to the trials to run: the one planner that sweep and search both use.

`plan(request)` validates every input before any work (scenario, profile, methods, dataset, classes, the
kind's datasets, whether the data can supply every grid point) and returns the trials; `expand` is the
pure part, a scenario at a profile -> trials, in a stable order, with no data read:

>>> from orchestrator.grid.scenarios import PROFILES, SCENARIOS
>>> trials = expand(SCENARIOS["scenario2"], PROFILES["quick"], methods=["hscl"], seeds=[0],
...                 num_classes=10, normal_classes=[0], anomaly_classes=[1, 2])
>>> len(trials), sorted({t.gamma_p for t in trials}), trials[0].kind
(6, [0.0, 0.05, 0.1], 'one_class')
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

from methods.registry import METHODS, get_method
from orchestrator.cli import UserError
from orchestrator.data.datasets import DatasetError, DataSource, check_shift_set, is_shift_set
from orchestrator.experiments import get_kind
from orchestrator.grid.scenarios import PROFILES, SCENARIOS, Profile, Scenario
from orchestrator.grid.trial import Trial


def method_params(method: str, profile: str, overrides: dict | None = None) -> dict:
    """The method's full config as plain data: paper defaults < profile overrides < user overrides."""
    cls = get_method(method)
    params = dataclasses.asdict(cls.Config())
    params.update(cls.profiles.get(profile, {}))
    params.update({k: v for k, v in (overrides or {}).items() if k in params})
    return dataclasses.asdict(cls.Config(**params))  # building the Config checks the values


def _variants(scenario: Scenario, params: dict[str, dict]) -> dict:
    """The scenario's named variants ({None: {}} without any); each must set keys its methods have."""
    for name, values in (scenario.variants or {}).items():
        for method, p in params.items():
            unknown = set(values) - set(p)
            if unknown:
                raise ValueError(f"variant '{name}' sets {sorted(unknown)}, which method {method} does not have")
    return scenario.variants or {None: {}}


def _axis_points(axes: dict | None) -> list[dict]:
    """Every combination of the scenario's extra axes: {"training": ("a", "b")} -> [{"training": "a"}, ...]."""
    axes = axes or {}
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _known_classes(normal: int | None, anomalies: list[int], g_l: float, num_classes: int, next_class: bool):
    """Known anomaly classes of one normal class; with no labeled anomalies the known class plays no part."""
    if g_l <= 0 or normal is None:
        return [None]
    return [(normal + 1) % num_classes] if next_class else [a for a in anomalies if a != normal]


def _labeled_anomalies(scenario: Scenario, method: str, g_l: float) -> str:
    """What the method's training set does with the labeled anomalies (Trial.labeled_anomalies)."""
    if g_l <= 0:
        return "none"
    return "used" if getattr(get_method(method), "uses_labels", True) else scenario.label_free_anomalies


def expand(scenario: Scenario, profile: Profile, *, methods: list[str] | None = None, seeds=(0,),
           num_classes: int, dataset: str | None = None, normal_classes: list[int] | None = None,
           anomaly_classes: list[int] | str | None = None, overrides: dict | None = None,
           method_overrides: dict[str, dict] | None = None, val_fraction: float = 0.05,
           gamma_p: list[float] | None = None, gamma_l: list[float] | None = None,
           settings: dict | None = None) -> list[Trial]:
    """Every trial of a scenario, in a stable order. Pure: no data is read, nothing is run.

    ``gamma_p`` / ``gamma_l`` replace the scenario's own axes (e.g. to run one column of a table).
    ``overrides`` apply to every method that has the key; ``method_overrides[m]`` to method m only
    (e.g. a search's best parameters). ``anomaly_classes="next"`` gives each normal class one known
    anomaly class, (normal + 1) mod num_classes: a slice with every normal class at a tenth of the cost.
    ``settings`` replace the kind's settings (profile < scenario < these < the scenario's axes).
    """
    kind = get_kind(scenario.kind)
    methods = list(methods or scenario.methods)
    params = {m: method_params(m, profile.name, {**(overrides or {}), **(method_overrides or {}).get(m, {})})
              for m in methods}
    variants = _variants(scenario, params)
    base_settings = {**(kind.settings(profile.name) if kind.settings else {}), **(scenario.settings or {}),
                     **(settings or {})}
    next_class = anomaly_classes == "next"
    anomalies = scenario.anomaly_classes if anomaly_classes is None or next_class else anomaly_classes
    anomalies = list(anomalies if anomalies is not None else range(num_classes))
    if kind.class_grid:
        normals = list(normal_classes if normal_classes is not None else scenario.normal_classes or range(num_classes))
    else:
        normals = [None]  # every image of the dataset is normal: classes play no part

    trials = []
    grid = itertools.product(methods, variants, seeds, normals, gamma_l or scenario.gamma_l,
                             scenario.gamma_l_normal or [None], gamma_p or scenario.gamma_p,
                             _axis_points(scenario.axes))
    for method, variant, seed, normal, g_l, g_ln, g_p, axis in grid:
        g_ln = (scenario.gamma_l_normal_of or {}).get(method, g_l if g_ln is None else g_ln)
        for known in _known_classes(normal, anomalies, g_l, num_classes, next_class):
            trials.append(Trial(
                kind=scenario.kind, scenario=scenario.name, profile=profile.name,
                dataset=dataset or profile.dataset, method=method, variant=variant,
                normal_class=None if normal is None else int(normal),
                anomaly_class=None if known is None else int(known),
                gamma_p=float(g_p), gamma_l=float(g_l), gamma_l_normal=float(g_ln),
                val_fraction=float(val_fraction), seed=int(seed),
                labeled_anomalies=_labeled_anomalies(scenario, method, g_l),
                params={**params[method], **variants[variant]}, settings={**base_settings, **axis}))
    return trials


@dataclass(frozen=True)
class Request:
    """What a user asked for: a scenario at a profile, sliced and overridden (the parsed command line)."""

    scenario: str
    profile: str = "quick"
    methods: list[str] | None = None
    dataset: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    normal_classes: list[int] | None = None
    anomaly_classes: list[int] | str | None = None
    gamma_p: list[float] | None = None
    gamma_l: list[float] | None = None
    overrides: dict = field(default_factory=dict)
    method_overrides: dict = field(default_factory=dict)
    val_fraction: float = 0.05
    labeled_dataset: str | None = None
    test_datasets: list[str] | None = None


def _check_names(request: Request) -> tuple[Scenario, Profile, list[str]]:
    if request.scenario not in SCENARIOS:
        raise UserError(f"unknown scenario '{request.scenario}'; choose from: {', '.join(SCENARIOS)}")
    if request.profile not in PROFILES:
        raise UserError(f"unknown profile '{request.profile}'; choose from: {', '.join(PROFILES)}")
    scenario = SCENARIOS[request.scenario]
    methods = list(request.methods or scenario.methods)
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method '{m}'; known methods: {', '.join(METHODS)}")
    return scenario, PROFILES[request.profile], methods


def _kind_datasets(scenario: Scenario, request: Request, source: DataSource) -> tuple[dict, DataSource]:
    """The kind's own datasets the user named (--labeled-dataset, --test-datasets) -> (settings, source)."""
    kind = get_kind(scenario.kind)
    if not (request.labeled_dataset or request.test_datasets):
        names = [n for key in ("labeled", "test") for n in _as_list((scenario.settings or {}).get(key))]
        for name in names:  # the scenario's own datasets: registered under their stored names
            try:
                _, source = source.add(name)
            except DatasetError:
                raise UserError(
                    f"{scenario.name} needs dataset '{name}', which adsweep cannot load by name: pass "
                    "--labeled-dataset (the labeled anomalies; the paper: down-sampled ImageNet) and --test-datasets "
                    "(the test anomalies; the paper: CIFAR-100, SVHN, LSUN, ImageNet), each a known name (cifar100, "
                    "svhn, mnist) or an ImageFolder copy given as imagefolder:/path/to/tree (image files under "
                    "train/<class>/ and test/<class>/, e.g. down-sampled ImageNet or LSUN exported to PNG)") from None
        return {}, source
    if kind.with_datasets is None:
        raise UserError(f"--labeled-dataset and --test-datasets are for scenarios of another kind "
                        f"(scenario3, twosample, rejection, ood-detection), not {scenario.name}")
    labeled, source = source.add(request.labeled_dataset) if request.labeled_dataset else (None, source)
    test = []
    for name in request.test_datasets or []:
        if is_shift_set(name):  # a set read without a training split (CADet's shifts): checked as such
            check_shift_set(name, source)
            test.append(name)
            continue
        stored, source = source.add(name)
        source.check(stored)  # a dataset the user named must exist
        test.append(stored)
    try:
        settings = kind.with_datasets({**(kind.settings(request.profile) if kind.settings else {}),
                                       **(scenario.settings or {})}, labeled, test)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return settings, source


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def plan(request: Request, source: DataSource) -> tuple[list[Trial], DataSource]:
    """Validate everything and expand -> (the trials, the data source that reads their datasets).
    Raises UserError, DatasetError or SplitError with a one-line message before any work."""
    scenario, profile, methods = _check_names(request)
    dataset, source = source.add(request.dataset or profile.dataset)
    source.check(dataset)
    data = source.load(dataset)
    listed = request.anomaly_classes if isinstance(request.anomaly_classes, list) else None  # not 'next'
    for flag, classes in (("--normal-classes", request.normal_classes), ("--anomaly-classes", listed)):
        bad = [c for c in classes or [] if not 0 <= c < data.num_classes]
        if bad:
            raise UserError(f"{flag} {bad}: {dataset} has classes 0..{data.num_classes - 1}")
    settings, source = _kind_datasets(scenario, request, source)
    try:
        trials = expand(scenario, profile, methods=methods, seeds=request.seeds, num_classes=data.num_classes,
                        dataset=dataset, normal_classes=request.normal_classes,
                        anomaly_classes=request.anomaly_classes, overrides=request.overrides,
                        method_overrides=request.method_overrides, val_fraction=request.val_fraction,
                        gamma_p=request.gamma_p, gamma_l=request.gamma_l, settings=settings)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad method parameters: {exc}") from None
    if not trials:
        raise UserError("the grid is empty: check --normal-classes and --anomaly-classes")
    check = get_kind(scenario.kind).check
    for trial in trials if check else []:
        check(trial, source)  # every grid point must be possible before anything runs
    return trials, source
