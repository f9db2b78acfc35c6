"""Low-rank task vectors (LoRA adapters) and their WUDI problem in the span of the adapters' rows.

Notation (docs/design.md). Expert i of one layer is given by factors ``B_i`` (d_out x r_i),
``A_i`` (r_i x d_in) and a scale ``s_i`` (PEFT's ``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA)::

    tau_i = s_i B_i A_i                                     (d_out, d_in), never formed for the solve

Every row of every ``tau_i`` lies in ``S = span(rows of A_1, ..., A_N)``, of dimension
``m <= sum_i r_i``. With ``Q`` (d_in x m) an orthonormal basis of S, ``tau_i = (tau_i Q) Q^T``, so

    C = sum_i tau_i^T tau_i / n_i = Q C_S Q^T,     C_S = sum_i (tau_i Q)^T (tau_i Q) / n_i      (m x m)
    D = (D Q) Q^T,                                 D Q = sum_i tau_i tau_i^T (tau_i Q) / n_i    (d_out x m)
    theta0 = (theta0 Q) Q^T,                       theta0 Q = sum_i s_i B_i (A_i Q)

``C_S = W diag(lam) W^T`` gives ``C = (Q W) diag(lam) (Q W)^T``: C's other ``d_in - m`` eigenvalues are
exactly 0, and D and theta0 have no component there, so every filter's estimate is formed in the
coordinates of S and mapped back once, ``theta_f = (theta_f Q) Q^T``. With the sum init (and the
zero init) this is the dense estimate exactly. Every quantity comes from r x r Grams
``GA_i = A_i A_i^T`` and ``GB_i = s_i^2 B_i^T B_i``:

    n_i  = ||tau_i||_F^2 = tr(GB_i GA_i)
    L(0) = sum_i ||tau_i^T tau_i||_F^2 / n_i = sum_i tr((GB_i GA_i)^2) / n_i

Cost per layer O(d_in (sum r_i)^2 + m^3 + d_out m sum r_i) instead of O(N d_out d_in min(d_out, d_in)
+ d_in^3); memory O(d_in m + d_out m) beyond the factors (and the d_out x d_in output).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .wudi import LayerOperator

__all__ = ["LowRankTasks", "LowRankOperator", "lowrank_operator"]


class LowRankTasks:
    """One layer's task vectors in factored form: ``tau_i = s_i B_i A_i``, ``i = 1..N``.

    Args:
        B: N factors ``B_i`` (d_out, r_i) (a list; ranks may differ per expert), or one (N, d_out, r) tensor.
        A: N factors ``A_i`` (r_i, d_in), or one (N, r, d_in) tensor.
        scales: N scales ``s_i`` (default 1).
        dtype, device: convert every factor (default: the factors' own; integer factors become the
            default float dtype).

    Ranks are kept per expert (lists, no zero-padding). Validated on construction: same N in B, A
    and scales, ``B_i.shape[1] == A_i.shape[0]``, one d_out and one d_in for every expert, finite
    entries and scales; a ``ValueError`` names the expert and the shapes. A rank-0 expert, or
    all-zero factors, is a zero task vector (``n_i = 0``): left out of C and D like in
    :func:`~swudi_lab.spectral.layer_operator`. The inputs are never modified.
    """

    def __init__(self, B, A, scales=None, *, dtype: torch.dtype | None = None, device=None):
        B = [torch.as_tensor(b) for b in B]
        A = [torch.as_tensor(a) for a in A]
        if not B:
            raise ValueError("LowRankTasks: need at least one expert")
        if len(B) != len(A):
            raise ValueError(f"LowRankTasks: {len(B)} B factors but {len(A)} A factors")
        if scales is None:
            scales = [1.0] * len(B)
        scales = [float(s) for s in (scales.tolist() if isinstance(scales, torch.Tensor) else scales)]
        if len(scales) != len(B):
            raise ValueError(f"LowRankTasks: {len(scales)} scales for {len(B)} experts")
        if dtype is None:
            dtype = B[0].dtype if B[0].is_floating_point() else torch.get_default_dtype()
        device = torch.device(device) if device is not None else B[0].device
        d_out = d_in = None
        for i, (b, a, s) in enumerate(zip(B, A, scales)):
            if b.ndim != 2 or a.ndim != 2:
                raise ValueError(f"LowRankTasks: expert {i}: B must be (d_out, r) and A (r, d_in), got B "
                                 f"{tuple(b.shape)} and A {tuple(a.shape)}")
            if b.shape[1] != a.shape[0]:
                raise ValueError(f"LowRankTasks: expert {i}: B {tuple(b.shape)} has rank {b.shape[1]} but A "
                                 f"{tuple(a.shape)} has rank {a.shape[0]}")
            if d_out is None:
                d_out, d_in = b.shape[0], a.shape[1]
            elif (b.shape[0], a.shape[1]) != (d_out, d_in):
                raise ValueError(f"LowRankTasks: expert {i}: tau_i = B A is {(b.shape[0], a.shape[1])}, expert 0's "
                                 f"is {(d_out, d_in)}")
            if not (torch.isfinite(b).all() and torch.isfinite(a).all()) or s != s or abs(s) == float("inf"):
                raise ValueError(f"LowRankTasks: expert {i}: factors B {tuple(b.shape)} / A {tuple(a.shape)} or "
                                 f"scale {s!r} contain NaN or Inf")
        self.B = [b.to(dtype=dtype, device=device) for b in B]
        self.A = [a.to(dtype=dtype, device=device) for a in A]
        self.scales = scales
        self.shape = torch.Size((len(B), d_out, d_in))

    @property
    def dtype(self) -> torch.dtype:
        return self.B[0].dtype

    @property
    def device(self) -> torch.device:
        return self.B[0].device

    @property
    def ranks(self) -> list[int]:
        """``r_i`` per expert."""
        return [a.shape[0] for a in self.A]

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LowRankTasks(N={self.shape[0]}, d_out={self.shape[1]}, d_in={self.shape[2]}, ranks={self.ranks})"

    def to(self, dtype: torch.dtype | None = None, device=None) -> "LowRankTasks":
        """The same tasks with factors in ``dtype`` on ``device``."""
        return LowRankTasks(self.B, self.A, self.scales, dtype=dtype or self.dtype, device=device or self.device)

    def dense(self) -> torch.Tensor:
        """The (N, d_out, d_in) stack ``tau_i = s_i B_i A_i`` (for the methods that need it, and for tests)."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for i, (b, a, s) in enumerate(zip(self.B, self.A, self.scales)):
            torch.mm(b, a, out=out[i])
            out[i].mul_(s)
        return out


