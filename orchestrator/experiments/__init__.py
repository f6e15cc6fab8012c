"""The kinds of experiment a trial can be, one module each; a scenario names its kind in data
(orchestrator/grid/scenarios.py) and the runner dispatches on it. Adding a kind of experiment is one module
with a `KIND = Kind(...)` (see kind.py) plus one line here plus its scenario."""

from __future__ import annotations

from orchestrator.experiments import adversarial, cross_dataset, one_class, ood_detection, rejection, two_sample
from orchestrator.experiments.kind import Kind

KINDS: dict[str, Kind] = {
    "one_class": one_class.KIND,
    "cross_dataset": cross_dataset.KIND,
    "two_sample": two_sample.KIND,
    "adversarial": adversarial.KIND,
    "rejection": rejection.KIND,
    "ood_detection": ood_detection.KIND,
    "transforms_curve": ood_detection.CURVE_KIND,
}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown experiment kind '{name}'; known kinds: {', '.join(KINDS)}") from None
