"""The spectral estimator: one eigendecomposition, any filter.

For the normal equation ``theta C = D`` of a merge layer (docs/design.md)::

    C = V diag(lambda) V^T
    theta_f = theta0 (I - V F V^T) + D V diag(f / lambda) V^T,     F = diag(f)

so that, per eigen-direction, ``theta_f q_k = (1 - f_k) theta0 q_k + f_k (D q_k) / lambda_k``.
``f = 1`` is the pseudoinverse ``D C^+``; ``f = 0`` returns ``theta0``.

For a least-squares problem ``A x = b`` (the toy lab) the same filters act through the SVD
``A = U diag(sigma) V^T`` on ``lambda = sigma^2``::

    x_f = V diag(f(sigma^2) / sigma) U^T b

which is the spectral estimator for the normal equation ``A^T A x = A^T b`` with ``x0 = 0``.

Eigenvalues are clipped at 0 before the filter sees them. ``f / lambda`` is computed by
:meth:`Filter.over_lambda`: filters that vanish like lambda at 0 (Landweber, exponential,
Tikhonov, SWUDI) divide exactly (their limit at lambda = 0 is finite); the others
(pseudoinverse, top-K) treat eigenvalues at or below a tolerance as the null space (``f / lambda
= 0`` there), never dividing by round-off. In :func:`spectral_estimate` the tolerance is
``max(1e-8, d eps lambda_max)`` (``eps`` of the compute dtype: the numerical-rank tolerance of
``torch.linalg.pinv`` and ``matrix_rank``). Without the relative part a rank-deficient C in
float32 (one expert, or ``d_in > d_out``) has eigenvalues of order ``eps lambda_max`` that are pure
round-off, and ``D q_k / lambda_k`` along them swamps the merge. Pass a precomputed
:class:`Eig` / :class:`SVD` to sweep many filters for the cost of one decomposition.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .filters import Filter

__all__ = ["Eig", "SVD", "eigh", "svd", "check_normal_equation", "spectral_estimate", "filtered_solve",
           "numerical_rank_tolerance"]

EIGEN_FLOOR = 1e-8


class Eig(NamedTuple):
    """Eigendecomposition ``C = V diag(values) V^T`` with ``values`` in descending order."""

    values: torch.Tensor  # (d,)
    vectors: torch.Tensor  # (d, d), column k is q_k


class SVD(NamedTuple):
    """Thin SVD ``A = U diag(sigma) V^T`` with ``sigma`` descending."""

    U: torch.Tensor  # (m, r)
    sigma: torch.Tensor  # (r,)
    V: torch.Tensor  # (n, r)


def _tensor(name: str, x, dtype=None, device=None) -> torch.Tensor:
    if x is None:
        return None
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def check_normal_equation(C, D, theta0=None, *, dtype=None, symmetry_tol: float = 1e-5):
    """Validate and convert ``(C, D, theta0)`` to tensors of one dtype and device.

    C must be square (d_in, d_in) and symmetric to ``symmetry_tol`` (relative to its largest
    entry), D must be (d_out, d_in), theta0 (if given) the shape of D. Raises ``ValueError``
    naming the argument otherwise.
    """
    C = _tensor("C", C, dtype)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square (d_in, d_in) matrix, got shape {tuple(C.shape)}")
    scale = C.abs().max().clamp_min(torch.finfo(C.dtype).tiny)
    asym = (C - C.T).abs().max() / scale
    if asym > symmetry_tol:
        raise ValueError(f"C must be symmetric; max |C - C^T| / max |C| = {asym.item():.3g}")
    D = _tensor("D", D, C.dtype, C.device)
    if D.ndim != 2 or D.shape[1] != C.shape[0]:
        raise ValueError(f"D must be (d_out, {C.shape[0]}) to match C, got shape {tuple(D.shape)}")
    if theta0 is not None:
        theta0 = _tensor("theta0", theta0, C.dtype, C.device)
        if theta0.shape != D.shape:
            raise ValueError(f"theta0 must have D's shape {tuple(D.shape)}, got {tuple(theta0.shape)}")
    return C, D, theta0


def eigh(C, dtype=None) -> Eig:
    """Eigendecomposition of the symmetric matrix C, eigenvalues descending.

    ``dtype`` (e.g. ``torch.float64``) selects the precision of the decomposition.
    """
    C = _tensor("C", C, dtype)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square matrix, got shape {tuple(C.shape)}")
    values, vectors = torch.linalg.eigh(C)
    return Eig(values.flip(0), vectors.flip(1))


def svd(A, dtype=None) -> SVD:
    """Thin SVD of A with singular values descending."""
    A = _tensor("A", A, dtype)
    if A.ndim != 2:
        raise ValueError(f"A must be a matrix, got shape {tuple(A.shape)}")
    U, sigma, Vh = torch.linalg.svd(A, full_matrices=False)
    return SVD(U, sigma, Vh.T)


def _factors(filt: Filter, lam: torch.Tensor) -> torch.Tensor:
    if not isinstance(filt, Filter):
        raise ValueError(f"filt must be a swudi_lab.spectral.Filter, got {type(filt).__name__}")
    f = filt(lam)
    if not torch.isfinite(f).all():
        raise ValueError(f"filter {filt} produced non-finite factors")
    return f


def numerical_rank_tolerance(lam: torch.Tensor, floor: float = EIGEN_FLOOR) -> float:
    """``max(floor, d eps lambda_max)`` for eigenvalues ``lam`` of a (d, d) PSD matrix: at or below
    it an eigenvalue is round-off (the numerical null space)."""
    if lam.numel() == 0:
        return floor
    return max(floor, float(lam.numel() * torch.finfo(lam.dtype).eps * lam.max().clamp_min(0)))


def spectral_estimate(C, D, theta0, filt: Filter, *, eig: Eig | None = None,
                      floor: float = EIGEN_FLOOR, dtype=None) -> torch.Tensor:
    """``theta_f = theta0 (I - V F V^T) + D V diag(f / lambda) V^T`` for one filter.

    Args:
        C: (d_in, d_in) symmetric PSD operator. D: (d_out, d_in) right-hand side.
        theta0: (d_out, d_in) start, or ``None`` for zeros.
        filt: a :class:`~swudi_lab.spectral.filters.Filter`.
        eig: precomputed ``eigh(C)`` (skips the decomposition; C is then only validated).
        floor: absolute eigenvalue floor for ``f / lambda`` (see :meth:`Filter.over_lambda`);
            the tolerance used is ``max(floor, d eps lambda_max)``, see the module docstring.
        dtype: compute dtype (default: C's).

    Returns the (d_out, d_in) estimate. Directions with ``f_k = 0`` are skipped entirely, so a
    top-K filter costs O(d_out d_in K) after the decomposition.
    """
    C, D, theta0 = check_normal_equation(C, D, theta0, dtype=dtype)
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor!r}")
    lam, V = eig if eig is not None else eigh(C)
    lam, V = lam.to(C), V.to(C)
    f = _factors(filt, lam)  # the filter sees the whole spectrum (top-K ranks it)
    f_over_lam = filt.over_lambda(lam, numerical_rank_tolerance(lam, floor))  # f_k / lambda_k (may be > 0 where f_k = 0 = lambda_k)
    keep = (f != 0) | (f_over_lam != 0)
    f, Vk, f_over_lam = f[keep], V[:, keep], f_over_lam[keep]
    coeff = (D @ Vk) * f_over_lam  # D q_k f_k / lambda_k
    if theta0 is not None:
        coeff = coeff - (theta0 @ Vk) * f  # - f_k theta0 q_k
        return theta0 + coeff @ Vk.T
    return coeff @ Vk.T


def filtered_solve(A, b, filt: Filter, *, decomposition: SVD | None = None,
                   floor: float = EIGEN_FLOOR ** 2, dtype=None) -> torch.Tensor:
    """Filtered least-squares solution ``x_f = V diag(f(sigma^2) / sigma) U^T b``.

    Args:
        A: (m, n) operator; b: (m,) or (m, k) data.
        filt: filter applied to ``lambda = sigma^2`` (eigenvalues of ``A^T A``).
        decomposition: precomputed :func:`svd` of A.
        floor: floor on ``sigma^2`` for ``f / sigma^2`` (default 1e-16): pseudoinverse-like
            filters drop directions with sigma <= 1e-8, which are at round-off level in float64;
            filters that vanish like lambda at 0 (Tikhonov, exponential, Landweber) stay exact.

    Returns x of shape (n,) or (n, k). ``pseudoinverse()`` gives the minimum-norm
    least-squares solution; ``tikhonov(alpha)`` gives ``(A^T A + alpha I)^-1 A^T b``.
    """
    U, sigma, V = decomposition if decomposition is not None else svd(A, dtype)
    b = _tensor("b", b, U.dtype, U.device)
    if b.shape[0] != U.shape[0]:
        raise ValueError(f"b has {b.shape[0]} rows but A has {U.shape[0]}")
    lam = sigma**2
    _factors(filt, lam)  # validates the filter's output
    weights = filt.over_lambda(lam, floor) * sigma  # f / sigma = (f / lambda) sigma, 0 where sigma = 0
    coeff = U.T @ b
    coeff = coeff * (weights if b.ndim == 1 else weights[:, None])
    return V @ coeff
