"""CADet's two-sample tests (Guille-Escuret et al., CADet Sec. 4; ../shared/papers/004_fea3bd5cd4f38a35.txt):
the unbiased MMD estimator with the cosine kernel, Eq. (4), the permutation p-value
(1 + #{MMD_perm >= MMD}) / (n_perm + 1), and MMD-CC (Algorithm 1), whose null distribution comes from splits of
two CLEAN samples S_P^(1) u S_P^(2).

Batched over any leading dimensions (e.g. the samplings of an experiment) and over all permutations at once:
for a pooled kernel matrix K (2n x 2n) and a split into X (the first n of a permutation) and Y (the last n),
    sum_{i != j} H_ij = s^T K s - tr K + 2 sum_i K(x_i, y_i),     s = +1 on X, -1 on Y,
so every permutation costs one (2n,) x (2n, 2n) product and one gather, with no (n_perm, 2n, 2n) copy.

Memory: a batch of S samplings holds S pooled kernels (2n x 2n) and S x n_perm split vectors (2n); at the
paper's largest n (2,000, Table 1) one sampling is ~64 MB of kernel and ~40 MB of splits, so callers size
their batches with `samplings_per_batch`, which keeps a batch under a fixed budget whatever n is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEMORY_BUDGET = 1 << 30
"""bytes a batch of samplings may take (kernels, split signs, permutation orders): 1 GiB"""


def bytes_per_sampling(n: int, n_perm: int) -> int:
    """What one sampling's test costs in memory: the pooled (2n x 2n) float kernel, and per permutation the
    random keys (float), the order (int64), the signs and their product with the kernel (2 floats) over 2n.

    >>> bytes_per_sampling(2000, 500) // 2**20
    99
    """
    two_n = 2 * n
    return 4 * two_n * two_n + n_perm * two_n * (4 + 8 + 4 + 4)


def samplings_per_batch(n: int, n_perm: int, most: int, budget: int = MEMORY_BUDGET) -> int:
    """How many samplings to test at once: at most `most`, and no more than fit in `budget` bytes (at least one).
    Memory then stays under the budget as n grows instead of growing as most x (2n)^2.

    >>> samplings_per_batch(20, 500, 250), samplings_per_batch(2000, 500, 250)
    (250, 10)
    """
    return max(1, min(most, budget // bytes_per_sampling(n, n_perm)))


def cosine_kernel(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """k(x, y) = <x, y> / (||x|| ||y||), the paper's similarity: (..., n, D), (..., m, D) -> (..., n, m)."""
    a = F.normalize(a.float(), dim=-1)
    b = a if b is None else F.normalize(b.float(), dim=-1)
    return a @ b.transpose(-1, -2)


def mmd_u2_split(kernel: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Eq. (4) for splits of a pooled sample: kernel (..., 2n, 2n) over the pool, order (..., P, 2n) a
    permutation of the pool per split (X = its first n rows, Y = its last n, X_i paired with Y_i) -> (..., P).

        MMD_u^2 = 1/(n(n-1)) sum_{i != j} [k(X_i,X_j) + k(Y_i,Y_j) - k(X_i,Y_j) - k(Y_i,X_j)]
                = (s^T K s - tr K + 2 sum_i k(X_i, Y_i)) / (n(n-1)),   s = +1 on X, -1 on Y.
    """
    two_n = kernel.shape[-1]
    n = two_n // 2
    sign = torch.ones(order.shape, dtype=kernel.dtype, device=kernel.device)
    sign[..., n:] = -1
    s = torch.empty_like(sign).scatter_(-1, order, sign)  # (..., P, 2n): +1 where a pool row went to X
    quad = ((s @ kernel) * s).sum(-1)  # s^T K s per split, (..., P)
    trace = kernel.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # (..., 1)
    flat = kernel.flatten(-2)  # (..., 4n^2)
    pair_index = order[..., :n] * two_n + order[..., n:]  # (..., P, n): K[X_i, Y_i]
    pairs = torch.gather(flat.unsqueeze(-2).expand(*order.shape[:-1], flat.shape[-1]), -1, pair_index).sum(-1)
    return (quad - trace + 2 * pairs) / (n * (n - 1))


def mmd_u2(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Eq. (4) from the three blocks (..., n, n) of X_i, Y_i in their given order (X_i paired with Y_i)."""
    n = kxx.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=kxx.device)
    h = kxx + kyy - kxy - kxy.transpose(-1, -2)
    return (h * off).sum((-1, -2)) / (n * (n - 1))


def random_orders(batch: tuple[int, ...], n_perm: int, size: int, generator: torch.Generator | None = None,
                  device=None) -> torch.Tensor:
    """(*batch, n_perm, size) independent uniform random permutations of range(size)."""
    keys = torch.rand(*batch, n_perm, size, generator=generator, device=device)
    return keys.argsort(-1)


def permutation_p_value(est: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """(1 + #{p_i >= est}) / (n_perm + 1) (Sec. 4): est (...), null (..., n_perm) -> (...)."""
    return (1 + (null >= est.unsqueeze(-1)).sum(-1)).to(torch.float64) / (null.shape[-1] + 1)


def mmd_test(fp: torch.Tensor, fq: torch.Tensor, n_perm: int = 500, generator: torch.Generator | None = None):
    """MMD two-sample test of S_P against S_Q (features (..., n, D) each, n >= 2) with the cosine kernel.
    The null: n_perm random splits of S_P u S_Q. -> (p-value (...), est (...), null (..., n_perm))."""
    n = fp.shape[-2]
    pool = torch.cat([fp, fq], dim=-2)  # (..., 2n, D): rows [S_P; S_Q]
    k = cosine_kernel(pool)
    identity = torch.arange(2 * n, device=k.device).expand(*k.shape[:-2], 1, 2 * n)
    est = mmd_u2_split(k, identity).squeeze(-1)
    null = mmd_u2_split(k, random_orders(tuple(k.shape[:-2]), n_perm, 2 * n, generator, k.device))
    return permutation_p_value(est, null), est, null


def mmd_cc_null(fp1: torch.Tensor, fp2: torch.Tensor, n_perm: int = 500,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1's calibration: MMD_u^2 of n_perm random splits of the two CLEAN samples S_P^(1) u S_P^(2)
    (features (..., n, D) each) -> (..., n_perm). S_Q never enters it."""
    n = fp1.shape[-2]
    k = cosine_kernel(torch.cat([fp1, fp2], dim=-2))
    return mmd_u2_split(k, random_orders(tuple(k.shape[:-2]), n_perm, 2 * n, generator, k.device))


def mmd_cc_test(fp1: torch.Tensor, fp2: torch.Tensor, fq: torch.Tensor, n_perm: int = 500,
                generator: torch.Generator | None = None):
    """MMD-CC (Algorithm 1): est = MMD_u^2(S_P^(1), S_Q), null from splits of S_P^(1) u S_P^(2).
    -> (p-value (...), est (...), null (..., n_perm))."""
    est = mmd_u2(cosine_kernel(fp1), cosine_kernel(fq), cosine_kernel(fp1, fq))
    null = mmd_cc_null(fp1, fp2, n_perm, generator)
    return permutation_p_value(est, null), est, null