class LowRankOperator(NamedTuple):
    """One layer's normal equation in the coordinates of ``S = span(rows of A_i)`` (:func:`lowrank_operator`).

    ``C = (Q W) diag(lam) (Q W)^T`` exactly; every other eigenvalue of C is 0. ``rhs`` is in
    coordinates: ``[D Q; theta0 Q]`` ((2) d_out x m), so that ``D = (D Q) Q^T`` and
    ``theta0 = (theta0 Q) Q^T``; an estimate formed from ``(lam, W, rhs)`` is ``theta_f Q`` and
    ``theta_f = (theta_f Q) Q^T``.
    """

    lam: torch.Tensor  # (m,) descending
    W: torch.Tensor  # (m, m) eigenvectors of C_S = Q^T C Q
    Q: torch.Tensor  # (d_in, m) orthonormal basis of S
    rhs: torch.Tensor  # (d_out or 2 d_out, m): [D Q; theta0 Q]
    norms: torch.Tensor  # (N,) n_i, 0 for zero experts
    n_live: int
    const: float  # L(0)
    d_out: int

    D = LayerOperator.D  # here D Q (d_out, m), the coordinates of D
    theta0 = LayerOperator.theta0  # here theta0 Q (d_out, m), or None without start

    @property
    def V(self) -> torch.Tensor:
        """``Q W`` (d_in, m): C's eigenvectors with nonzero eigenvalue, in the input space (formed on each call)."""
        return self.Q @ self.W


