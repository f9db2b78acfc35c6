"""The two dense kernels a one-eigh merge rests on: the symmetric Gram product and ``eigh``.

**Gram products.** ``X^T X`` is symmetric, so half of a plain product's work is a copy.
:func:`gram` computes the blocks on and above the diagonal (``(b + 1) / 2b`` of the flops for ``b``
column blocks) with torch products and mirrors the rest. BLAS ``syrk`` would do the same, but
from scipy it runs on OpenBLAS's thread pool, which fights torch's over a small machine's cores.

**Eigendecomposition.** ``C = V diag(lambda) V^T`` goes through the three classical stages::

    C = Q T Q^T          Householder tridiagonalisation (LAPACK sytrd),   4/3 d^3 flops
    T = Z diag(lam) Z^T  divide and conquer on the tridiagonal (LAPACK stevd), O(d^2) to O(d^3)
    V = Q Z              the back-transformation,                         2 d^3 flops

LAPACK's ``syevd`` runs exactly these; here its back-transformation (``ormtr``) is its slow part
(at 3072 x 3072, one thread: OpenBLAS's ``syevd`` 2.3 s, of which ``sytrd`` 0.9 s and ``stevd`` 0.2 s).
:func:`tridiagonal_eigenpairs` runs the first two stages in LAPACK (from scipy) and the third as wide
matrix products in torch: the reflectors ``H_j = I - tau_j v_j v_j^T`` of a block of ``nb`` are one
``I - W S W^T`` (the compact WY form) with ``S^{-1} = striu(W^T W) + diag(1 / tau)`` (the UT
transform), so ``Q Z`` costs the flops of one product at nearly the speed of one (0.84 s). The
result is the same decomposition to round-off (residual and orthogonality as LAPACK's,
``tests/test_linalg.py``); a 3072 x 3072 float32 ``eigh`` takes 1.9 s against 2.5 s for
``torch.linalg.eigh`` on this project's 2-core CPU (``benchmarks/floor.py``).

:func:`eigenpairs` returns the eigenvalues at once and forms V's columns when asked
(:class:`Eigenpairs`): a top-K filter back-transforms only its K leading columns, ``2 d^2 K`` flops
(SWUDI's K = 0.65 d: 1.55 s at 3072; SWUDI-A's K is often a tenth of d).

:func:`symmetric_eigh` and :func:`eigenpairs` pick the route: the tridiagonal one on the CPU from the
size where it is measured faster (``TRIDIAGONAL_MIN``, by torch's thread count: MKL's ``syevd``
uses a second thread better), ``torch.linalg.eigh`` otherwise (and on GPUs, where torch calls
cuSOLVER).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["gram", "Eigenpairs", "eigenpairs", "symmetric_eigh", "tridiagonal_eigenpairs", "tridiagonal_eigh",
           "TRIDIAGONAL_MIN", "REFLECTOR_BLOCK"]

# From which size the tridiagonal route is the faster one, by torch's thread count (measured on a
# 2-core AMD EPYC, float32: 1 thread 1024: 0.10 s vs 0.12 s for torch.linalg.eigh, 3072: 2.0 vs 2.5;
# 2 threads 1536: 0.22 vs 0.17, 2048: 0.39 vs 0.41, 3072: 1.09 vs 1.33; benchmarks/floor.py's table).
TRIDIAGONAL_MIN = {1: 1024, "threaded": 2048}
REFLECTOR_BLOCK = 128  # reflectors per WY block in the back-transformation
GRAM_BLOCK = 256  # column block of gram(), the fastest measured (6144 x 3072: 0.68 s; 384: 0.70; plain 1.15)


def gram(X: torch.Tensor, row_weights: torch.Tensor | None = None, *, block: int = GRAM_BLOCK) -> torch.Tensor:
    """``X^T diag(w) X`` (n x n, exactly symmetric) for X (m, n) and row weights ``w`` (m,) (default 1),
    computing only the blocks on and above the diagonal: ``ceil(n / block)`` column blocks ``X_b``,
    ``G[b, c] = (w X_b)^T X_c`` for ``c >= b``. Memory beyond the output: one (m, block) weighted copy
    of a column block and one (block, n) product."""
    n = X.shape[1]
    G = X.new_empty(n, n)
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        Xb = X[:, j0:j1] if row_weights is None else X[:, j0:j1] * row_weights[:, None]
        B = Xb.T @ X[:, j0:]  # (j1 - j0, n - j0): the diagonal block and everything right of it
        B[:, : j1 - j0] = 0.5 * (B[:, : j1 - j0] + B[:, : j1 - j0].T)
        G[j0:j1, j0:] = B
        G[j1:, j0:j1] = B[:, j1 - j0:].T  # the mirror
    return G


def _lapack(dtype: torch.dtype):
    from scipy.linalg import lapack

    if dtype == torch.float32:
        return lapack.ssytrd, lapack.ssytrd_lwork, lapack.sstevd
    if dtype == torch.float64:
        return lapack.dsytrd, lapack.dsytrd_lwork, lapack.dstevd
    raise ValueError(f"tridiagonal_eigh needs float32 or float64, got {dtype}")


def _back_transform(reflectors: torch.Tensor, tau: torch.Tensor, Z: torch.Tensor, nb: int) -> torch.Tensor:
    """``Q Z`` in place on the row-major Z (d, k), for ``Q = H_0 H_1 ... H_{d-2}`` as LAPACK's
    ``sytrd(lower)`` stores it: ``v_j`` is 0 above row ``j + 1``, 1 at row ``j + 1`` and
    ``reflectors[j+2:, j]`` below.

    Blocks of ``nb`` reflectors, last block first (``Q Z = Q_0 (Q_1 (... Q_L Z))``, ``Q_b`` the product
    of block b's reflectors); per block ``Q_b = I - W S W^T`` (compact WY) with ``S`` the inverse of the
    triangular ``striu(W^T W) + diag(1 / tau)`` (the UT transform), so the update of the touched rows
    is ``Z_r -= W (S (W^T Z_r))``: three products. A reflector with ``tau = 0`` is the identity: its
    column of W is zeroed (and its diagonal entry set to 1).
    """
    d = Z.shape[0]
    for j0 in reversed(range(0, d - 1, nb)):
        j1 = min(j0 + nb, d - 1)
        W = reflectors[j0 + 1:, j0:j1].tril(-1)  # a copy, (d - j0 - 1, j1 - j0)
        W.diagonal().fill_(1)
        t = tau[j0:j1]
        live = t != 0
        if not bool(live.all()):
            W.mul_(live)
        S_inv = (W.T @ W).triu(1)
        S_inv.diagonal().copy_(torch.where(live, 1 / torch.where(live, t, torch.ones_like(t)), torch.ones_like(t)))
        S = torch.linalg.solve_triangular(S_inv, torch.eye(j1 - j0, dtype=W.dtype), upper=True)
        rows = Z[j0 + 1:]
        rows.sub_(W @ (S @ (W.T @ rows)))
    return Z


class Eigenpairs:
    """``C = V diag(values) V^T``, ``values`` descending, with V formed when asked.

    ``values`` is there at once; :meth:`leading` gives the first k columns of V (on the tridiagonal
    route only those k are back-transformed: a top-K filter pays ``2 d^2 K`` flops, not ``2 d^3``),
    ``vectors`` all of them. Unpacks like :class:`~swudi_lab.spectral.Eig`: ``lam, V = pairs``.
    """

    def __init__(self, values: torch.Tensor, vectors: torch.Tensor | None = None, *, factors=None,
                 nb: int = REFLECTOR_BLOCK):
        self.values = values
        self._V = vectors  # the leading columns formed so far (all of them on torch's route)
        self._factors = factors  # (reflectors, tau, z): Q as sytrd stores it, T's eigenvectors (column-major)
        self._nb = nb

    def leading(self, k: int) -> torch.Tensor:
        """The first k columns of V (d, k): a view when they are formed already."""
        if self._V is not None and self._V.shape[1] >= k:
            return self._V[:, :k]
        reflectors, tau, z = self._factors
        self._V = _back_transform(reflectors, tau, torch.from_numpy(z)[:, :k].contiguous(), self._nb)
        if k == self.values.numel():
            self._factors = None
        return self._V

    @property
    def vectors(self) -> torch.Tensor:
        """V (d, d), column k the eigenvector of ``values[k]``."""
        return self.leading(self.values.numel())

    @property
    def formed(self) -> int:
        """How many leading columns of V are formed (d on torch's route)."""
        return 0 if self._V is None else self._V.shape[1]

    def __iter__(self):
        return iter((self.values, self.vectors))


def tridiagonal_eigenpairs(C: torch.Tensor, *, nb: int = REFLECTOR_BLOCK) -> Eigenpairs:
    """:class:`Eigenpairs` of a symmetric CPU C (float32/64) by LAPACK ``sytrd`` and ``stevd``, the
    back-transformation by WY blocks deferred to :meth:`Eigenpairs.leading` (module docstring).

    C is read, not modified (LAPACK works on its own copy; as C is symmetric, its transpose is
    handed over without a copy, so the triangle read is C's upper one). Memory: two d x d matrices
    (LAPACK's reflectors and its Z) until V is formed, then V. Raises ``torch.linalg.LinAlgError``
    if LAPACK reports a failure.
    """
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.device.type != "cpu":
        raise ValueError(f"tridiagonal_eigh needs a square CPU matrix, got shape {tuple(C.shape)} on {C.device}")
    sytrd, sytrd_lwork, stevd = _lapack(C.dtype)
    d = C.shape[0]
    if d < 2:  # nothing to reduce (and LAPACK's stevd wants a non-empty off-diagonal)
        return Eigenpairs(C.diagonal().clone(), torch.ones_like(C))
    A = C.detach().contiguous().numpy().T  # Fortran order, no copy: C^T = C
    lwork, info = sytrd_lwork(d, lower=1)
    c, diag, off, tau, info = sytrd(A, lower=1, lwork=int(lwork), overwrite_a=0)
    if info != 0:
        raise torch.linalg.LinAlgError(f"LAPACK sytrd failed (info={info}) on a {d} x {d} matrix")
    del A
    neg, z, info = stevd(-diag, -off, compute_v=1)  # -T's ascending order is T's descending one
    if info != 0:
        raise torch.linalg.LinAlgError(f"LAPACK stevd failed (info={info}) on a {d} x {d} tridiagonal")
    return Eigenpairs(torch.from_numpy(-neg), factors=(torch.from_numpy(c.T).T, torch.from_numpy(tau), z), nb=nb)


def tridiagonal_eigh(C: torch.Tensor, *, nb: int = REFLECTOR_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lam, V)``, ``lam`` descending, by the tridiagonal route with every column formed."""
    pairs = tridiagonal_eigenpairs(C, nb=nb)
    return pairs.values, pairs.vectors


def _tridiagonal_route(C: torch.Tensor) -> bool:
    smallest = TRIDIAGONAL_MIN[1 if torch.get_num_threads() == 1 else "threaded"]
    return C.device.type == "cpu" and C.shape[0] >= smallest and C.dtype in (torch.float32, torch.float64)


def eigenpairs(C: torch.Tensor) -> Eigenpairs:
    """:class:`Eigenpairs` of C by the fastest exact routine measured for C's device and size (the
    tridiagonal route's columns formed on demand; torch's all at once)."""
    if _tridiagonal_route(C):
        return tridiagonal_eigenpairs(C)
    lam, V = torch.linalg.eigh(C)
    return Eigenpairs(lam.flip(0), V.flip(1))


def symmetric_eigh(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lam, V)``, ``lam`` descending, by the fastest exact routine measured for C's device and size."""
    pairs = eigenpairs(C)
    return pairs.values, pairs.vectors
