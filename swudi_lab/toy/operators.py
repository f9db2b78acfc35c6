"""Synthetic operators with a prescribed spectrum, and merge-like operators from task vectors.

A synthetic operator is ``A = U diag(sigma) V^T`` with random orthonormal ``U`` (m, r) and
``V`` (n, r) drawn from a seed (Haar measure) and singular values ``sigma`` (r,) chosen by
the user, so the spectrum is exactly known. The filters act on ``lambda = sigma^2``.

Spectra (descending, ``sigma_1 = scale``):

==============  ==============================================  ============================
spectrum        sigma_k                                         teaches
==============  ==============================================  ============================
polynomial      scale k^-decay                                  mildly ill-posed
exponential     scale exp(-rate (k - 1))                        severely ill-posed
cliff           scale 2^-((k-1)/r), times ``gap`` for k > K     a spectral gap: TSVD at K
==============  ==============================================  ============================

The truth ``x_true = V c`` has coefficients ``c_k = z_k (sigma_k / sigma_1)^smoothness`` with
``z_k ~ N(0, 1)``: a source condition ``x = (A^T A)^(smoothness/2) w``, so exact data
``b_exact = A x_true`` satisfies the discrete Picard condition (``|u_k^T b|`` decays faster
than ``sigma_k``).

A merge-like operator is the interference operator of N random low-rank task vectors plus a
little dense noise (docs/design.md): ``C = sum_i tau_i^T tau_i / n_i`` has about ``N * rank``
large eigenvalues (the tasks' subspaces) above a floor of small ones (the noise), the shape of
spectrum a real merge layer has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import checked_count as _count
from ..registry import checked_number as _positive
from ..spectral.estimator import eigh
from ..spectral.wudi import interference_operator

__all__ = [
    "SyntheticOperator",
    "MergeOperator",
    "random_orthogonal",
    "polynomial_spectrum",
    "exponential_spectrum",
    "cliff_spectrum",
    "SPECTRA",
    "operator_from_spectrum",
    "synthetic_operator",
    "merge_like_operator",
]

DTYPE = torch.float64


@dataclass(frozen=True)
class SyntheticOperator:
    """``A = U diag(sigma) V^T`` with known factors and a truth.

    Fields: ``A`` (m, n), ``U`` (m, r), ``sigma`` (r,) descending, ``V`` (n, r),
    ``x_true`` (n,), ``b_exact`` (m,) = ``A x_true``, ``name``.
    """

    A: torch.Tensor
    U: torch.Tensor
    sigma: torch.Tensor
    V: torch.Tensor
    x_true: torch.Tensor
    b_exact: torch.Tensor
    name: str


@dataclass(frozen=True)
class MergeOperator:
    """The WUDI normal equation ``theta C = D`` of random low-rank task vectors.

    Fields: ``taus`` (N, d_out, d_in), ``C`` (d_in, d_in), ``D`` (d_out, d_in),
    ``lam`` (d_in,) eigenvalues of C descending, ``Q`` (d_in, d_in) eigenvectors (column k is
    ``q_k``), ``name``.
    """

    taus: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    lam: torch.Tensor
    Q: torch.Tensor
    name: str


def _generator(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def random_orthogonal(m: int, r: int | None = None, seed=0) -> torch.Tensor:
    """An (m, r) matrix with orthonormal columns, Haar distributed (QR of a Gaussian, signs fixed).

    ``r`` defaults to ``m`` (a square orthogonal matrix). ``seed``: int or ``torch.Generator``.
    """
    m = _count("m", m, 1)
    r = m if r is None else _count("r", r, 1)
    if r > m:
        raise ValueError(f"r must be <= m = {m}, got {r}")
    G = torch.randn(m, r, generator=_generator(seed), dtype=DTYPE)
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(r, dtype=DTYPE))


def polynomial_spectrum(n: int, decay: float = 2.0, scale: float = 1.0) -> torch.Tensor:
    """``sigma_k = scale * k^-decay``, k = 1..n (n,): mildly ill-posed for small ``decay``."""
    n = _count("n", n, 1)
    decay, scale = _positive("decay", decay, allow_zero=True), _positive("scale", scale)
    return scale * torch.arange(1, n + 1, dtype=DTYPE) ** (-decay)


def exponential_spectrum(n: int, rate: float = 0.5, scale: float = 1.0) -> torch.Tensor:
    """``sigma_k = scale * exp(-rate (k - 1))``, k = 1..n (n,): severely ill-posed."""
    n = _count("n", n, 1)
    rate, scale = _positive("rate", rate, allow_zero=True), _positive("scale", scale)
    return scale * torch.exp(-rate * torch.arange(n, dtype=DTYPE))


def cliff_spectrum(n: int, k: int | None = None, gap: float = 1e-3, scale: float = 1.0) -> torch.Tensor:
    """A spectral gap: ``sigma_j = scale 2^-((j-1)/n)`` for j <= k, times ``gap`` for j > k.

    ``k`` defaults to ``n // 2``; ``gap`` in (0, 1] is the size of the drop. Returns (n,).
    """
    n = _count("n", n, 2)
    k = n // 2 if k is None else _count("k", k, 1)
    if k >= n:
        raise ValueError(f"k must be < n = {n}, got {k}")
    gap, scale = _positive("gap", gap), _positive("scale", scale)
    if gap > 1:
        raise ValueError(f"gap must be in (0, 1], got {gap!r}")
    sigma = scale * 2.0 ** (-torch.arange(n, dtype=DTYPE) / n)
    sigma[k:] *= gap
    return sigma


SPECTRA = {"polynomial": polynomial_spectrum, "exponential": exponential_spectrum, "cliff": cliff_spectrum}
"""Spectrum constructors by name (used by :func:`synthetic_operator`)."""


def operator_from_spectrum(sigma, m: int | None = None, n: int | None = None, *, seed=0,
                           smoothness: float = 1.0, name: str = "custom") -> SyntheticOperator:
    """``A = U diag(sigma) V^T`` (m, n) with random orthonormal U, V and a smooth truth.

    Args:
        sigma: (r,) nonnegative singular values (sorted descending here).
        m, n: shape of A (both default to r; need r <= min(m, n)).
        seed: int or ``torch.Generator`` for U, V and the truth.
        smoothness: ``x_true = V c``, ``c_k = z_k (sigma_k / sigma_1)^smoothness``, z ~ N(0, 1).
    """
    sigma = torch.as_tensor(np.asarray(sigma) if not isinstance(sigma, torch.Tensor) else sigma).to(DTYPE)
    if sigma.ndim != 1 or sigma.numel() == 0:
        raise ValueError(f"sigma must be a non-empty 1-D array, got shape {tuple(sigma.shape)}")
    if not torch.isfinite(sigma).all() or (sigma < 0).any() or sigma.max() == 0:
        raise ValueError("sigma must be finite, >= 0 and not all zero")
    sigma = sigma.sort(descending=True).values
    r = sigma.numel()
    m = r if m is None else _count("m", m, r)
    n = r if n is None else _count("n", n, r)
    smoothness = _positive("smoothness", smoothness, allow_zero=True)
    g = _generator(seed)
    U, V = random_orthogonal(m, r, g), random_orthogonal(n, r, g)
    A = (U * sigma) @ V.T
    c = torch.randn(r, generator=g, dtype=DTYPE) * (sigma / sigma[0]) ** smoothness
    x = V @ c
    return SyntheticOperator(A, U, sigma, V, x, A @ x, name)


def synthetic_operator(kind: str = "exponential", n: int = 64, m: int | None = None, *, seed=0,
                       smoothness: float = 1.0, **spectrum_params) -> SyntheticOperator:
    """A square-or-tall synthetic operator with a named spectrum, e.g.
    ``synthetic_operator("polynomial", 64, decay=2)`` or ``synthetic_operator("cliff", 64, k=20, gap=1e-4)``.

    ``kind`` is one of :data:`SPECTRA`; ``spectrum_params`` go to its constructor. A is (m, n),
    ``m`` defaulting to ``n``.
    """
    if kind not in SPECTRA:
        raise ValueError(f"unknown spectrum kind {kind!r}; known: {', '.join(SPECTRA)}")
    sigma = SPECTRA[kind](n, **spectrum_params)
    label = ", ".join(f"{k}={v}" for k, v in spectrum_params.items())
    return operator_from_spectrum(sigma, m, n, seed=seed, smoothness=smoothness, name=f"{kind}({label})")


def merge_like_operator(d_out: int = 32, d_in: int = 64, n_tasks: int = 8, rank: int = 4,
                        noise: float = 0.05, *, seed=0) -> MergeOperator:
    """The interference operator of N random low-rank task vectors plus dense noise.

    ``tau_i = B_i A_i / ||B_i A_i||_F + noise * E_i / ||E_i||_F`` with Gaussian ``B_i``
    (d_out, rank), ``A_i`` (rank, d_in), ``E_i`` (d_out, d_in); then
    ``C, D = interference_operator(taus)`` (``C = sum tau_i^T tau_i / n_i``, trace N) and
    ``C = Q diag(lam) Q^T``. With ``noise = 0`` C has rank <= ``n_tasks * rank``; noise fills
    the remaining directions with small eigenvalues (about ``noise^2`` times smaller).
    """
    d_out, d_in = _count("d_out", d_out, 1), _count("d_in", d_in, 1)
    n_tasks, rank = _count("n_tasks", n_tasks, 1), _count("rank", rank, 1)
    noise = _positive("noise", noise, allow_zero=True)
    g = _generator(seed)
    low = torch.randn(n_tasks, d_out, rank, generator=g, dtype=DTYPE) @ torch.randn(
        n_tasks, rank, d_in, generator=g, dtype=DTYPE)
    E = torch.randn(n_tasks, d_out, d_in, generator=g, dtype=DTYPE)
    unit = lambda T: T / T.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()  # noqa: E731
    taus = unit(low) + noise * unit(E)
    C, D = interference_operator(taus)
    lam, Q = eigh(C)
    name = f"merge_like(N={n_tasks}, rank={rank}, noise={noise:g})"
    return MergeOperator(taus, C, D, lam, Q, name)
