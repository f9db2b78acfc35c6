"""The WUDI problem of one linear layer: task vectors -> (C, D), loss and gradient.

Notation (docs/design.md). For N task vectors ``tau_i = W_i - W0`` of shape (d_out, d_in) and
``n_i = ||tau_i||_F^2``::

    C = sum_i tau_i^T tau_i / n_i                 (d_in, d_in), symmetric PSD, trace(C) = N
    D = sum_i tau_i tau_i^T tau_i / n_i           (d_out, d_in)
    L(theta) = sum_i ||(theta - tau_i) tau_i^T||_F^2 / n_i
             = tr(theta C theta^T) - 2 tr(theta D^T) + const
    grad L  = 2 (theta C - D)

An expert whose task vector is all zero contributes nothing (its ``n_i`` would be 0): it is
skipped rather than divided by, so no NaN appears.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .linalg import gram, symmetric_eigh

__all__ = ["as_task_stack", "task_norms", "live_experts", "live_count", "interference_operator", "layer_operator", "LayerOperator", "subspace_operator",
           "SubspaceOperator", "wudi_loss", "quadratic_loss",
           "loss_constant", "wudi_gradient", "sum_init", "kappa_time", "time_kappa"]


def as_task_stack(task_vectors, dtype: torch.dtype | None = None, *, check_finite: bool = True) -> torch.Tensor:
    """Stack task vectors into one (N, d_out, d_in) tensor, validating shapes and (unless
    ``check_finite=False``, for a caller that checks the norms instead) values."""
    if isinstance(task_vectors, torch.Tensor):
        taus = task_vectors
    else:
        task_vectors = list(task_vectors)
        if not task_vectors:
            raise ValueError("task_vectors is empty: need at least one expert")
        shapes = {tuple(torch.as_tensor(t).shape) for t in task_vectors}
        if len(shapes) != 1:
            raise ValueError(f"task vectors have different shapes: {sorted(shapes)}")
        taus = torch.stack([torch.as_tensor(t) for t in task_vectors])
    if taus.ndim != 3:
        raise ValueError(f"task vectors must be (N, d_out, d_in), got shape {tuple(taus.shape)}")
    if taus.shape[0] == 0:
        raise ValueError("task_vectors is empty: need at least one expert")
    if dtype is not None:
        taus = taus.to(dtype)
    elif not taus.is_floating_point():
        taus = taus.to(torch.get_default_dtype())
    if check_finite and not torch.isfinite(taus).all():
        bad = [i for i in range(taus.shape[0]) if not torch.isfinite(taus[i]).all()]
        raise ValueError(f"task vectors of expert(s) {bad} contain NaN or Inf")
    return taus


def task_norms(taus: torch.Tensor) -> torch.Tensor:
    """``n_i = ||tau_i||_F^2`` for a stack (N, *shape) of task vectors: an (N,) tensor."""
    return taus.pow(2).flatten(1).sum(1)


def live_experts(taus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(taus_live, n_live)``: the experts with ``n_i > 0`` and their norms (``taus`` itself, no
    copy, when every expert is live)."""
    n = task_norms(taus)
    live = n > 0
    return (taus, n) if bool(live.all()) else (taus[live], n[live])


def live_count(taus: torch.Tensor) -> int:
    """``N_live``: the experts whose task vector on this layer is not all zero (``trace(C) = N_live``)."""
    return int((task_norms(taus) > 0).sum())


def kappa_time(kappa: float, d_in: int, n_live: int) -> float:
    """Per-layer time ``t = kappa d_in / N_live`` of the scale-free time ``kappa``.

    ``trace(C) = N_live``, so the mean eigenvalue of C is ``N_live / d_in`` and ``kappa = t N / d_in``
    (mean eigenvalue times t) means the same on every layer (docs/design.md, "Scale").
    """
    return kappa * d_in / n_live


def time_kappa(t: float, d_in: int, n_live: int) -> float:
    """The scale-free time ``kappa = t N_live / d_in`` of a layer's time ``t`` (inverse of :func:`kappa_time`)."""
    return t * n_live / d_in


class LayerOperator(NamedTuple):
    """One layer's normal equation from :func:`layer_operator` (live experts only).

    ``rhs`` is one (d_out [+ d_out], d_in) buffer: ``D`` on its first d_out rows and, with
    ``start=True``, ``theta0 = sum_i tau_i`` on the next d_out, so that ``[D; theta0] V`` is one product.
    """

    C: torch.Tensor  # (d_in, d_in), symmetric
    rhs: torch.Tensor  # (d_out or 2 d_out, d_in): [D; theta0]
    norms: torch.Tensor  # (N,) n_i, 0 for experts that left the layer untouched
    n_live: int
    const: float  # L(0) = sum_i ||tau_i^T tau_i||_F^2 / n_i

    d_out: int

    @property
    def D(self) -> torch.Tensor:
        """The right-hand side ``D = sum_i tau_i tau_i^T tau_i / n_i``: the first d_out rows of ``rhs`` (a view)."""
        return self.rhs[: self.d_out]

    @property
    def theta0(self) -> torch.Tensor | None:
        """The sum init ``theta0 = sum_i tau_i``: the rows of ``rhs`` below D (a view), or ``None`` without ``start``."""
        return self.rhs[self.d_out:] if self.rhs.shape[0] > self.d_out else None