def _basis(A: Sequence[torch.Tensor], d_in: int) -> torch.Tensor:
    """Orthonormal basis Q (d_in, m) of the span of the rows of the A_i.

    The rows are normalised to unit length (zero rows dropped), so one expert's scale cannot hide
    another's directions; the thin SVD of the (d_in, sum r_i) matrix of rows gives Q = its left
    singular vectors with singular value above ``max(d_in, sum r_i) eps sigma_max`` (the numerical
    rank, as ``torch.linalg.matrix_rank``): rank-deficient stacks (shared or repeated directions,
    ``sum r_i > d_in``) lose only directions that carry nothing.
    """
    M = torch.cat([a for a in A], dim=0).T  # (d_in, R)
    norms = M.norm(dim=0)
    M = M[:, norms > 0] / norms[norms > 0]
    if M.shape[1] == 0:
        return M.new_zeros(d_in, 0)
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    tol = max(M.shape) * torch.finfo(M.dtype).eps * float(S[0])
    return U[:, S > tol]


def lowrank_operator(tasks: LowRankTasks, *, start: bool = False) -> LowRankOperator:
    """C's eigenpairs, D, theta0 and ``L(0)`` of a layer of low-rank task vectors, all in an m x m problem.

    ``tasks``: :class:`LowRankTasks`, ``tau_i = s_i B_i A_i``. With ``b_i = s_i B_i``, ``GA_i = A_i A_i^T``,
    ``GB_i = b_i^T b_i`` (r_i x r_i), ``P_i = A_i Q`` (r_i x m)::

        n_i  = tr(GB_i GA_i)                   C_S = sum_i P_i^T GB_i P_i / n_i
        D Q  = sum_i b_i (GA_i GB_i P_i) / n_i    theta0 Q = sum_i b_i P_i    L(0) = sum_i tr((GB_i GA_i)^2) / n_i

    (``tau_i Q = b_i P_i``, ``tau_i tau_i^T tau_i Q = b_i GA_i GB_i P_i``), Q from :func:`_basis`,
    ``C_S = W diag(lam) W^T`` by one ``eigh`` of an m x m matrix (symmetrised). Experts with ``n_i = 0`` are
    skipped. Returns a :class:`LowRankOperator` (``rhs = [D Q; theta0 Q]`` with ``start=True``).
    """
    if not isinstance(tasks, LowRankTasks):
        raise ValueError(f"lowrank_operator needs a LowRankTasks, got {type(tasks).__name__}")
    N, d_out, d_in = tasks.shape
    like = tasks.B[0]
    grams, norms = [], []
    for b, a, s in zip(tasks.B, tasks.A, tasks.scales):
        GB = (b.T @ b) * (s * s)
        GA = a @ a.T
        grams.append((GB, GA))
        norms.append((GB * GA).sum() if GB.numel() else like.new_zeros(()))  # tr(GB GA), both symmetric
    n = torch.stack(norms)
    if not bool(torch.isfinite(n).all()):
        bad = [i for i in range(N) if not torch.isfinite(n[i])]
        raise ValueError(f"low-rank task vectors of expert(s) {bad} overflow (n_i = ||tau_i||^2 is not finite)")
    live = (n > 0).nonzero().flatten().tolist()
    if not live:
        return LowRankOperator(like.new_zeros(0), like.new_zeros(0, 0), like.new_zeros(d_in, 0),
                               like.new_zeros((2 if start else 1) * d_out, 0), n, 0, 0.0, d_out)
    Q = _basis([tasks.A[i] for i in live], d_in)
    m = Q.shape[1]
    C = like.new_zeros(m, m)
    rhs = like.new_zeros((2 if start else 1) * d_out, m)
    D = rhs[:d_out]
    const = like.new_zeros(())
    for i in live:
        GB, GA = grams[i]
        b, w = tasks.B[i] * tasks.scales[i], 1.0 / float(n[i])
        P = tasks.A[i] @ Q  # (r_i, m)
        C.addmm_(P.T, GB @ P, alpha=w)
        X = GA @ GB  # (r_i, r_i)
        D.addmm_(b, X @ P, alpha=w)
        const += (X * X.T).sum() * w  # tr((GA GB)^2) = tr((GB GA)^2)
        if start:
            rhs[d_out:].addmm_(b, P)
    lam, W = torch.linalg.eigh(0.5 * (C + C.T))
    return LowRankOperator(lam.flip(0), W.flip(1), Q, rhs, n, len(live), float(const), d_out)
