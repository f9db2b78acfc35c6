"""The Picard plot: is the data smooth enough for the operator?

With ``A = U diag(sigma) V^T`` the pseudoinverse solution is ``x = sum_k (u_k^T b / sigma_k) v_k``.
The discrete Picard condition holds when the coefficients ``|u_k^T b|`` decay faster than the
singular values ``sigma_k``, so that the ratios ``|u_k^T b| / sigma_k`` stay bounded. For exact
data ``b = A x`` the ratio is exactly ``|v_k^T x|``. Noise ``e`` adds ``u_k^T e``, which does not
decay: where ``|u_k^T b|`` levels off at the noise level the ratios blow up, and a filter must
cut those directions (docs/design.md, "the noisy inverse problem view").
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..spectral.estimator import SVD, _tensor, svd

__all__ = ["Picard", "picard"]


class Picard(NamedTuple):
    """``(sigma, coef, ratio)``, each (r,), ordered by descending ``sigma``."""

    sigma: torch.Tensor  # sigma_k
    coef: torch.Tensor  # |u_k^T b|
    ratio: torch.Tensor  # |u_k^T b| / sigma_k  (inf where sigma_k = 0)


def picard(A, b, *, decomposition: SVD | None = None) -> Picard:
    """Picard plot data: ``(sigma_k, |u_k^T b|, |u_k^T b| / sigma_k)`` for ``A`` (m, n), ``b`` (m,).

    Pass ``decomposition=svd(A)`` to reuse an SVD (A may then be None). Returns a
    :class:`Picard` tuple of three (r,) tensors, ``r = min(m, n)``.
    """
    U, sigma, _ = decomposition if decomposition is not None else svd(A)
    b = _tensor("b", b, U.dtype, U.device)
    if b.ndim != 1 or b.shape[0] != U.shape[0]:
        raise ValueError(f"b must be a vector of length {U.shape[0]} (rows of A), got shape {tuple(b.shape)}")
    coef = (U.T @ b).abs()
    ratio = torch.where(sigma > 0, coef / sigma.where(sigma > 0, torch.ones_like(sigma)),
                        torch.full_like(sigma, float("inf")))
    return Picard(sigma, coef, ratio)
