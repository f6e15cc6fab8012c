"""What a kind of experiment is to the planner and the runner (the registry is in __init__.py).

A kind is one module with a `KIND = Kind(...)`: the function that runs one trial and, where the kind has
them, its settings per profile and the check that the data can supply a trial before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.data.datasets import DataSource
from orchestrator.grid.trial import Trial

# (trial, data, on_epoch) -> the measured part of the trial's result row; a kind that measures several
# things per training returns them as "rows" (one result row each), and a kind with per-sample test
# scores returns "test_scores" (kept in the score store).
RunTrial = Callable[[Trial, DataSource, Callable | None], dict]


@dataclass(frozen=True)
class Kind:
    run: RunTrial
    class_grid: bool = True
    """trials span normal x known anomaly classes; False: one trial per method, ratio and seed"""
    settings: Callable[[str], dict] | None = None
    """profile -> the kind's own settings at that profile, whole (they enter the trial and its key)"""
    check: Callable[[Trial, DataSource], None] | None = None
    """before any work: raise SplitError / DatasetError if the data cannot supply the trial"""
    with_datasets: Callable[[dict, str | None, list[str] | None], dict] | None = None
    """(settings, --labeled-dataset, --test-datasets) -> settings; None: the kind takes no other datasets"""