def _squared_norms(taus: torch.Tensor) -> torch.Tensor:
    """``n_i`` one expert at a time (no (N, d_out, d_in) temporary)."""
    return torch.stack([t.pow(2).sum() for t in taus.flatten(1)]) if taus.shape[0] else taus.new_zeros(0)


def _checked_norms(taus: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``(n, live)``: the norms ``n_i`` (finite, checked: a NaN or Inf entry makes ``n_i`` non-finite)
    and the indices of the live experts (``n_i > 0``)."""
    n = _squared_norms(taus)
    if not bool(torch.isfinite(n).all()):
        bad = [i for i in range(taus.shape[0]) if not torch.isfinite(n[i])]
        raise ValueError(f"task vectors of expert(s) {bad} contain NaN or Inf")
    return n, (n > 0).nonzero().flatten().tolist()


def layer_operator(taus: torch.Tensor, *, start: bool = False):
    """``(C, rhs, norms, n_live, L(0))`` of one layer at the per-layer cost model's floor.

    ``taus``: (N, d_out, d_in) floating tensor (checked finite through its norms: a NaN or Inf entry
    makes ``n_i`` non-finite). Per live expert, with ``w_i = 1 / n_i``:

    - ``d_in <= d_out``: ``G_i = tau_i^T tau_i`` (d_in x d_in), ``C += w_i G_i``, ``D += w_i tau_i G_i``,
      ``L(0) += w_i ||G_i||^2``;
    - ``d_in > d_out``: ``C = T^T diag(w) T`` for the stacked (N d_out, d_in) view T of the task
      vectors (one product, rows weighted), ``E_i = tau_i tau_i^T`` (d_out x d_out),
      ``D += w_i E_i tau_i``, ``L(0) += w_i ||E_i||^2``.

    Every Gram matrix goes through :func:`~swudi_lab.spectral.linalg.gram` (the blocks on and above
    the diagonal only), so C is exactly symmetric.

    The association of D is the cheaper one for the shape (``d_out d_in^2`` against ``d_out^2 d_in``
    per expert), and only one Gram matrix is alive at a time: memory O(d_in^2 + d_out d_in) beyond
    the task vectors, never N x d_in x d_in. ``rhs`` holds D and, with ``start=True``,
    ``theta0 = sum_i tau_i`` below it. Returns a :class:`LayerOperator`.
    """
    N, d_out, d_in = taus.shape
    n, live = _checked_norms(taus)
    rhs = taus.new_zeros((2 if start else 1) * d_out, d_in)
    D = rhs[:d_out]
    const = taus.new_zeros(())
    if d_in <= d_out:
        C = taus.new_zeros(d_in, d_in)
    else:  # C from the stacked task vectors at once (a view), rows weighted by w_i (0 for a zero expert)
        weights = torch.where(n > 0, 1 / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n))
        C = gram(taus.reshape(N * d_out, d_in), weights.repeat_interleave(d_out))
    for i in live:
        t, w = taus[i], 1.0 / float(n[i])
        if d_in <= d_out:
            G = gram(t)
            C.add_(G, alpha=w)
            D.addmm_(t, G, alpha=w)
        else:
            G = gram(t.T)  # E_i = tau_i tau_i^T
            D.addmm_(G, t, alpha=w)
        const += G.pow(2).sum() * w
        del G
    if start:
        torch.sum(taus, 0, out=rhs[d_out:])
    return LayerOperator(C, rhs, n, len(live), float(const), d_out)


class SubspaceOperator(NamedTuple):
    """One layer's normal equation in the span of its task vectors' rows (:func:`subspace_operator`).

    ``C = V_m diag(lam_m) V_m^T`` exactly, with ``V_m = Q W`` (d_in x m) orthonormal: every other
    eigenvalue of C is 0 and ``D``, ``theta0`` (sum init) have no component there.
    """

    lam: torch.Tensor  # (m,) descending
    V: torch.Tensor  # (d_in, m)
    rhs: torch.Tensor  # (d_out or 2 d_out, d_in): [D; theta0]
    norms: torch.Tensor
    n_live: int
    const: float
    d_out: int

    D = LayerOperator.D
    theta0 = LayerOperator.theta0


def subspace_operator(taus: torch.Tensor, *, start: bool = False) -> SubspaceOperator:
    """C's eigenpairs from an m x m problem, ``m = N_live d_out < d_in``, and D (the small solve).

    ``T`` stacks the live ``tau_i / sqrt(n_i)`` (m x d_in), so ``C = T^T T``: its range is the row
    span of T. With the thin QR ``T^T = Q R`` (Q: d_in x m orthonormal), ``Q^T C Q = R R^T``
    (m x m), whose eigenpairs ``W diag(lam) W^T`` give ``C = (Q W) diag(lam) (Q W)^T``: no d_in x d_in
    matrix is formed. D and L(0) go through ``E_i = tau_i tau_i^T`` (d_out x d_out). Cost
    O(d_in m^2 + m^3 + N d_out^2 d_in) instead of O(N d_out d_in^2 + d_in^3).
    """
    N, d_out, d_in = taus.shape
    n, live = _checked_norms(taus)
    rhs = taus.new_zeros((2 if start else 1) * d_out, d_in)
    D = rhs[:d_out]
    const = taus.new_zeros(())
    for i in live:
        t, w = taus[i], 1.0 / float(n[i])
        E = t @ t.T
        D.addmm_(E, t, alpha=w)
        const += E.pow(2).sum() * w
    if start:
        torch.sum(taus, 0, out=rhs[d_out:])
    if not live:
        return SubspaceOperator(taus.new_zeros(0), taus.new_zeros(d_in, 0), rhs, n, 0, 0.0, d_out)
    Tt = torch.cat([taus[i].T / float(n[i]).__pow__(0.5) for i in live], dim=1)  # (d_in, m)
    Q, R = torch.linalg.qr(Tt)  # Tt = Q R, Q (d_in, m)
    del Tt
    small = R @ R.T
    lam, W = symmetric_eigh(0.5 * (small + small.T))
    return SubspaceOperator(lam, Q @ W, rhs, n, len(live), float(const), d_out)


def interference_operator(task_vectors, dtype: torch.dtype | None = None):
    """Return ``(C, D)`` for a layer: ``C = sum tau_i^T tau_i / n_i``, ``D = sum tau_i C_i``.

    ``task_vectors``: (N, d_out, d_in) tensor or a list of (d_out, d_in) tensors.
    Returns C (d_in, d_in) and D (d_out, d_in) in the task vectors' dtype (or ``dtype``).
    Experts with ``n_i = 0`` are skipped, so ``trace(C)`` equals the number of nonzero experts.
    Computed by :func:`layer_operator`: one Gram matrix at a time, D in the cheaper association.
    """
    op = layer_operator(as_task_stack(task_vectors, dtype, check_finite=False))  # finiteness: by the norms
    return op.C, op.rhs


def wudi_loss(theta: torch.Tensor, task_vectors) -> torch.Tensor:
    """Explicit WUDI loss ``sum_i ||(theta - tau_i) tau_i^T||_F^2 / n_i`` (differentiable).

    This is the faithful per-expert form used by the reference implementation; experts with
    ``n_i = 0`` are skipped.
    """
    taus = as_task_stack(task_vectors, theta.dtype)
    if theta.shape != taus.shape[1:]:
        raise ValueError(f"theta has shape {tuple(theta.shape)}, task vectors {tuple(taus.shape[1:])}")
    live_taus, n = live_experts(taus)
    # (theta - tau_i) tau_i^T for all i as one batched matmul (a broadcasting einsum here was
    # ~1000x slower on a busy 2-core CPU)
    residual = (theta - live_taus) @ live_taus.transpose(1, 2)
    return (residual.pow(2).sum(dim=(1, 2)) / n).sum()


def quadratic_loss(theta: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> float:
    """``tr(theta C theta^T) - 2 tr(theta D^T)``: the WUDI loss without its constant ``L(0)``.

    theta (d_out, d_in), C (d_in, d_in), D (d_out, d_in); add :func:`loss_constant` for ``L(theta)``.
    """
    return float(((theta @ C) * theta).sum() - 2 * (theta * D).sum())


def loss_constant(taus: torch.Tensor) -> float:
    """``L(0) = sum_i ||tau_i^T tau_i||_F^2 / n_i`` over live experts, via the smaller Gram matrix."""
    t, n = live_experts(taus)
    G = t @ t.transpose(1, 2) if t.shape[1] <= t.shape[2] else t.transpose(1, 2) @ t
    return float((G.pow(2).sum(dim=(1, 2)) / n).sum())


def wudi_gradient(theta: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Exact gradient of the WUDI loss, ``2 (theta C - D)`` (shape of theta)."""
    return 2 * (theta @ C - D)


def sum_init(task_vectors) -> torch.Tensor:
    """WUDI's start ``theta0 = sum_i tau_i`` ("sum init")."""
    return as_task_stack(task_vectors).sum(dim=0)
