"""Noise models for the toy lab: white noise, eigen-dependent noise, and merge proxy noise.

Three ways data go wrong (docs/design.md, "the noisy inverse problem view"):

1. :func:`white_noise` -- ``b = b_exact + e`` with i.i.d. Gaussian ``e``, at a relative level
   ``||e|| / ||b_exact||`` or a signal-to-noise ratio ``SNR = 20 log10(||b_exact|| / ||e||)`` dB.
2. :func:`eigen_noise` -- noise whose variance depends on the eigen-direction:
   ``e = sum_k nu_k z_k u_k`` with ``nu_k^2 = s0^2 + s1^2 lambda_k^alpha`` (white floor ``s0``
   plus a part that grows with the eigenvalue), the model behind the Wiener filter.
3. :func:`merge_proxy` -- the noise of model merging: task-vector rows stand in for a layer's
   unknown true inputs, so the normal equation built from them is perturbed:
   ``D q_k = lambda_k r_k + xi_k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..spectral.estimator import eigh
from ..spectral.wudi import as_task_stack, interference_operator
from ..registry import checked_count as _count
from ..registry import checked_number as _positive
from .operators import _generator, random_orthogonal

__all__ = ["NoisyData", "white_noise", "noise_variances", "eigen_noise", "MergeProxy", "merge_proxy",
           "random_merge_proxy"]

DTYPE = torch.float64


def _as_tensor(name: str, x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        t = t.to(DTYPE)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


@dataclass(frozen=True)
class NoisyData:
    """Noisy data ``b = b_exact + e``: ``b`` and ``e`` have the shape of ``b_exact``.

    ``std`` is the per-entry standard deviation used, ``level`` the requested relative noise
    (``E ||e||^2 = level^2 ||b_exact||^2``) and ``noise_norm`` the realized ``||e||`` (what the
    discrepancy principle needs).
    """

    b: torch.Tensor
    e: torch.Tensor
    std: float
    level: float

    @property
    def noise_norm(self) -> float:
        """Realized noise norm ``||e||``."""
        return float(self.e.norm())


def white_noise(b_exact, level: float | None = None, *, snr_db: float | None = None, seed=0,
                exact: bool = False) -> NoisyData:
    """Add white Gaussian noise: ``b = b_exact + e``, ``e_i ~ N(0, std^2)`` i.i.d.

    Give either ``level = ||e|| / ||b_exact||`` (relative noise, e.g. 1e-3) or ``snr_db`` with
    ``SNR = 20 log10(||b_exact|| / ||e||)``, i.e. ``level = 10^(-snr_db / 20)``. Then
    ``std = level ||b_exact|| / sqrt(m)`` so that ``E ||e||^2 = level^2 ||b_exact||^2`` (m = number
    of entries); ``exact=True`` rescales e so that ``||e|| = level ||b_exact||`` exactly
    (Hansen's convention). ``seed``: int or ``torch.Generator``. Returns :class:`NoisyData`.
    """
    b_exact = _as_tensor("b_exact", b_exact)
    if (level is None) == (snr_db is None):
        raise ValueError(f"give exactly one of level or snr_db, got level={level!r}, snr_db={snr_db!r}")
    if level is not None:
        level = _positive("level", level, allow_zero=True)
    else:
        try:
            snr = float(snr_db)
        except (TypeError, ValueError):
            raise ValueError(f"snr_db must be a number, got {snr_db!r}") from None
        if not math.isfinite(snr):
            raise ValueError(f"snr_db must be finite, got {snr_db!r}")
        level = 10 ** (-snr / 20)
    if b_exact.numel() == 0:
        raise ValueError("b_exact is empty")
    std = level * float(b_exact.norm()) / math.sqrt(b_exact.numel())
    z = torch.randn(b_exact.shape, generator=_generator(seed), dtype=b_exact.dtype)
    e = z * std
    if exact and float(z.norm()) > 0:
        e = z * (level * b_exact.norm() / z.norm())
    return NoisyData(b_exact + e, e, std, level)


def noise_variances(lam, s0: float, s1: float = 0.0, alpha: float = 1.0) -> torch.Tensor:
    """Per-direction noise variances ``nu_k^2 = s0^2 + s1^2 lambda_k^alpha`` (same shape as lam).

    ``s0`` is a white floor, ``s1, alpha`` a part that scales with the eigenvalue (for ``A x = b``
    use ``lambda = sigma^2``). Negative eigenvalues (round-off) count as 0.
    """
    lam = _as_tensor("lam", lam)
    s0, s1 = _positive("s0", s0, allow_zero=True), _positive("s1", s1, allow_zero=True)
    alpha = _positive("alpha", alpha, allow_zero=True)
    return s0**2 + s1**2 * lam.clamp_min(0) ** alpha


def eigen_noise(basis, lam, s0: float, s1: float = 0.0, alpha: float = 1.0, *, rows: int | None = None,
                seed=0) -> torch.Tensor:
    """Noise in an eigenbasis: ``e = basis diag(nu) z``, ``nu_k^2 = s0^2 + s1^2 lambda_k^alpha``.

    Args:
        basis: (m, r) orthonormal columns -- ``U`` of ``A = U diag(sigma) V^T`` (then
            ``lambda = sigma^2`` and ``u_k^T e ~ N(0, nu_k^2)``), or the eigenvectors ``Q`` of C.
        lam: (r,) eigenvalues matching the columns of ``basis``.
        rows: if given, return ``rows`` independent noise vectors as a (rows, m) matrix
            ``Z diag(nu) basis^T``: noise for the right-hand side D of a merge layer, whose
            column along ``q_k`` is ``xi_k ~ N(0, nu_k^2 I)`` (so ``D q_k = lambda_k r_k + xi_k``).
        seed: int or ``torch.Generator``.

    Returns (m,) when ``rows`` is None, else (rows, m). Noise lives in ``range(basis)``.
    """
    basis = _as_tensor("basis", basis)
    if basis.ndim != 2:
        raise ValueError(f"basis must be an (m, r) matrix, got shape {tuple(basis.shape)}")
    nu = noise_variances(lam, s0, s1, alpha).to(basis.dtype).sqrt()
    if nu.ndim != 1 or nu.numel() != basis.shape[1]:
        raise ValueError(f"lam must have {basis.shape[1]} entries (columns of basis), got shape {tuple(nu.shape)}")
    g = _generator(seed)
    if rows is None:
        return basis @ (nu * torch.randn(nu.numel(), generator=g, dtype=basis.dtype))
    rows = _count("rows", rows, 1)
    return (torch.randn(rows, nu.numel(), generator=g, dtype=basis.dtype) * nu) @ basis.T


@dataclass(frozen=True)
class MergeProxy:
    """A merge layer whose truth is known, built from noisy task-vector proxies.

    Fields (N experts, d_out x d_in layer):
        theta_star (d_out, d_in): the true merged update.
        inputs (N, n_samples, d_in): clean inputs ``X_i`` of each task (rows).
        taus_clean (N, d_out, d_in): ``theta_star P_i``, ``P_i`` the projector on rows of ``X_i``.
        taus (N, d_out, d_in): noisy proxies ``taus_clean + E_i`` (what a merge method sees).
        C (d_in, d_in), D (d_out, d_in): built from ``taus`` by ``interference_operator``.
        lam (d_in,), Q (d_in, d_in): ``C = Q diag(lam) Q^T``, lam descending.
        xi (d_out, d_in): proxy noise ``D - theta_star C``; its column along ``q_k`` is ``xi_k``.
    """

    theta_star: torch.Tensor
    inputs: torch.Tensor
    taus_clean: torch.Tensor
    taus: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    lam: torch.Tensor
    Q: torch.Tensor
    xi: torch.Tensor

    def error(self, theta) -> float:
        """Relative error ``||theta - theta_star||_F / ||theta_star||_F``."""
        theta = _as_tensor("theta", theta).to(self.theta_star)
        if theta.shape != self.theta_star.shape:
            raise ValueError(f"theta must have shape {tuple(self.theta_star.shape)}, got {tuple(theta.shape)}")
        return float((theta - self.theta_star).norm() / self.theta_star.norm())


def merge_proxy(theta_star, inputs, noise: float = 0.1, *, seed=0) -> MergeProxy:
    """Merge proxy noise: task vectors stand in for the true inputs, so ``D q_k = lambda_k r_k + xi_k``.

    The model (docs/design.md, "the noisy inverse problem view"). Task i has clean inputs
    ``X_i`` (rows, (n_samples, d_in)); fine-tuning moves the weights only along those inputs
    (gradient updates are sums of outer products ``delta x^T``) and makes expert i agree with
    the truth there, so its clean task vector is ``tau_i = theta* P_i`` with ``P_i`` the
    orthogonal projector on the row space of ``X_i``. Then ``(tau_i - theta*) tau_i^T = 0`` and
    ``theta*`` solves the normal equation ``theta C = D`` of the clean task vectors exactly.

    WUDI never sees ``X_i``: it uses the rows of the (noisy) task vectors as proxies for them,
    ``tau_i = theta* P_i + E_i`` with ``||E_i||_F = noise ||theta* P_i||_F`` (E_i Gaussian).
    Building ``C = sum tau_i^T tau_i / n_i`` and ``D = sum tau_i tau_i^T tau_i / n_i`` from the
    proxies gives, with ``C = Q diag(lambda) Q^T`` and ``r_k = theta* q_k``::

        D q_k = lambda_k r_k + xi_k,        xi = D - theta* C   (proxy noise)

    The pseudoinverse returns ``r_k + xi_k / lambda_k``: the small eigenvalues (directions seen
    only through the noise) amplify it, and a filter ``f_k`` trades the bias ``(1 - f_k) r_k``
    against the variance ``f_k xi_k / lambda_k``. In directions seen only through the noise
    both ``xi_k`` and ``lambda_k`` scale like ``noise^2``, so the pseudoinverse error does not
    shrink as the noise does (measured on :func:`random_merge_proxy`: relative error 0.36 at
    noise 0.1, 0.01 and 0.001), while top-K at ``K = N * rank`` gives about ``0.6 * noise``.

    Args:
        theta_star: (d_out, d_in) truth. inputs: (N, n_samples, d_in) or a list of (n_i, d_in).
        noise: relative proxy noise ``||E_i|| / ||theta* P_i||`` (>= 0).
        seed: int or ``torch.Generator``.
    """
    theta_star = _as_tensor("theta_star", theta_star).to(DTYPE)
    if theta_star.ndim != 2:
        raise ValueError(f"theta_star must be (d_out, d_in), got shape {tuple(theta_star.shape)}")
    noise = _positive("noise", noise, allow_zero=True)
    if isinstance(inputs, (list, tuple)):
        X = [_as_tensor("inputs", x).to(DTYPE) for x in inputs]
    else:
        X = list(_as_tensor("inputs", inputs).to(DTYPE))
    d_in = theta_star.shape[1]
    if not X or any(x.ndim != 2 or x.shape[1] != d_in for x in X):
        raise ValueError(f"inputs must be N >= 1 matrices of shape (n_samples, {d_in}), got "
                         f"{[tuple(x.shape) for x in X]}")
    g = _generator(seed)
    clean, noisy = [], []
    for x in X:
        P = torch.linalg.pinv(x) @ x  # projector on the row space of X_i
        tau = theta_star @ P
        E = torch.randn(tau.shape, generator=g, dtype=DTYPE)
        scale = noise * tau.norm() / E.norm() if noise > 0 else 0.0
        clean.append(tau)
        noisy.append(tau + scale * E)
    taus_clean, taus = torch.stack(clean), as_task_stack(noisy)
    C, D = interference_operator(taus)
    lam, Q = eigh(C)
    inputs_t = torch.stack(X) if len({tuple(x.shape) for x in X}) == 1 else X
    return MergeProxy(theta_star, inputs_t, taus_clean, taus, C, D, lam, Q, D - theta_star @ C)


def random_merge_proxy(d_out: int = 32, d_in: int = 64, n_tasks: int = 8, rank: int = 4,
                       n_samples: int = 16, noise: float = 0.1, *, seed=0) -> MergeProxy:
    """A random :func:`merge_proxy`: each task's inputs span a random ``rank``-dim subspace.

    ``X_i = Z_i B_i^T`` with Gaussian ``Z_i`` (n_samples, rank) and random orthonormal
    ``B_i`` (d_in, rank); ``theta* = G P_S`` with Gaussian ``G`` (d_out, d_in) projected on the
    span S of all inputs (only that part is identifiable from the tasks).
    """
    d_out, d_in = _count("d_out", d_out, 1), _count("d_in", d_in, 1)
    n_tasks, rank = _count("n_tasks", n_tasks, 1), _count("rank", rank, 1)
    n_samples = _count("n_samples", n_samples, 1)
    if rank > d_in:
        raise ValueError(f"rank must be <= d_in = {d_in}, got {rank}")
    g = _generator(seed)
    X = torch.stack([torch.randn(n_samples, rank, generator=g, dtype=DTYPE) @ random_orthogonal(d_in, rank, g).T
                     for _ in range(n_tasks)])
    flat = X.reshape(-1, d_in)
    theta = torch.randn(d_out, d_in, generator=g, dtype=DTYPE) @ (torch.linalg.pinv(flat) @ flat)
    return merge_proxy(theta, X, noise, seed=g)
