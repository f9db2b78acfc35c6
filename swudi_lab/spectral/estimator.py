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
from .linalg import symmetric_eigh

__all__ = ["Eig", "SVD", "eigh", "svd", "check_normal_equation", "spectral_estimate", "filtered_solve",
           "numerical_rank_tolerance", "filter_factors", "eigenbasis_estimate", "EigenbasisEstimate"]

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

    ``dtype`` (e.g. ``torch.float64``) selects the precision of the decomposition. The routine is
    the fastest exact one measured for C's device and size (:func:`~swudi_lab.spectral.linalg.symmetric_eigh`).
    """
    C = _tensor("C", C, dtype)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square matrix, got shape {tuple(C.shape)}")
    return Eig(*symmetric_eigh(C))


def svd(A, dtype=None) -> SVD:
    """Thin SVD of A with singular values descending."""
    A = _tensor("A", A, dtype)
    if A.ndim != 2:
        raise ValueError(f"A must be a matrix, got shape {tuple(A.shape)}")
    U, sigma, Vh = torch.linalg.svd(A, full_matrices=False)
    return SVD(U, sigma, Vh.T)


def numerical_rank_tolerance(lam: torch.Tensor, floor: float = EIGEN_FLOOR) -> float:
    """``max(floor, d eps lambda_max)`` for eigenvalues ``lam`` of a (d, d) PSD matrix: at or below
    it an eigenvalue is round-off (the numerical null space)."""
    if lam.numel() == 0:
        return floor
    return max(floor, float(lam.numel() * torch.finfo(lam.dtype).eps * lam.max().clamp_min(0)))


def filter_factors(filt: Filter, lam: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, f / lambda)`` on the whole spectrum from one evaluation of the filter (validated finite);
    ``tol`` is the null-space tolerance of :meth:`Filter.over_lambda`."""
    if not isinstance(filt, Filter):
        raise ValueError(f"filt must be a swudi_lab.spectral.Filter, got {type(filt).__name__}")
    if not torch.isfinite(lam).all():
        raise ValueError(f"lam contains NaN or Inf; cannot evaluate {filt}")
    f, f_over_lam = filt.evaluate(lam, tol)
    if not torch.isfinite(f).all():
        raise ValueError(f"filter {filt} produced non-finite factors")
    return f, f_over_lam


