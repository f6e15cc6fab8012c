"""Contrastive losses the methods share, as pure functions of embeddings.

- `nt_xent`: SimCLR's NT-Xent (Chen et al. 2020, Eq. 1) with one positive per row: HSCL's S-S term (its
  Eq. 1-2), CSI's L_con-SI, MSC's and MIL-convex's L_Mean (MIL-convex Eq. 3 and 7), CADet's pre-training.
- `view_partner`: the positive of each row for the view layout methods/augment.py produces.
- `contrastive_loss`: SimCLR's symmetric loss over [view 0; view 1], optionally with the negatives of every
  DDP rank (CADet Sec. 3, "aggregating the embeddings computed by each GPU") through `gather_rows`, an
  all-gather that carries gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def nt_xent(z: torch.Tensor, partner: torch.Tensor, tau: float) -> torch.Tensor:
    """z (M, D) unit rows, partner (M,) each row's positive; every other row is a negative. Mean over the M rows:
        -log( exp(z_i.z_p(i) / tau) / sum_{j != i} exp(z_i.z_j / tau) )                           # Eq. (1)"""
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))  # (M, M); a row is not its own negative
    return F.cross_entropy(logits, partner)


def view_partner(n_rot: int, b: int, device=None) -> torch.Tensor:
    """For rows laid out as methods.augment.shifted_views gives them with 2 views (row k*2B + v*B + i; n_rot = 1
    is simclr_views' [view 0; view 1]), the row index of each row's positive: same image, same rotation, the
    other view. -> (2 * n_rot * b,)"""
    return torch.arange(2 * n_rot * b, device=device).view(n_rot, 2, b).flip(1).reshape(-1)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each block and returns this rank's block
    (all_reduce, which gloo supports, where torch.distributed.nn's gather needs all_to_all)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]


def gather_rows(z: torch.Tensor) -> torch.Tensor:
    """(M, D) on each rank -> (world * M, D), block r = rank r's rows, differentiable."""
    return torch.cat(_GatherWithGrad.apply(z))


def contrastive_loss(z: torch.Tensor, tau: float, gather: bool = False) -> torch.Tensor:
    """NT-Xent with both views as anchors (SimCLR's symmetric form): z (2b, D) projections, rows [view 0; view 1].
    With gather=True under DDP the rows of every rank join: positives stay within a rank's pairs, every other
    row of the global batch is a negative, so after DDP's gradient averaging the update equals one process
    training on the global batch. Same value on every rank."""
    z = F.normalize(z.float(), dim=1)
    blocks = 1
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        blocks = dist.get_world_size()
        z = gather_rows(z)
    b = z.shape[0] // (2 * blocks)
    return nt_xent(z, view_partner(blocks, b, z.device), tau)
