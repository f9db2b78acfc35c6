"""Spectral filters: functions that map eigenvalues ``lambda`` of C to factors ``f(lambda)``.

A filter decides, per eigen-direction ``q_k`` of C, how far the estimator moves from the
start ``theta0`` towards the pseudoinverse solution (DESIGN.md §1)::

    theta_f q_k = (1 - f_k) theta0 q_k + f_k (D q_k) / lambda_k

==============  ===================================  ==========================================
filter          f(lambda)                            meaning
==============  ===================================  ==========================================
pseudoinverse   1                                    exact closed form ``D C^+`` (ill-posed)
landweber       1 - (1 - eta lambda)^n               exactly n GD steps with step eta
exponential     1 - exp(-lambda t)                   gradient flow for time t (GD, eta -> 0)
tikhonov        lambda / (lambda + alpha)            ridge regression
top_k           1 on the K largest lambda, else 0    truncated SVD (hard cut)
swudi           (1 - exp(-lambda t)) * top_k         soft + hard (the paper's SWUDI)
wiener          lambda^p / (lambda^p + nu2)          noise-aware shrinkage
==============  ===================================  ==========================================

Every filter is a :class:`Filter`: callable on a 1-D tensor (or numpy array) of eigenvalues
in any order, returning factors of the same shape, type and dtype. Filters multiply
(``exponential(300) * top_k(ratio=0.65)``), and carry a name and parameters for legends and
reports (``str(f)`` gives ``"exponential(t=300)"``). Negative eigenvalues (round-off of a PSD
matrix) are treated as 0.

For a least-squares problem ``A x = b`` the same filters act on ``lambda = sigma^2``, the
eigenvalues of the normal operator ``A^T A`` (see :func:`swudi_lab.spectral.filtered_solve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

__all__ = [
    "Filter",
    "FILTERS",
    "make_filter",
    "pseudoinverse",
    "landweber",
    "exponential",
    "tikhonov",
    "top_k",
    "swudi",
    "wiener",
    "zero",
]


@dataclass(frozen=True)
class Filter:
    """A spectral filter ``f(lambda) -> [0, 1]`` with a name and its parameters.

    ``fn`` receives the eigenvalues as a 1-D float tensor with negatives clipped to 0 and
    returns the factors; :meth:`__call__` handles numpy input and validation.

    ``slope0 = lim_{lambda -> 0} f(lambda) / lambda`` when it is finite (Landweber: ``eta n``,
    exponential: ``t``, Tikhonov: ``1 / alpha``). The estimator needs ``f / lambda``;
    :meth:`over_lambda` divides such filters exactly (no eigenvalue floor), so they stay exact
    (GD equals Landweber) on rank-deficient or ill-conditioned C.
    """

    name: str
    params: dict = field(default_factory=dict)
    fn: Callable[[torch.Tensor], torch.Tensor] = field(repr=False, compare=False, default=None)
    slope0: float | None = field(default=None, repr=False, compare=False)
    over: Callable[[torch.Tensor, float], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def __call__(self, lam):
        """Filter factors ``f(lambda)`` for a 1-D array of eigenvalues (any order)."""
        is_numpy = not isinstance(lam, torch.Tensor)
        t = torch.as_tensor(np.asarray(lam) if is_numpy else lam)
        if t.ndim != 1:
            raise ValueError(f"lam must be 1-D (the eigenvalues), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        if not torch.isfinite(t).all():
            raise ValueError(f"lam contains NaN or Inf; cannot evaluate {self}")
        f = self.fn(t.clamp_min(0))
        return f.cpu().numpy() if is_numpy else f

    def over_lambda(self, lam: torch.Tensor, floor: float) -> torch.Tensor:
        """``f(lambda) / lambda`` as the estimator uses it (lam: 1-D tensor, clipped at 0).

        Filters with a finite ``slope0`` compute their factors without cancellation, so the
        division is exact for every ``lambda > 0`` and ``slope0`` is used at ``lambda = 0``.
        Other filters (pseudoinverse, top-K) divide where ``lambda > floor`` and give 0 at or
        below it: those directions are the numerical null space, as in a numerical pseudoinverse
        (a pseudoinverse-like filter must never divide by round-off).
        """
        lam = lam.clamp_min(0)
        if self.over is not None:
            return self.over(lam, floor)
        if self.slope0 is None:
            return torch.where(lam > floor, self.fn(lam) / lam.clamp_min(floor), torch.zeros_like(lam))
        tiny = torch.finfo(lam.dtype).tiny
        return torch.where(lam > 0, self.fn(lam) / lam.clamp_min(tiny), torch.full_like(lam, self.slope0))

    def __mul__(self, other: "Filter") -> "Filter":
        """Product filter ``f(lambda) = f1(lambda) * f2(lambda)`` (e.g. SWUDI = exp x top-K)."""
        if not isinstance(other, Filter):
            return NotImplemented
        params = {f"{self.name}.{k}": v for k, v in self.params.items()}
        params.update({f"{other.name}.{k}": v for k, v in other.params.items()})
        return Filter(f"{self.name}*{other.name}", params, lambda lam: self.fn(lam) * other.fn(lam),
                      over=_product_over(self, other))

    @property
    def label(self) -> str:
        """Short text for legends and reports, e.g. ``exponential(t=300)``."""
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def __str__(self) -> str:
        return self.label


def _product_over(a: Filter, b: Filter):
    """``(f_a f_b) / lambda``, dividing the factor that vanishes at 0 (if either does) exactly."""
    if a.slope0 is not None or a.over is not None:
        return lambda lam, floor: a.over_lambda(lam, floor) * b.fn(lam)
    if b.slope0 is not None or b.over is not None:
        return lambda lam, floor: b.over_lambda(lam, floor) * a.fn(lam)
    return None


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = (v >= 0) if allow_zero else (v > 0)
    if not math.isfinite(v) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# The filters
# --------------------------------------------------------------------------------------------


def pseudoinverse() -> Filter:
    """``f(lambda) = 1``: the exact closed form ``theta = D C^+`` (no regularization)."""
    return Filter("pseudoinverse", {}, lambda lam: torch.ones_like(lam))


def zero() -> Filter:
    """``f(lambda) = 0``: the estimator returns its start ``theta0``."""
    return Filter("zero", {}, lambda lam: torch.zeros_like(lam))


def landweber(eta: float, n: int) -> Filter:
    """``f(lambda) = 1 - (1 - eta lambda)^n``: exactly ``n`` gradient steps of step ``eta``.

    Gradient descent ``theta <- theta - eta (theta C - D)`` from ``theta0`` gives this filter
    exactly (Landweber iteration). Factors lie in [0, 1] when ``eta * lambda_max <= 1`` and in
    [0, 2) when ``eta * lambda_max < 2`` (GD converges); larger steps diverge. Note that
    ``2 (theta C - D)`` is the WUDI gradient, so GD on the WUDI loss with learning rate ``lr``
    is Landweber with ``eta = 2 lr``.
    """
    eta = _positive("eta", eta)
    n = _count("n", n, 0)

    def fn(lam):
        x = eta * lam
        # 1 - (1 - x)^n without cancellation for small x: -expm1(n log1p(-x)) (valid for x < 1)
        stable = -torch.expm1(n * torch.log1p(-x.clamp_max(0.5)))
        return torch.where(x < 0.5, stable, 1 - (1 - x) ** n)

    return Filter("landweber", {"eta": eta, "n": n}, fn, slope0=eta * n)


def exponential(t: float) -> Filter:
    """``f(lambda) = 1 - exp(-lambda t)``: gradient flow ``d theta/ds = -(theta C - D)`` to time t.

    The limit of :func:`landweber` with ``eta -> 0`` and ``eta * n = t``. The time is not scale
    free: ``kappa = t N / d_in`` (mean eigenvalue times t) is (DESIGN.md, "Scale").
    """
    t = _positive("t", t, allow_zero=True)
    return Filter("exponential", {"t": t}, lambda lam: -torch.expm1(-lam * t), slope0=t)


def tikhonov(alpha: float) -> Filter:
    """``f(lambda) = lambda / (lambda + alpha)``: ridge, ``theta = (D + alpha theta0)(C + alpha I)^-1``."""
    alpha = _positive("alpha", alpha)
    return Filter("tikhonov", {"alpha": alpha}, lambda lam: lam / (lam + alpha), slope0=1 / alpha)


def _top_k_mask(lam: torch.Tensor, k: int | None, ratio: float | None) -> torch.Tensor:
    d = lam.numel()
    kk = math.ceil(ratio * d - 1e-9) if k is None else k  # tolerance: 0.07 * 100 = 7.000000000000001
    if kk > d:
        raise ValueError(f"k={kk} is larger than the number of eigenvalues ({d})")
    order = torch.argsort(lam, descending=True, stable=True)
    mask = torch.zeros_like(lam)
    mask[order[:kk]] = 1
    return mask


def top_k(k: int | None = None, ratio: float | None = None) -> Filter:
    """Hard truncation: ``f = 1`` on the K largest eigenvalues, 0 elsewhere (TSVD).

    Give either ``k`` (1 <= k <= d) or ``ratio`` in (0, 1], in which case ``K = ceil(ratio d)``
    with ``d`` the number of eigenvalues (``d_in`` for a merge layer). Ties keep the earlier index.
    """
    if (k is None) == (ratio is None):
        raise ValueError(f"top_k needs exactly one of k or ratio, got k={k!r}, ratio={ratio!r}")
    if k is not None:
        k = _count("k", k, 1)
        params = {"k": k}
    else:
        ratio = _positive("ratio", ratio)
        if ratio > 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        params = {"ratio": ratio}
    return Filter("top_k", params, lambda lam: _top_k_mask(lam, k, ratio))


def swudi(t: float = 1300.0, k: int | None = None, ratio: float | None = 0.65) -> Filter:
    """SWUDI: ``f(lambda) = (1 - exp(-lambda t)) * 1[lambda among the K largest]``.

    Paper defaults (CLIP ViT-B/32): ``t = 1300``, ``ratio = 0.65`` (``K = ceil(0.65 d_in)``).
    Pass ``k`` to fix K instead of the ratio.
    """
    if k is not None:
        ratio = None
    soft, hard = exponential(t), top_k(k=k, ratio=ratio)
    params = {"t": soft.params["t"], **hard.params}
    return Filter("swudi", params, lambda lam: soft.fn(lam) * hard.fn(lam), over=_product_over(soft, hard))


def wiener(p: float = 1.0, nu2: float = 1e-3) -> Filter:
    """``f(lambda) = lambda^p / (lambda^p + nu2)``: Wiener-type shrinkage, ``nu2`` a noise power.

    ``p = 1`` is Tikhonov with ``alpha = nu2``; larger ``p`` cuts more sharply around
    ``lambda = nu2^(1/p)``.
    """
    p = _positive("p", p)
    nu2 = _positive("nu2", nu2)
    return Filter("wiener", {"p": p, "nu2": nu2}, lambda lam: lam**p / (lam**p + nu2))


FILTERS: dict[str, Callable[..., Filter]] = {
    "pseudoinverse": pseudoinverse,
    "zero": zero,
    "landweber": landweber,
    "exponential": exponential,
    "tikhonov": tikhonov,
    "top_k": top_k,
    "swudi": swudi,
    "wiener": wiener,
}
"""Filter constructors by name: one line here makes a filter reachable from the CLI and widgets."""


def make_filter(name: str, **params) -> Filter:
    """Build a filter by registry name, e.g. ``make_filter("tikhonov", alpha=1e-3)``.

    Unknown names or parameters raise ``ValueError`` listing what is accepted.
    """
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; known: {', '.join(FILTERS)}")
    import inspect

    accepted = inspect.signature(FILTERS[name]).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"filter {name!r} got unknown parameter(s) {unknown}; accepted: {list(accepted) or 'none'}"
        )
    return FILTERS[name](**params)
