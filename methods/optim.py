"""Optimisers and learning-rate schedules the methods share (methods/trainer.py applies them per step).

A schedule is a function (step, steps_per_epoch) -> multiplier of the initial learning rate:
- `warmup_cosine(warmup_epochs, epochs)`: linear warm-up (Goyal et al.), then half a cosine to 0, the
  schedule of HSCL Sec. 4.2, MIL-convex Sec. 4.1 and CADet Sec. 3 (SimCLR's);
- `step_decay(milestone)`: x 0.1 from epoch `milestone` on (Deep SAD: 150 of 200 epochs).
`make_optimizer` builds Adam, SGD with momentum or LARS (SimCLR's, CADet's pre-training).
"""

from __future__ import annotations

import math

import torch

from methods.trainer import Schedule

OPTIMIZERS = ("lars", "sgd", "adam")


def warmup_cosine(warmup_epochs: int, epochs: int) -> Schedule:
    """Linear ramp to 1 over the warm-up epochs, then half a cosine down to 0 at the last step."""

    def factor(step: int, steps_per_epoch: int) -> float:
        warmup, total = warmup_epochs * steps_per_epoch, epochs * steps_per_epoch
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def step_decay(milestone: int, gamma: float = 0.1) -> Schedule:
    """1 before epoch `milestone` (0-based), gamma from it on; milestone 0 = never."""
    return lambda step, steps_per_epoch: gamma if 0 < milestone <= step // steps_per_epoch else 1.0


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as SimCLR implements it: for a weight matrix w with gradient g,
        g' = g + wd * w,   trust = eta * ||w|| / ||g'||,   v = momentum * v + lr * trust * g',   w = w - v.
    Biases and BatchNorm parameters (1-D) get neither weight decay nor the trust ratio (plain SGD momentum).
    One step is a handful of multi-tensor (`torch._foreach_*`) calls over all parameters of a group instead
    of ~10 kernels per parameter (a ResNet-50 has 161 tensors: ~1,600 launches a step); the arithmetic is the
    per-parameter formula above, in the same order (tests/test_hotpath.py checks it against that formula)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, eta: float = 0.001):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "v" not in self.state[p]:
                    self.state[p]["v"] = torch.zeros_like(p)
            matrices = [p for p in params if p.ndim > 1]
            vectors = [p for p in params if p.ndim <= 1]
            if matrices:
                g = torch._foreach_add([p.grad for p in matrices], matrices, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(matrices))
                g_norm = torch.stack(torch._foreach_norm(g))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                torch._foreach_mul_(g, list(trust.unbind()))
                self._momentum_update(matrices, g, group)
            if vectors:
                self._momentum_update(vectors, [p.grad for p in vectors], group)
        return loss

    def _momentum_update(self, params: list, grads: list, group: dict) -> None:
        """v = momentum * v + lr * g;  w = w - v, for all of `params` at once."""
        v = [self.state[p]["v"] for p in params]
        torch._foreach_mul_(v, group["momentum"])
        torch._foreach_add_(v, grads, alpha=group["lr"])
        torch._foreach_sub_(params, v)


def make_optimizer(name: str, params: list, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                   lars_eta: float = 0.001, nesterov: bool = False) -> torch.optim.Optimizer:
    """"adam" (weight decay on every parameter), "sgd" or "lars" (weight decay on weight matrices only, as SimCLR).
    Parameters on CUDA get torch's fused Adam / SGD (one kernel for all parameters, step counter on the device:
    no host sync); on the CPU the default (foreach) implementations, so CPU numbers stay as they were."""
    fused = bool(params) and all(p.is_cuda for p in params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "sgd":
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)
    raise ValueError(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
