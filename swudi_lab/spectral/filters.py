"""Spectral filters: functions that map eigenvalues ``lambda`` of C to factors ``f(lambda)``.

A filter decides, per eigen-direction ``q_k`` of C, how far the estimator moves from the
start ``theta0`` towards the pseudoinverse solution (docs/design.md)::

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

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Annotated, Callable

import numpy as np
import torch

from ..registry import (Doc, Param, Registry, at_least_one, nonnegative, params_of, positive, unit_interval,
                        validate_call)

__all__ = [
    "Filter",
    "FilterKind",
    "FILTERS",
    "register_filter",
    "make_filter",
    "pseudoinverse",
    "landweber",
    "exponential",
    "tikhonov",
    "top_k",
    "swudi",
    "wiener",
    "zero",
    "swudi_count",
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
    parts: tuple = field(default=(), repr=False, compare=False)  # (a, b) of a product filter a * b

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
        return self._divided(self.fn(lam), lam, floor)

    def _divided(self, f: torch.Tensor, lam: torch.Tensor, floor: float) -> torch.Tensor:
        """``f / lambda`` from the factors ``f`` on ``lam`` (clipped at 0): exact with ``slope0`` at 0,
        else 0 at or below ``floor``."""
        if self.slope0 is None:
            return torch.where(lam > floor, f / lam.clamp_min(floor), torch.zeros_like(lam))
        tiny = torch.finfo(lam.dtype).tiny
        return torch.where(lam > 0, f / lam.clamp_min(tiny), torch.full_like(lam, self.slope0))

    def evaluate(self, lam: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(lambda), f(lambda) / lambda)`` from one evaluation of every factor (lam: 1-D tensor).

        The same numbers as ``(self(lam), self.over_lambda(lam, floor))``: a product filter
        evaluates each of its factors once and divides the one that vanishes at 0 (as
        :meth:`over_lambda`); a filter with its own ``over`` and no factors calls both.
        """
        lam = lam.clamp_min(0)
        if self.parts:
            (fa, oa), (fb, ob) = (p.evaluate(lam, floor) for p in self.parts)
            a, b = self.parts
            f = fa * fb
            if a.slope0 is not None or a.over is not None:
                return f, oa * fb
            if b.slope0 is not None or b.over is not None:
                return f, ob * fa
            return f, self._divided(f, lam, floor)  # a product has no slope0: divided above the floor
        if self.over is not None:
            return self.fn(lam), self.over(lam, floor)
        f = self.fn(lam)
        return f, self._divided(f, lam, floor)

    def __mul__(self, other: "Filter") -> "Filter":
        """Product filter ``f(lambda) = f1(lambda) * f2(lambda)`` (e.g. SWUDI = exp x top-K)."""
        if not isinstance(other, Filter):
            return NotImplemented
        params = {f"{self.name}.{k}": v for k, v in self.params.items()}
        params.update({f"{other.name}.{k}": v for k, v in other.params.items()})
        return Filter(f"{self.name}*{other.name}", params, lambda lam: self.fn(lam) * other.fn(lam),
                      over=_product_over(self, other), parts=(self, other))

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


# --------------------------------------------------------------------------------------------
# The filter registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterKind:
    """A registered filter: its constructor, declared parameters and the forms other parts read.

    ``make(**params) -> Filter`` validates its arguments against ``params`` (declared once, in the
    constructor's signature). ``cutoff(lambda_c, lam) -> Filter`` (optional) is the filter with
    its transition at eigenvalue ``lambda_c``, the one knob the notebook explorers turn for every
    filter. ``sweep(s, n) -> (family, grid)`` (optional) is a one-parameter family ``p -> Filter``
    and its grid for a problem with largest eigenvalue ``s = sigma_1^2`` and ``n`` unknowns, the
    sweep that the toy demo and the parameter-choice rules run.
    """

    name: str
    make: Callable[..., Filter] = field(repr=False)
    params: tuple[Param, ...] = ()
    doc: str = ""
    cutoff: Callable[[float, np.ndarray], Filter] | None = field(default=None, repr=False)
    sweep: Callable[[float, int], tuple[Callable, list]] | None = field(default=None, repr=False)

    def __call__(self, *args, **kwargs) -> Filter:
        return self.make(*args, **kwargs)


FILTERS: Registry = Registry("filter")
"""Every filter by name (:class:`FilterKind`), in registration order: the ``filtered`` merge
method, ``swudi-lab merge --filter``, the explorers and the toy demo all read it."""


