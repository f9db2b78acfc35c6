"""Iterative solvers of the WUDI normal equation ``theta C = D``, with trajectories.

Notation (docs/design.md): ``C`` (d_in, d_in) symmetric PSD, ``D`` (d_out, d_in), start
``theta0`` (d_out, d_in), ``C = V diag(lambda) V^T`` with columns ``q_k``.

=====================  ==========================================  ===============================
solver                 update                                      equals the spectral filter
=====================  ==========================================  ===============================
gradient_descent       theta <- theta - eta (theta C - D)          landweber(eta, n), exactly
gradient_flow          d theta/ds = -(theta C - D), matrix exp     exponential(t), exactly
adam_wudi              torch.optim.Adam on grad 2 (theta C - D)    none (Adam is not linear)
wudi_reference         torch.optim.Adam on the explicit loss       same iterates as adam_wudi
=====================  ==========================================  ===============================

Adam is not a spectral filter, but its iterate can still be read as one:
:func:`empirical_filter_factors` fits ``f_k`` per eigen-direction and
:func:`fit_effective_time` finds the exponential filter ``1 - exp(-lambda t_eff)`` closest to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .estimator import EIGEN_FLOOR, _tensor, check_normal_equation
from ..registry import checked_count as _count
from ..registry import checked_number as _positive
from .wudi import as_task_stack, quadratic_loss, sum_init, wudi_loss

__all__ = [
    "Trajectory",
    "gradient_descent",
    "gradient_flow",
    "adam_wudi",
    "wudi_reference",
    "empirical_filter_factors",
    "fit_effective_time",
]


@dataclass
class Trajectory:
    """Iterates of a solver at the recorded steps.

    ``losses[j]`` is the WUDI loss at ``thetas[j]`` up to its constant,
    ``tr(theta C theta^T) - 2 tr(theta D^T)``. The solvers always record the last step, so
    :attr:`final` is the iterate after the last step.
    """

    steps: list[int] = field(default_factory=list)  # recorded step indices, ascending; 0 = the start
    thetas: list[torch.Tensor] = field(default_factory=list)  # (d_out, d_in) each, detached clones
    losses: list[float] = field(default_factory=list)

    @property
    def final(self) -> torch.Tensor:
        """theta after the last step (the last recorded iterate)."""
        if not self.thetas:
            raise ValueError("the trajectory is empty")
        return self.thetas[-1]

    def _add(self, step: int, theta: torch.Tensor, loss: float) -> None:
        self.steps.append(step)
        self.thetas.append(theta.detach().clone())
        self.losses.append(float(loss))


def _record_set(record, steps: int) -> set[int]:
    """Validate ``record`` (step indices in [0, steps]); the last step is always kept (``final``)."""
    if record is None:
        return {steps}
    out = {steps}
    for s in record:
        s = _count("record", s, 0)
        if s > steps:
            raise ValueError(f"record contains step {s} but only steps 0..{steps} exist")
        out.add(s)
    return out


def _start(theta0, D: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(D) if theta0 is None else theta0.detach().clone()


def gradient_descent(C, D, theta0=None, *, eta: float, steps: int, record=None,
                     progress: bool = False) -> Trajectory:
    """Gradient descent (Landweber iteration) ``theta <- theta - eta (theta C - D)``.

    After n steps from ``theta0`` the iterate equals the spectral estimate with the Landweber
    filter ``f(lambda) = 1 - (1 - eta lambda)^n``, exactly. GD on the WUDI loss with learning
    rate ``lr`` is this with ``eta = 2 lr`` (the WUDI gradient is ``2 (theta C - D)``).

    Args:
        C: (d_in, d_in) symmetric PSD. D: (d_out, d_in). theta0: (d_out, d_in) or ``None`` (zeros).
        eta: step size > 0 (converges when ``eta lambda_max < 2``).
        steps: number of steps n >= 0.
        record: step indices in [0, steps] to keep; the last step is always kept.
        progress: show a tqdm bar.
    """
    C, D, theta0 = check_normal_equation(C, D, theta0)
    eta = _positive("eta", eta)
    steps = _count("steps", steps, 0)
    keep = _record_set(record, steps)
    theta = _start(theta0, D)
    traj = Trajectory()
    for s in tqdm(range(steps + 1), disable=not progress, desc="gradient descent"):
        if s > 0:
            theta = theta - eta * (theta @ C - D)
        if s in keep:
            traj._add(s, theta, quadratic_loss(theta, C, D))
    return traj


def gradient_flow(C, D, theta0=None, *, times) -> list[torch.Tensor]:
    """Exact gradient flow ``d theta/ds = -(theta C - D)`` at the given times (matrix exponential).

    ``theta(t) = theta0 exp(-C t) + D int_0^t exp(-C u) du``. Both terms come from one
    (2 d_in, 2 d_in) matrix exponential, ``expm([[-C t, t I], [0, 0]]) = [[exp(-C t), P], [0, I]]``
    with ``P = int_0^t exp(-C u) du``; no eigendecomposition is used. The result equals the
    spectral estimate with the exponential filter ``f(lambda) = 1 - exp(-lambda t)``.

    Args:
        C: (d_in, d_in) symmetric PSD. D: (d_out, d_in). theta0: (d_out, d_in) or ``None`` (zeros).
        times: a time t >= 0 or an iterable of them.

    Returns a list of (d_out, d_in) tensors, one per time.
    """
    C, D, theta0 = check_normal_equation(C, D, theta0)
    times = [times] if np.ndim(times) == 0 else list(np.asarray(times, dtype=float).ravel())
    if not times:
        raise ValueError("times is empty: give at least one time t >= 0")
    times = [_positive("t", t, allow_zero=True) for t in times]
    d = C.shape[0]
    eye = torch.eye(d, dtype=C.dtype, device=C.device)
    out = []
    for t in times:
        M = torch.zeros(2 * d, 2 * d, dtype=C.dtype, device=C.device)
        M[:d, :d] = -C * t
        M[:d, d:] = eye * t
        E = torch.linalg.matrix_exp(M)
        decay, integral = E[:d, :d], E[:d, d:]  # exp(-C t), int_0^t exp(-C u) du
        theta = D @ integral
        if theta0 is not None:
            theta = theta + theta0 @ decay
        out.append(theta)
    return out


def _check_adam(lr, steps, betas, eps):
    lr = _positive("lr", lr)
    steps = _count("steps", steps, 0)
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair of floats, got {betas!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
    eps = _positive("eps", eps, allow_zero=True)
    return lr, steps, (b1, b2), eps


def adam_wudi(C, D, theta0, *, lr: float = 1e-5, steps: int = 300, betas=(0.9, 0.999),
              eps: float = 1e-8, record=None, progress: bool = False) -> Trajectory:
    """WUDI's optimizer on the exact gradient ``grad L = 2 (theta C - D)`` (the fast path).

    Runs ``torch.optim.Adam`` (same defaults as WUDI: lr 1e-5, 300 steps) with the gradient
    computed from ``(C, D)`` instead of autograd through the per-expert loss, so each step costs
    one (d_out, d_in) x (d_in, d_in) product. The iterates equal :func:`wudi_reference`'s.

    Adam moves each entry by about ``lr`` per step whatever the gradient's size, so ``lr`` only
    means something relative to the size of the task-vector entries (docs/design.md, "Scale").

    Args:
        C: (d_in, d_in) symmetric PSD. D: (d_out, d_in).
        theta0: (d_out, d_in) start (WUDI uses ``sum_init``); ``None`` means zeros.
        lr, betas, eps: ``torch.optim.Adam`` parameters. steps: number of Adam steps >= 0.
        record: step indices in [0, steps] to keep; the last step is always kept.
        progress: show a tqdm bar.
    """
    C, D, theta0 = check_normal_equation(C, D, theta0)
    lr, steps, betas, eps = _check_adam(lr, steps, betas, eps)
    keep = _record_set(record, steps)
    theta = _start(theta0, D).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr, betas=betas, eps=eps)
    traj = Trajectory()
    for s in tqdm(range(steps + 1), disable=not progress, desc="adam (exact gradient)"):
        with torch.no_grad():
            if s > 0:
                theta.grad = 2 * (theta @ C - D)
                opt.step()
            if s in keep:
                traj._add(s, theta, quadratic_loss(theta, C, D))
    return traj


def wudi_reference(task_vectors, theta0=None, *, lr: float = 1e-5, steps: int = 300,
                   betas=(0.9, 0.999), eps: float = 1e-8, record=None,
                   progress: bool = False) -> Trajectory:
    """The faithful WUDI merge of one layer: Adam + autograd on the explicit per-expert loss.

    ``L(theta) = sum_i ||(theta - tau_i) tau_i^T||_F^2 / n_i``, minimized by ``torch.optim.Adam``
    from ``theta0`` (``None``: sum init ``sum_i tau_i``). Experts with ``n_i = 0`` are skipped
    (the usual WUDI code divides by zero and returns NaN there). Costs
    O(N d_out^2 d_in) per step; :func:`adam_wudi` gives the same iterates for O(d_out d_in^2).

    Adam moves each entry by about ``lr`` per step, so ``lr`` only means something relative to
    the size of the task-vector entries.

    Args:
        task_vectors: (N, d_out, d_in) tensor or list of (d_out, d_in) tensors.
        theta0: (d_out, d_in) start or ``None`` (sum init).
        lr, betas, eps: ``torch.optim.Adam`` parameters. steps: number of Adam steps >= 0.
        record: step indices in [0, steps] to keep; the last step is always kept.
        progress: show a tqdm bar.

    ``losses`` are reported without the constant, like the other solvers:
    ``L(theta) - L(0) = tr(theta C theta^T) - 2 tr(theta D^T)``.
    """
    taus = as_task_stack(task_vectors)
    if theta0 is None:
        theta0 = sum_init(taus)
    theta0 = _tensor("theta0", theta0, taus.dtype, taus.device)
    if theta0.shape != taus.shape[1:]:
        raise ValueError(f"theta0 must have shape {tuple(taus.shape[1:])}, got {tuple(theta0.shape)}")
    lr, steps, betas, eps = _check_adam(lr, steps, betas, eps)
    keep = _record_set(record, steps)
    with torch.no_grad():
        const = float(wudi_loss(torch.zeros_like(theta0), taus))
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr, betas=betas, eps=eps)
    traj = Trajectory()
    for s in tqdm(range(steps + 1), disable=not progress, desc="WUDI reference"):
        if s > 0:
            opt.zero_grad(set_to_none=True)
            wudi_loss(theta, taus).backward()
            opt.step()
        if s in keep:
            with torch.no_grad():
                traj._add(s, theta, float(wudi_loss(theta, taus)) - const)
    return traj


def empirical_filter_factors(theta, theta0, D, eig, floor: float = EIGEN_FLOOR) -> torch.Tensor:
    """Per eigen-direction filter factors that best explain an iterate ``theta``.

    The spectral estimator moves along ``q_k`` as
    ``theta q_k - theta0 q_k = f_k (D q_k / lambda_k - theta0 q_k)``; the least-squares fit
    over the d_out entries is::

        y_k = (theta - theta0) q_k,   x_k = D q_k / max(lambda_k, floor) - theta0 q_k
        f_k = <y_k, x_k> / ||x_k||^2

    exact for gradient descent and gradient flow (any spectral estimator), a fit for Adam.
    Directions with ``x_k = 0`` (target equals start: nothing to learn) get ``f_k = 0``;
    ``||x_k||^2`` is a natural weight for :func:`fit_effective_time`.

    Args:
        theta, theta0, D: (d_out, d_in). theta0 may be ``None`` (zeros).
        eig: :class:`~swudi_lab.spectral.Eig` of C (``eigh(C)``), or a ``(values, vectors)`` pair.
        floor: floor on lambda before dividing.

    Returns f of shape (d_in,), in the order of ``eig.values``.
    """
    try:
        lam, V = eig
    except (TypeError, ValueError):
        raise ValueError("eig must be an Eig (values, vectors), e.g. swudi_lab.spectral.eigh(C)") from None
    floor = _positive("floor", floor)
    D = _tensor("D", D)
    lam = _tensor("eig.values", lam, D.dtype, D.device)
    V = _tensor("eig.vectors", V, D.dtype, D.device)
    d = D.shape[-1]
    if D.ndim != 2 or lam.shape != (d,) or V.shape != (d, d):
        raise ValueError(f"shapes do not match: D {tuple(D.shape)}, eig.values {tuple(lam.shape)}, "
                         f"eig.vectors {tuple(V.shape)}; need (d_out, d_in), (d_in,), (d_in, d_in)")
    theta = _tensor("theta", theta, D.dtype, D.device)
    theta0 = torch.zeros_like(D) if theta0 is None else _tensor("theta0", theta0, D.dtype, D.device)
    for name, t in (("theta", theta), ("theta0", theta0)):
        if t.shape != D.shape:
            raise ValueError(f"{name} must have D's shape {tuple(D.shape)}, got {tuple(t.shape)}")
    start = theta0 @ V
    y = theta @ V - start  # column k: (theta - theta0) q_k
    x = (D @ V) / lam.clamp_min(floor) - start  # column k: D q_k / lambda_k - theta0 q_k
    xx = x.pow(2).sum(0)
    f = (x * y).sum(0) / xx.clamp_min(torch.finfo(xx.dtype).tiny)
    return torch.where(xx > 0, f, torch.zeros_like(f))


def fit_effective_time(f, lam, weights=None) -> tuple[float, float]:
    """Time ``t_eff`` of the exponential filter closest to the factors ``f``; and the fit's R^2.

    ``t_eff = argmin_{t >= 0} sum_k w_k (f_k - (1 - exp(-lambda_k t)))^2`` (log-spaced grid,
    golden-section search on ``log t``, Gauss-Newton polish) and ``R^2 = 1 - SS_res / SS_tot``
    with the weighted mean of f in ``SS_tot``. R^2 near 1 says the solver behaved like gradient
    flow for time ``t_eff``; compare layers through ``kappa = t_eff N / d_in``. Negative lambda are treated as 0.

    Args:
        f: (d,) filter factors (e.g. from :func:`empirical_filter_factors`).
        lam: (d,) eigenvalues, same order. weights: (d,) >= 0 (default: all ones).

    Returns ``(t_eff, r2)``. If f is 1 on every positive-lambda direction the best time is
    unbounded; the search stops at ``1e3 / min positive lambda`` (where all factors are 1).
    If f is constant, ``R^2`` is 1 for a perfect fit and 0 otherwise.
    """
    f = _tensor("f", f).double().cpu().numpy()
    lam = _tensor("lam", lam).double().cpu().numpy()
    if f.ndim != 1 or lam.shape != f.shape or f.size == 0:
        raise ValueError(f"f and lam must be 1-D of the same non-zero length, "
                         f"got {f.shape} and {lam.shape}")
    w = np.ones_like(f) if weights is None else _tensor("weights", weights).double().cpu().numpy()
    if w.shape != f.shape:
        raise ValueError(f"weights must have shape {f.shape}, got {w.shape}")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be >= 0 and not all zero")
    lam = np.clip(lam, 0, None)

    def sse(t: float) -> float:
        return float((w * (f + np.expm1(-lam * t)) ** 2).sum())

    pos = lam[lam > 0]
    t_best = 0.0
    if pos.size:
        # coarse log-spaced grid (vectorized), then golden-section search on log t around the best
        grid = np.linspace(math.log(1e-3 / pos.max()), math.log(1e3 / pos.min()), 400)
        errs = (w * (f + np.expm1(-lam[None, :] * np.exp(grid)[:, None])) ** 2).sum(1)
        i = int(np.argmin(errs))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        g = (math.sqrt(5) - 1) / 2
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = sse(math.exp(c)), sse(math.exp(d))
        while b - a > 1e-12:
            if fc <= fd:
                b, d, fd = d, c, fc
                c = b - g * (b - a)
                fc = sse(math.exp(c))
            else:
                a, c, fc = c, d, fd
                d = a + g * (b - a)
                fd = sse(math.exp(d))
        t_best = math.exp(c if fc <= fd else d)
        if sse(t_best) > errs[i]:
            t_best = math.exp(grid[i])
        for _ in range(5):  # Gauss-Newton polish: r = f - (1 - exp(-lam t)), dr/dt = -lam exp(-lam t)
            r, J = f + np.expm1(-lam * t_best), -lam * np.exp(-lam * t_best)
            jj = float((w * J * J).sum())
            t_new = t_best - float((w * J * r).sum()) / jj if jj > 0 else t_best
            if not (t_new > 0 and sse(t_new) < sse(t_best)):
                break
            t_best = t_new
        if sse(0.0) <= sse(t_best):
            t_best = 0.0
    ss_res = sse(t_best)
    mean = (w * f).sum() / w.sum()
    ss_tot = float((w * (f - mean) ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= 1e-24 * max(1.0, float((w * f**2).sum())) else 0.0
    return t_best, float(r2)