def _columns(X: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """``X[:, keep]``: X itself, a view of its first ``count`` columns, or a gathered copy."""
    if count == keep.numel():
        return X
    if bool(keep[:count].all()):  # a prefix (top-K on descending eigenvalues): a view, no copy
        return X[:, :count]
    return X[:, keep]


class EigenbasisEstimate(NamedTuple):
    """:func:`eigenbasis_estimate`'s result: the estimate and what the report reads from the eigenbasis."""

    theta: torch.Tensor  # (d_out, d_in)
    f: torch.Tensor  # (d_in,) the factors on the whole spectrum
    k: int  # directions with f_k != 0
    quad_before: float | None  # tr(theta0 C theta0^T) - 2 tr(theta0 D^T) (0 without theta0)
    quad_after: float | None  # the same at theta_f


def eigenbasis_estimate(lam: torch.Tensor, V: torch.Tensor, rhs: torch.Tensor, d_out: int, f: torch.Tensor,
                        f_over_lam: torch.Tensor, *, projections: torch.Tensor | None = None,
                        losses: bool = False, start_energy: float | None = None) -> EigenbasisEstimate:
    """``theta_f = theta0 + [(D V) diag(f / lambda) - (theta0 V) diag(f)] V^T`` over the kept columns.

    Args:
        lam, V: ``C = V diag(lam) V^T`` (lam as computed, not clipped).
        rhs: ``[D; theta0]`` stacked, (2 d_out, d_in), or ``D`` alone (d_out, d_in) for ``theta0 = 0``.
        f, f_over_lam: :func:`filter_factors` on ``lam``.
        projections: ``rhs V`` when the caller already has it (a rank rule needed it); else only the
            kept columns (``f != 0`` or ``f / lambda != 0``) are projected, as one product ``[D; theta0] V_k``.
        losses: also return the quadratic part ``q(theta) = tr(theta C theta^T) - 2 tr(theta D^T)`` at
            ``theta0`` and ``theta_f``, from the eigenbasis (``a_k = theta0 q_k``, ``b_k = D q_k``,
            ``c_k = theta_f q_k - a_k``)::

                q(theta0)  = sum_k lam_k ||a_k||^2 - 2 <theta0, D>_F
                q(theta_f) = q(theta0) + sum_{k kept} lam_k (2 <a_k, c_k> + ||c_k||^2) - 2 <c_k, b_k>

            The only product they add is ``theta0 V_d`` over the dropped columns (``lam_k ||a_k||^2``
            there), none with ``projections``, with ``start_energy`` or when nothing is dropped.
        start_energy: ``sum_k lam_k ||a_k||^2 = tr(theta0 C theta0^T)`` when the caller has it, so that
            V need hold only the kept columns (a top-K prefix) even with ``losses``.

    Cost: one (rows, d_in) x (d_in, K) product and one (d_out, K) x (K, d_in) product. Memory: the
    (rows, K) projections and the output.
    """
    keep = (f != 0) | (f_over_lam != 0)
    count = int(keep.sum())
    start = rhs.shape[0] > d_out
    Vk = _columns(V, keep, count)
    P = _columns(projections, keep, count) if projections is not None else rhs @ Vk
    fk, ok = _columns(f[None], keep, count)[0], _columns(f_over_lam[None], keep, count)[0]
    B = P[:d_out]
    coeff = B * ok  # D q_k f_k / lambda_k
    if start:
        A = P[d_out:]
        coeff.addcmul_(A, fk, value=-1)  # - f_k theta0 q_k
    quad_before = quad_after = None
    if losses:
        lk = _columns(lam[None], keep, count)[0]
        change = (lk * coeff.pow(2).sum(0)).sum() - 2 * (coeff * B).sum()
        if start:
            theta0 = rhs[d_out:]
            change = change + 2 * (lk * (A * coeff).sum(0)).sum()
            energy = (lk * A.pow(2).sum(0)).sum() if start_energy is None else start_energy
            if count < keep.numel() and start_energy is None:
                drop = ~keep
                Vd = V[:, count:] if bool(drop[count:].all()) else V[:, drop]  # a suffix (top-K): a view
                Ad = projections[d_out:, drop] if projections is not None else theta0 @ Vd
                energy = energy + (lam[drop] * Ad.pow(2).sum(0)).sum()
            quad_before = float(energy - 2 * (theta0 * rhs[:d_out]).sum())
        else:
            quad_before = 0.0
        quad_after = quad_before + float(change)
    theta = torch.addmm(rhs[d_out:], coeff, Vk.T) if start else coeff @ Vk.T
    return EigenbasisEstimate(theta, f, int((f != 0).sum()), quad_before, quad_after)


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

    Returns the (d_out, d_in) estimate, computed by :func:`eigenbasis_estimate`: directions with
    ``f_k = 0`` are skipped entirely, so a top-K filter costs O(d_out d_in K) after the decomposition.
    """
    C, D, theta0 = check_normal_equation(C, D, theta0, dtype=dtype)
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor!r}")
    lam, V = eig if eig is not None else eigh(C)
    lam, V = lam.to(C), V.to(C)
    # the filter sees the whole spectrum (top-K ranks it); f / lambda may be > 0 where f = 0 = lambda
    f, f_over_lam = filter_factors(filt, lam, numerical_rank_tolerance(lam, floor))
    rhs = D if theta0 is None else torch.cat([D, theta0])
    return eigenbasis_estimate(lam, V, rhs, D.shape[0], f, f_over_lam).theta


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
    _, over = filter_factors(filt, lam, floor)  # one evaluation, validated finite
    weights = over * sigma  # f / sigma = (f / lambda) sigma, 0 where sigma = 0
    coeff = U.T @ b
    coeff = coeff * (weights if b.ndim == 1 else weights[:, None])
    return V @ coeff
