"""Classic discrete ill-posed test problems with known solutions (Hansen's Regularization Tools).

Each problem discretizes a first-kind Fredholm integral equation

    g(s) = integral K(s, t) f(t) dt

into ``A x = b`` with an exact solution ``x_true`` (the discretized ``f``) and exact data
``b_exact = A x_true`` (so the discrete problem is consistent to round-off; the continuous ``g``
is matched to discretization error, which the tests check). The singular values of ``A`` decay
to zero, which is what makes the naive (pseudoinverse) solution of noisy data useless and a
spectral filter necessary (docs/design.md, "the noisy inverse problem view").

=========  ===================================================  ===============================
problem    kernel / solution                                    decay of sigma_k
=========  ===================================================  ===============================
shaw       1-D image restoration, K = (cos s + cos t)^2         severe (exponential)
           (sin u / u)^2, u = pi (sin s + sin t); f = two
           Gaussians; midpoint quadrature on [-pi/2, pi/2]
deriv2     Green's function of d^2/ds^2 on [0, 1]: K = s (t-1)  mild (sigma_k ~ k^-2)
           for s < t, t (s-1) otherwise; Galerkin, box basis
phillips   K = phi(s - t), f = phi, phi(x) = 1 + cos(pi x / 3)  moderate
           on |x| < 3 (else 0), on [-6, 6]; Galerkin, box basis
gravity    vertical gravity surveying, K = d (d^2 +            severe
           (s - t)^2)^(-3/2); f = sin(pi t) + sin(2 pi t) / 2
=========  ===================================================  ===============================

All problems are square (n, n) and symmetric, returned in float64 (the teaching precision).
Reference: P. C. Hansen, "Regularization Tools version 4.0 for Matlab 7.3",
Numer. Algorithms 46 (2007) 189-194.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Problem", "PROBLEMS", "make_problem", "shaw", "deriv2", "phillips", "gravity"]

DTYPE = torch.float64


@dataclass(frozen=True)
class Problem:
    """A discrete ill-posed problem ``A x = b`` with its exact solution.

    Fields: ``A`` (n, n), ``b_exact`` (n,) = ``A @ x_true``, ``x_true`` (n,), ``name``,
    ``grid`` (n,) the points ``t_j`` where ``x_true`` lives (for plotting).
    """

    A: torch.Tensor
    b_exact: torch.Tensor
    x_true: torch.Tensor
    name: str
    grid: torch.Tensor | None = None


def _check_n(n, minimum: int = 2) -> int:
    if isinstance(n, bool) or not float(n).is_integer() or int(n) < minimum:
        raise ValueError(f"n must be an integer >= {minimum}, got {n!r}")
    return int(n)


def _midpoints(a: float, b: float, n: int) -> torch.Tensor:
    h = (b - a) / n
    return a + h * (torch.arange(n, dtype=DTYPE) + 0.5)


def _problem(A, x, name, grid) -> Problem:
    A = 0.5 * (A + A.T)  # these kernels are symmetric; remove round-off asymmetry
    return Problem(A, A @ x, x, name, grid)


def shaw(n: int = 64) -> Problem:
    """Shaw's 1-D image restoration problem, midpoint quadrature with ``h = pi / n``.

    ``A_ij = h K(s_i, s_j)`` with ``K(s, t) = (cos s + cos t)^2 (sin u / u)^2``,
    ``u = pi (sin s + sin t)``, ``s_i = -pi/2 + (i - 1/2) h``;
    ``x_j = 2 exp(-6 (t_j - 0.8)^2) + exp(-2 (t_j + 0.5)^2)``. Severely ill-posed.
    Returns a :class:`Problem` with ``A`` (n, n) symmetric.
    """
    n = _check_n(n)
    h = math.pi / n
    t = _midpoints(-math.pi / 2, math.pi / 2, n)
    c, s = t.cos(), t.sin()
    u = math.pi * (s[:, None] + s[None, :])
    sinc = torch.where(u == 0, torch.ones_like(u), u.sin() / torch.where(u == 0, torch.ones_like(u), u))
    A = h * ((c[:, None] + c[None, :]) * sinc) ** 2
    x = 2 * torch.exp(-6 * (t - 0.8) ** 2) + torch.exp(-2 * (t + 0.5) ** 2)
    return _problem(A, x, "shaw", t)


def deriv2(n: int = 64, example: int = 1) -> Problem:
    """Second-derivative problem: ``g = f''``-inverse, Galerkin with normalized box functions.

    Kernel (Green's function of ``d^2/ds^2`` with ``g(0) = g(1) = 0``):
    ``K(s, t) = s (t - 1)`` for ``s < t``, ``t (s - 1)`` otherwise, on [0, 1], ``h = 1 / n``::

        A_ij = h^2 (j - 1/2) ((i - 1/2) h - 1)            for j < i (symmetric)
        A_ii = h^2 ((i^2 - i + 1/4) h - (i - 2/3))

    ``x_j = h^(-1/2) integral over cell j of f``: example 1 ``f(t) = t``
    (``g(s) = (s^3 - s) / 6``), example 2 ``f(t) = exp(t)`` (``g(s) = exp(s) + (1 - e) s - 1``).
    Mildly ill-posed (``sigma_k ~ k^-2``). Returns a :class:`Problem`, ``A`` (n, n) symmetric.
    """
    n = _check_n(n)
    if example not in (1, 2):
        raise ValueError(f"example must be 1 or 2, got {example!r}")
    h = 1.0 / n
    i = torch.arange(1, n + 1, dtype=DTYPE)
    lower = h**2 * (i[None, :] - 0.5) * ((i[:, None] - 0.5) * h - 1)  # valid for j < i
    A = torch.tril(lower, -1)
    A = A + A.T + torch.diag(h**2 * ((i**2 - i + 0.25) * h - (i - 2.0 / 3.0)))
    left, right = (i - 1) * h, i * h
    if example == 1:
        x = (right**2 - left**2) / 2 / math.sqrt(h)
    else:
        x = (right.exp() - left.exp()) / math.sqrt(h)
    return _problem(A, x, f"deriv2(example={example})" if example != 1 else "deriv2", _midpoints(0, 1, n))


def _phillips_phi2(x: torch.Tensor) -> torch.Tensor:
    """Second antiderivative of ``phi`` (zero left of -3): exact cell integrals of phi(s - t)."""
    c = math.pi / 3
    inside = (x + 3) ** 2 / 2 - (torch.cos(c * x) + 1) / c**2
    return torch.where(x < -3, torch.zeros_like(x), torch.where(x > 3, 18 + 6 * (x - 3), inside))


def phillips(n: int = 64) -> Problem:
    """Phillips' problem, Galerkin with normalized box functions on [-6, 6], ``h = 12 / n``.

    ``phi(x) = 1 + cos(pi x / 3)`` for ``|x| < 3``, else 0; ``K(s, t) = phi(s - t)``, ``f = phi``,
    ``g(s) = (6 - |s|)(1 + cos(pi s / 3) / 2) + 9 / (2 pi) sin(pi |s| / 3)``::

        A_ij = (1/h) double integral over cells i, j of phi(s - t)
             = (Phi2(d + h) - 2 Phi2(d) + Phi2(d - h)) / h,   d = (i - j) h
        x_j  = h^(-1/2) integral over cell j of phi

    with ``Phi2`` the second antiderivative of phi. For ``n`` divisible by 4 this is Hansen's
    closed form. Returns a :class:`Problem`, ``A`` (n, n) symmetric Toeplitz.
    """
    n = _check_n(n)
    h = 12.0 / n
    d = (torch.arange(n, dtype=DTYPE)[:, None] - torch.arange(n, dtype=DTYPE)[None, :]) * h
    A = (_phillips_phi2(d + h) - 2 * _phillips_phi2(d) + _phillips_phi2(d - h)) / h
    c = math.pi / 3
    edges = (-6 + h * torch.arange(n + 1, dtype=DTYPE)).clamp(-3, 3)
    phi1 = edges + torch.sin(c * edges) / c  # antiderivative of phi on [-3, 3]
    x = (phi1[1:] - phi1[:-1]) / math.sqrt(h)
    return _problem(A, x, "phillips", _midpoints(-6, 6, n))


def gravity(n: int = 64, depth: float = 0.25) -> Problem:
    """Gravity surveying, midpoint quadrature on [0, 1] (Hansen's example 1).

    ``A_ij = (1/n) depth (depth^2 + (s_i - t_j)^2)^(-3/2)``, ``s_i = t_i = (i - 1/2) / n``,
    ``x_j = sin(pi t_j) + sin(2 pi t_j) / 2``. Smaller ``depth`` is better conditioned.
    Returns a :class:`Problem`, ``A`` (n, n) symmetric Toeplitz.
    """
    n = _check_n(n)
    if not (isinstance(depth, (int, float)) and depth > 0):
        raise ValueError(f"depth must be > 0, got {depth!r}")
    t = _midpoints(0, 1, n)
    A = depth / n / (depth**2 + (t[:, None] - t[None, :]) ** 2) ** 1.5
    x = torch.sin(math.pi * t) + 0.5 * torch.sin(2 * math.pi * t)
    return _problem(A, x, "gravity", t)


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "shaw": shaw,
    "deriv2": deriv2,
    "phillips": phillips,
    "gravity": gravity,
}
"""Test problems by name; one line here makes a problem reachable from the demo and notebooks."""


def make_problem(name: str, n: int = 64, **params) -> Problem:
    """Build a test problem by name, e.g. ``make_problem("shaw", 64)``; unknown names raise."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; known: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](n, **params)