def register_filter(name: str, *, cutoff=None, sweep=None):
    """Decorator: add a filter constructor to :data:`FILTERS`; returns the validating constructor.

    The constructor's parameters are declared once, ``Annotated[T, Doc(help, check=...)]`` with
    their defaults; calls are checked against them (:func:`swudi_lab.registry.validate_call`).
    """

    def deco(fn: Callable[..., Filter]) -> Callable[..., Filter]:
        params = params_of(fn)
        signature = inspect.signature(fn)
        owner = f"filter {name!r}"

        @functools.wraps(fn)
        def make(*args, **kwargs) -> Filter:
            unknown = sorted(set(kwargs) - set(signature.parameters))
            if unknown:
                raise ValueError(f"{owner} got unknown parameter(s) {unknown}; accepted: "
                                 f"{list(signature.parameters) or 'none'}")
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise ValueError(f"{owner}: {e}") from None
            return fn(**validate_call(owner, params, dict(bound.arguments)))

        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        FILTERS.add(name, FilterKind(name, make, params, doc, cutoff, sweep))
        return make

    return deco


def make_filter(name: str, **params) -> Filter:
    """Build a filter by registry name, e.g. ``make_filter("tikhonov", alpha=1e-3)``.

    Unknown names or parameters, and missing or invalid values, raise ``ValueError`` saying what
    is accepted.
    """
    return FILTERS.lookup(name)(**params)


# --------------------------------------------------------------------------------------------
# The filters
# --------------------------------------------------------------------------------------------

Time = Annotated[float, Doc("exponential filter time t (gradient-flow time)", check=nonnegative)]
Count = Annotated[int, Doc("number of kept directions K (replaces --ratio)", check=at_least_one)]
Ratio = Annotated[float, Doc("kept share of directions: K = ceil(ratio * d_in)", check=unit_interval)]


def _log_grid(lo: float, hi: float, num: int) -> list:
    return np.logspace(lo, hi, num).tolist()


@register_filter("pseudoinverse", cutoff=lambda lambda_c, lam: pseudoinverse())
def pseudoinverse() -> Filter:
    """``f(lambda) = 1``: the exact closed form ``theta = D C^+`` (no regularization)."""
    return Filter("pseudoinverse", {}, lambda lam: torch.ones_like(lam))


@register_filter("zero")
def zero() -> Filter:
    """``f(lambda) = 0``: the estimator returns its start ``theta0``."""
    return Filter("zero", {}, lambda lam: torch.zeros_like(lam))


def _landweber_steps() -> list:
    return np.unique(np.round(np.logspace(0, 12, 97)).astype(np.int64)).tolist()


@register_filter(
    "landweber",
    cutoff=lambda lambda_c, lam: landweber(1.0 / float(np.max(lam)), max(1, round(float(np.max(lam)) / lambda_c))),
    sweep=lambda s, n: (lambda k: landweber(1 / s, k), _landweber_steps()),
)
def landweber(eta: Annotated[float, Doc("landweber (GD) step size", check=positive)],
              n: Annotated[int, Doc("landweber number of steps", check=nonnegative)]) -> Filter:
    """``f(lambda) = 1 - (1 - eta lambda)^n``: exactly ``n`` gradient steps of step ``eta``.

    Gradient descent ``theta <- theta - eta (theta C - D)`` from ``theta0`` gives this filter
    exactly (Landweber iteration). Factors lie in [0, 1] when ``eta * lambda_max <= 1`` and in
    [0, 2) when ``eta * lambda_max < 2`` (GD converges); larger steps diverge. Note that
    ``2 (theta C - D)`` is the WUDI gradient, so GD on the WUDI loss with learning rate ``lr``
    is Landweber with ``eta = 2 lr``. Cutoff form: ``eta = 1 / lambda_max``,
    ``n = lambda_max / lambda_c`` (so ``eta n = 1 / lambda_c``).
    """

    def fn(lam):
        x = eta * lam
        # 1 - (1 - x)^n without cancellation for small x: -expm1(n log1p(-x)) (valid for x < 1)
        stable = -torch.expm1(n * torch.log1p(-x.clamp_max(0.5)))
        return torch.where(x < 0.5, stable, 1 - (1 - x) ** n)

    return Filter("landweber", {"eta": eta, "n": n}, fn, slope0=eta * n)


@register_filter("exponential", cutoff=lambda lambda_c, lam: exponential(1.0 / lambda_c),
                 sweep=lambda s, n: (exponential, [t / s for t in _log_grid(0, 16, 81)]))
def exponential(t: Time) -> Filter:
    """``f(lambda) = 1 - exp(-lambda t)``: gradient flow ``d theta/ds = -(theta C - D)`` to time t.

    The limit of :func:`landweber` with ``eta -> 0`` and ``eta * n = t``. The time is not scale
    free: ``kappa = t N / d_in`` (mean eigenvalue times t) is (docs/design.md, "Scale").
    Cutoff form: ``t = 1 / lambda_c``.
    """
    return Filter("exponential", {"t": t}, lambda lam: -torch.expm1(-lam * t), slope0=t)


