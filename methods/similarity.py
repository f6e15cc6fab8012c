"""The one feature-similarity scorer: cosine similarity of test features to a bank of training features.

Several detection scores reduce to it: CSI's max cosine similarity (times the feature norm), the
MIL-convex paper's Eq. (11), MSC's k-NN in the mean-shifted space (with k = 2). The (N, M) similarity
matrix is never held whole: queries go through in chunks, so 10,000 test images against 5,000
training images on a GPU or CPU cost a (chunk, M) block at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_cosine(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 2048) -> torch.Tensor:
    """queries (N, D), bank (M, D), any norms -> (N, k): the k largest cosine similarities of each
    query to the bank rows, largest first. Both sides are L2-normalised here."""
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} needs 1 <= k <= {bank.shape[0]} (the bank size)")
    bank = F.normalize(bank.float(), dim=1)
    out = [(F.normalize(q.float(), dim=1) @ bank.T).topk(k, dim=1).values for q in queries.split(chunk)]
    return torch.cat(out) if out else queries.new_zeros((0, k), dtype=torch.float32)


def max_cosine(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """(N, D), (M, D) -> (N,): the largest cosine similarity of each query to the bank (1-NN)."""
    return topk_cosine(queries, bank, 1, chunk).squeeze(1)
