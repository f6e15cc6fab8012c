"""Attacks on the classifier CADet's `adversarial` and `two_sample` experiments use, untargeted, on float
images in [0, 1] with their true labels (CADet Sec. 5.1 after Abusnaina et al. 2021).

Written here in a few lines of torch rather than taken from a library: torchattacks 3.5.1 (last release 2023)
pins requests~=2.25.1 and would downgrade requests/urllib3 for everything else in the environment (and ships
a top-level `robustbench`), and adversarial-robustness-toolbox needs `packaging` installed without declaring
it. PGD and FGSM are the textbook updates; CW is Carlini-Wagner's L2 objective
||delta||^2 + c * max(Z_y - max_{j != y} Z_j, -kappa) optimised with Adam, keeping the smallest successful
perturbation, with delta projected onto an L2 ball of the budget (our reading of Abusnaina et al.'s
"CW: L2, delta = 0.10"). Adversarial images stay float (not re-quantised to 8 bits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.data.splits import stable_seed


def _generator(device, *parts) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stable_seed(*parts))


def _input_grad(clf: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(clf(x), y, reduction="sum"), x)
    return grad


def fgsm(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2014), L_inf: x + eps * sign(grad_x CE)."""
    return (x + eps * _input_grad(clf, x, y).sign()).clamp(0, 1)


def pgd(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD (Madry et al. 2017), L_inf: a uniform random start in the eps-ball, then `steps` signed-gradient
    ascent steps on the cross-entropy, each projected back onto the ball and the pixel range."""
    noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
    adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step * _input_grad(clf, adv, y).sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


def cw_l2(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: float, lr: float, steps: int,
          c: float = 1.0, kappa: float = 0.0) -> torch.Tensor:
    """Carlini-Wagner L2 (2017): minimise ||delta||^2 + c * max(Z_y - max_{j != y} Z_j, -kappa) with Adam, delta
    projected onto the L2 ball of radius `budget`; returns the smallest successful perturbation seen,
    else the last iterate."""
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    best, best_norm = x.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
    is_true = F.one_hot(y, clf.fc.out_features).bool()
    for _ in range(steps):
        adv = (x + delta).clamp(0, 1)
        logits = clf(adv)
        true = logits[is_true]
        other = logits.masked_fill(is_true, float("-inf")).amax(1)
        norm = (adv - x).flatten(1).norm(dim=1)
        with torch.no_grad():  # keep the smallest successful example so far
            better = (other > true) & (norm < best_norm)
            best[better], best_norm[better] = adv[better], norm[better]
        loss = (norm**2 + c * (true - other + kappa).clamp_min(0)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            scale = (budget / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1)
            delta.mul_(scale.view(-1, *[1] * (x.ndim - 1)))
    last = (x + delta.detach()).clamp(0, 1)
    return torch.where(torch.isinf(best_norm).view(-1, *[1] * (x.ndim - 1)), last, best)


def attack(name: str, clf: nn.Module, x01: torch.Tensor, y: torch.Tensor, s, seed: int,
           chunk: int = 512) -> torch.Tensor:
    """One of "pgd", "cw", "fgsm" with the profile's budget, in chunks; float [0, 1] out."""
    clf.eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    gen = _generator(x01.device, "attack", name, seed)
    out = []
    for xb, yb in zip(x01.split(chunk), y.split(chunk), strict=True):
        if name == "pgd":
            out.append(pgd(clf, xb, yb, s.pgd_eps, s.pgd_step, s.pgd_steps, gen))
        elif name == "cw":
            out.append(cw_l2(clf, xb, yb, s.cw_l2, s.cw_lr, s.cw_steps, s.cw_c, s.cw_kappa))
        elif name == "fgsm":
            out.append(fgsm(clf, xb, yb, s.fgsm_eps))
        else:
            raise ValueError(f"unknown attack '{name}'; known: pgd, cw, fgsm")
    for p in clf.parameters():
        p.requires_grad_(True)
    return torch.cat(out).detach()


def budget_of(name: str, s) -> dict:
    return {"pgd": {"norm": "Linf", "eps": s.pgd_eps, "step": s.pgd_step, "steps": s.pgd_steps},
            "cw": {"norm": "L2", "eps": s.cw_l2, "lr": s.cw_lr, "steps": s.cw_steps, "c": s.cw_c},
            "fgsm": {"norm": "Linf", "eps": s.fgsm_eps}}[name]