@register_filter("tikhonov", cutoff=lambda lambda_c, lam: tikhonov(lambda_c),
                 sweep=lambda s, n: (tikhonov, [s * a for a in _log_grid(-16, 0, 81)]))
def tikhonov(alpha: Annotated[float, Doc("tikhonov (ridge) regularization alpha", check=positive)]) -> Filter:
    """``f(lambda) = lambda / (lambda + alpha)``: ridge, ``theta = (D + alpha theta0)(C + alpha I)^-1``.

    Cutoff form: ``alpha = lambda_c`` (f = 1/2 there).
    """
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


@register_filter("top_k", cutoff=lambda lambda_c, lam: top_k(k=max(1, int((np.asarray(lam) >= lambda_c).sum()))),
                 sweep=lambda s, n: (lambda k: top_k(k=k), list(range(1, n + 1))))
def top_k(k: Count = None, ratio: Ratio = None) -> Filter:
    """Hard truncation: ``f = 1`` on the K largest eigenvalues, 0 elsewhere (TSVD).

    Give either ``k`` (1 <= k <= d) or ``ratio`` in (0, 1], in which case ``K = ceil(ratio d)``
    with ``d`` the number of eigenvalues (``d_in`` for a merge layer). Ties keep the earlier index.
    Cutoff form: ``K = #{lambda_k >= lambda_c}``.
    """
    if (k is None) == (ratio is None):
        raise ValueError(f"top_k needs exactly one of k or ratio, got k={k!r}, ratio={ratio!r}")
    params = {"k": k} if k is not None else {"ratio": ratio}
    return Filter("top_k", params, lambda lam: _top_k_mask(lam, k, ratio))


def swudi_count(d: int, ratio: float) -> int:
    """SWUDI's number of kept directions for a ratio r: ``K = max(1, floor(d r + 0.999))`` (the
    authors' formula; equal to ``ceil(d r)`` unless the fractional part of ``d r`` lies in (0, 0.001])."""
    return max(1, math.floor(d * ratio + 0.999))


def _swudi_mask(lam: torch.Tensor, k: int | None, ratio: float | None) -> torch.Tensor:
    return _top_k_mask(lam, k if k is not None else swudi_count(lam.numel(), ratio), None)


def _swudi_grid(s: float, n: int) -> list:
    return [(t, k) for t in (np.logspace(0, 16, 17) / s).tolist() for k in range(1, n + 1)]


@register_filter("swudi", sweep=lambda s, n: (lambda p: swudi(t=p[0], k=p[1]), _swudi_grid(s, n)))
def swudi(t: Time = 1300.0, k: Count = None, ratio: Ratio = 0.65) -> Filter:
    """SWUDI: ``f(lambda) = (1 - exp(-lambda t)) * 1[lambda among the K largest]``.

    Paper defaults (CLIP ViT-B/32): ``t = 1300``, ``ratio = 0.65``, with the authors' count
    ``K = max(1, floor(0.65 d_in + 0.999))`` (:func:`swudi_count`). Pass ``k`` to fix K instead.
    """
    if k is not None:
        ratio = None
    soft, hard = exponential(t), top_k(k=k, ratio=ratio)  # validates k / ratio
    hard = Filter("top_k", hard.params, lambda lam: _swudi_mask(lam, k, ratio))
    params = {"t": soft.params["t"], **hard.params}
    return Filter("swudi", params, lambda lam: soft.fn(lam) * hard.fn(lam), over=_product_over(soft, hard),
                  parts=(soft, hard))


@register_filter("wiener", cutoff=lambda lambda_c, lam: wiener(2.0, lambda_c**2),
                 sweep=lambda s, n: (lambda nu2: wiener(2.0, nu2), [s**2 * v for v in _log_grid(-32, 0, 81)]))
def wiener(p: Annotated[float, Doc("wiener exponent p", check=positive)] = 1.0,
           nu2: Annotated[float, Doc("wiener noise power nu^2", check=positive)] = 1e-3) -> Filter:
    """``f(lambda) = lambda^p / (lambda^p + nu2)``: Wiener-type shrinkage, ``nu2`` a noise power.

    ``p = 1`` is Tikhonov with ``alpha = nu2``; larger ``p`` cuts more sharply around
    ``lambda = nu2^(1/p)``. Cutoff form: ``p = 2``, ``nu2 = lambda_c^2``.
    """
    return Filter("wiener", {"p": p, "nu2": nu2}, lambda lam: lam**p / (lam**p + nu2))
