"""What every kind of experiment does with a method: pick the device, build the method from the trial,
fit it (refusing a diverged loss), and name the device in the row."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch

from methods.base import TrainSet
from methods.registry import get_method
from orchestrator.grid.trial import Trial


def pick_device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs (none when it asked for none).
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()}cores"


def build_method(trial: Trial, device: torch.device):
    """The trial's method with its whole Config, seeded by the trial's training seed."""
    cls = get_method(trial.method)
    return cls(cls.Config(**trial.params), device, trial.training_seed)


def fit_method(method, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> tuple[dict, float]:
    """-> (the method's fit summary, train seconds). A non-finite final loss is an error, not a row."""
    t0 = time.perf_counter()
    summary = method.fit(train, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    if summary.get("epochs", 0) > 0 and not np.isfinite(summary.get("final_loss", 0.0)):
        raise FloatingPointError(f"training diverged: final loss {summary['final_loss']}")
    return summary, seconds


def fit_fields(summary: dict, train_seconds: float, device: torch.device) -> dict:
    """The row fields every kind reports about its training."""
    return {"epochs": int(summary.get("epochs", 0)), "world_size": int(summary.get("world_size", 1)),
            "final_loss": float(summary.get("final_loss", float("nan"))), "train_seconds": train_seconds,
            "device": device_name(device)}


def fit_choices(summary: dict) -> dict:
    """What a fit chose or measured beyond the common fields (a KDE's bandwidth, an OC-SVM's nu and gamma,
    the pixel features kept): scalars of the method's summary, for the row's `extra`."""
    common = {"epochs", "world_size", "final_loss", "history", "fit_seconds"}
    return {k: v for k, v in summary.items()
            if k not in common and isinstance(v, (bool, int, float, str)) and not isinstance(v, complex)}
