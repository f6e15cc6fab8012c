"""CADet Table 4's baselines for adversarial detection (../shared/papers/004_fea3bd5cd4f38a35.txt, Sec. 5.1), on
the attacked classifier itself: Hu et al. (2019) tuned on adversarial images, Hu et al. with CADet's
self-calibration (no adversarial image needed), and ODIN tuned on adversarial images.

Hu et al. 2019 ("A new defense against adversarial images: turning a weakness into a strength", NeurIPS; the
criteria as the authors' released detect.py computes them, their CIFAR-10 constants):
- C1, robustness to random noise: ||softmax f(x) - softmax f(x + sigma * N(0, I))||_1, one draw per image,
  sigma = 0.01. An adversarial image sits in a thin misclassified pocket; noise moves its prediction more.
- C2, susceptibility to a targeted attack: the number of SGD steps (learning rate 0.0005 on the cross-entropy
  towards a random other label, inside an L_inf ball of 0.5 around the image, at most 200 steps) until the
  predicted label changes. A natural image is near many adversarial regions; an adversarial one takes longer.
Both are larger for adversarial images. The released code's third criterion (steps of an untargeted attack)
has its threshold at its own cap (1,000) in every configuration, so it never fires: left out.

How the two criteria become one score is what separates the two Hu rows of Table 4:
- "Hu (tuned on adv)": Hu et al. tune their thresholds on adversarial images. # choice: the score is
  z1 + w * z2 (z: standardised by the clean calibration images' mean and std), w from W_GRID chosen for the
  best AUROC between the clean calibration images and their successful attacks by the same attack. The
  calibration images are X_val^(2) (held out from the classifier's training), never the test images.
- "Hu + self-calibration": CADet's modification, "auto-calibration based on the mean and variance of the
  criterions on clean data, similarly to CADet's calibration step". # choice: z1 + z2, the two criteria
  standardised by the clean calibration images' mean and std and added with equal weight, as CADet's gamma
  equalises the variances of m_in and m_out before adding them (Eq. 7).
- "ODIN (tuned on adv)": pytorch-ood's ODIN, temperature and input-perturbation size chosen from ODIN_GRID on the
  same attacked calibration images (Liang et al. tune them on OOD data; here the OOD data is the attack).

Only on the supervised classifier: both methods need a classifier's logits, and the paper's "contrastive" Hu
and ODIN rows (a classifier head on the contrastive encoder, attacked in its own right) have no counterpart
here, where one supervised classifier is attacked in every trial.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

W_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, float("inf"))
"""weights of C2 against C1 tried by "Hu (tuned on adv)"; inf = C2 alone"""
ODIN_GRID = tuple(itertools.product((1.0, 10.0, 100.0, 1000.0), (0.0, 0.0005, 0.001, 0.002, 0.004)))
"""(temperature, eps in [0, 1] pixel units) tried by "ODIN (tuned on adv)"; a subset of ODIN's own grid"""


@contextmanager
def frozen(clf: nn.Module):
    """The classifier in eval mode with its weights out of autograd (input gradients only)."""
    clf.eval()
    flags = [p.requires_grad for p in clf.parameters()]
    for p in clf.parameters():
        p.requires_grad_(False)
    try:
        yield clf
    finally:
        for p, flag in zip(clf.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@torch.no_grad()
def noise_criterion(clf: nn.Module, x: torch.Tensor, sigma: float, generator: torch.Generator,
                    chunk: int = 512) -> torch.Tensor:
    """C1 per image: L1 distance between the softmax of x and of x plus Gaussian noise of std sigma."""
    out = []
    for xb in x.split(chunk):
        noisy = xb + sigma * torch.randn(xb.shape, generator=generator, device=xb.device)
        out.append((clf(xb).softmax(1) - clf(noisy).softmax(1)).abs().sum(1))
    return torch.cat(out)


def random_other_labels(label: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn label other than `label`, per image (the reference's random_label)."""
    return (label + torch.randint(1, k, label.shape, generator=generator, device=label.device)) % k


def targeted_steps(clf: nn.Module, x: torch.Tensor, lr: float, radius: float, cap: int,
                   generator: torch.Generator | None = None, targets: torch.Tensor | None = None,
                   chunk: int = 512) -> torch.Tensor:
    """C2 per image: SGD steps of a targeted cross-entropy attack (towards `targets`, else a random label other
    than the predicted one) until the prediction changes, at most `cap`. Each image's gradient is its own
    (eval-mode network, summed loss), so a batch gives the counts of the reference's one image at a time."""
    counts = []
    for i, xb in enumerate(x.split(chunk)):
        with torch.no_grad():
            logits = clf(xb)
        label = logits.argmax(1)
        target = (random_other_labels(label, logits.shape[1], generator) if targets is None
                  else targets[i * chunk: i * chunk + len(xb)])
        adv, steps = xb.clone(), torch.zeros(len(xb), dtype=torch.long, device=xb.device)
        active = torch.arange(len(xb), device=xb.device)
        for step in range(cap + 1):
            xa = adv[active].requires_grad_(True)
            out = clf(xa)
            still = out.argmax(1) == label[active]
            if step == cap or not still.any():
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(out[still], target[active[still]], reduction="sum"), xa)
            with torch.no_grad():
                rows = active[still]
                moved = (xa[still] - lr * grad[still]).clamp(0, 1)
                adv[rows] = xb[rows] + (moved - xb[rows]).clamp(-radius, radius)
                steps[rows] += 1
            active = rows
        counts.append(steps)
    return torch.cat(counts).double()


def hu_criteria(clf: nn.Module, x: torch.Tensor, s, generator: torch.Generator) -> torch.Tensor:
    """(N, 2): C1 and C2 for every image (float [0, 1])."""
    with frozen(clf):
        c1 = noise_criterion(clf, x, s.hu_noise, generator).double()
        c2 = targeted_steps(clf, x, s.hu_lr, s.hu_radius, s.hu_cap, generator)
    return torch.stack([c1, c2], 1).cpu()


def standardiser(clean_calibration: torch.Tensor):
    """The clean calibration images' mean and std per criterion -> z-scores of any (N, 2) criteria."""
    mean, std = clean_calibration.mean(0), clean_calibration.std(0).clamp_min(1e-12)
    return lambda c: ((c - mean) / std).numpy()


def hu_score(z: np.ndarray, w: float) -> np.ndarray:
    return z[:, 1] if np.isinf(w) else z[:, 0] + w * z[:, 1]


def best_by_auroc(options, score_of, clean, attacked, auroc) -> tuple:
    """The option whose scores separate the clean calibration images from their attacked copies best (first
    on ties)."""
    aurocs = [auroc(score_of(o, clean), score_of(o, attacked)) for o in options]
    i = int(np.argmax(aurocs))
    return options[i], aurocs[i]


def odin_scores(clf: nn.Module, x: torch.Tensor, temperature: float, eps: float, chunk: int = 512) -> np.ndarray:
    """pytorch-ood's ODIN outlier score (higher = more anomalous) on float [0, 1] images."""
    from pytorch_ood.detector import ODIN

    detector = ODIN(clf, temperature=temperature, eps=eps)
    with frozen(clf):
        return torch.cat([detector.predict(xb).detach() for xb in x.split(chunk)]).double().cpu().numpy()
