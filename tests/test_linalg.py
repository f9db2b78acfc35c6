"""The dense kernels of swudi_lab.spectral.linalg: the blocked Gram product and the tridiagonal eigh."""

import pytest
import torch

import swudi_lab.spectral.linalg as linalg
from swudi_lab.spectral import eigh, layer_operator
from swudi_lab.spectral.linalg import gram, symmetric_eigh, tridiagonal_eigenpairs, tridiagonal_eigh


@pytest.mark.parametrize("m, n, block", [(7, 5, 2), (40, 33, 8), (12, 30, 7), (5, 9, 100)])
@pytest.mark.parametrize("weighted", [False, True])
def test_gram_is_the_weighted_product_and_exactly_symmetric(m, n, block, weighted):
    g = torch.Generator().manual_seed(m * n)
    X = torch.randn(m, n, generator=g, dtype=torch.float64)
    w = torch.rand(m, generator=g, dtype=torch.float64) if weighted else None
    G = gram(X, w, block=block)
    ref = X.T @ (X * (w[:, None] if weighted else 1))
    assert torch.allclose(G, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(G, G.T)


def _psd(d: int, rank: int, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rank, d, generator=g, dtype=dtype)
    C = X.T @ X
    return 0.5 * (C + C.T)


@pytest.mark.parametrize("d, rank, nb", [(50, 50, 8), (37, 10, 5), (64, 64, 128), (3, 1, 2), (1, 1, 4)])
def test_tridiagonal_eigh_is_an_eigendecomposition_float64(d, rank, nb):
    C = _psd(d, rank, torch.float64, seed=d + rank)
    C0 = C.clone()
    lam, V = tridiagonal_eigh(C, nb=nb)
    assert torch.equal(C, C0), "C was modified"
    assert lam.shape == (d,) and V.shape == (d, d)
    assert bool((lam[:-1] >= lam[1:]).all()), "eigenvalues must be descending"
    scale = float(lam.abs().max())
    assert float((C @ V - V * lam).abs().max()) <= 1e-12 * scale
    assert float((V.T @ V - torch.eye(d, dtype=torch.float64)).abs().max()) <= 1e-12
    ref = torch.linalg.eigvalsh(C).flip(0)
    assert torch.allclose(lam, ref, rtol=0, atol=1e-12 * scale)


def test_tridiagonal_eigh_float32_matches_lapack_accuracy():
    C = _psd(300, 120, torch.float32, seed=3)
    lam, V = tridiagonal_eigh(C, nb=32)
    lam_t, V_t = torch.linalg.eigh(C)
    res = float((C @ V - V * lam).norm() / C.norm())
    res_t = float((C @ V_t - V_t * lam_t).norm() / C.norm())
    orth = float((V.T @ V - torch.eye(300)).abs().max())
    orth_t = float((V_t.T @ V_t - torch.eye(300)).abs().max())
    assert res <= 4 * res_t + 1e-7 and orth <= 4 * orth_t + 1e-6


def test_tridiagonal_eigh_handles_identity_reflectors():
    """A diagonal (or zero) C is already tridiagonal: LAPACK's reflectors are identities (tau = 0)."""
    C = torch.diag(torch.tensor([3.0, 0.0, 1.0, 2.0, 0.0], dtype=torch.float64))
    lam, V = tridiagonal_eigh(C, nb=2)
    assert torch.allclose(lam, torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(V @ torch.diag(lam) @ V.T, C, atol=1e-14)
    lam0, V0 = tridiagonal_eigh(torch.zeros(4, 4), nb=2)
    assert torch.equal(lam0, torch.zeros(4)) and torch.allclose(V0.T @ V0, torch.eye(4))


def test_tridiagonal_eigh_refuses_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        tridiagonal_eigh(torch.eye(3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"square CPU matrix, got shape \(3, 4\)"):
        tridiagonal_eigh(torch.zeros(3, 4))


def test_symmetric_eigh_routes_large_cpu_matrices_through_the_tridiagonal(monkeypatch):
    calls = []
    real = linalg.tridiagonal_eigenpairs
    monkeypatch.setattr(linalg, "tridiagonal_eigenpairs", lambda C, **k: calls.append(C.shape[0]) or real(C, **k))
    monkeypatch.setattr(linalg, "TRIDIAGONAL_MIN", {1: 20, "threaded": 20})
    small, large = _psd(10, 10, torch.float64), _psd(30, 30, torch.float64)
    for C in (small, large):
        lam, V = symmetric_eigh(C)
        assert bool((lam[:-1] >= lam[1:]).all())
        assert torch.allclose(C @ V, V * lam, atol=1e-12 * float(lam[0]))
    assert calls == [30]
    # the library's eigh (estimator) and so every spectral method go through it
    e = eigh(large)
    assert calls == [30, 30] and torch.allclose(e.values, torch.linalg.eigvalsh(large).flip(0), atol=1e-10)


def test_layer_operator_stacked_gram_matches_per_expert_sums():
    """d_in > d_out: C from the stacked view with row weights equals sum_i tau_i^T tau_i / n_i, a zero
    expert included (weight 0)."""
    g = torch.Generator().manual_seed(5)
    taus = torch.randn(4, 6, 11, generator=g, dtype=torch.float64)
    taus[2] = 0
    op = layer_operator(taus, start=True)
    n = taus.pow(2).sum(dim=(1, 2))
    C = sum(t.T @ t / ni for t, ni in zip(taus, n) if ni > 0)
    D = sum(t @ t.T @ t / ni for t, ni in zip(taus, n) if ni > 0)
    assert torch.allclose(op.C, C, atol=1e-13) and torch.equal(op.C, op.C.T)
    assert torch.allclose(op.D, D, atol=1e-13) and op.n_live == 3


def test_eigenpairs_form_only_the_leading_columns_asked_for():
    """The tridiagonal route back-transforms k columns for leading(k): the same columns as the full V."""
    C = _psd(40, 40, torch.float64, seed=9)
    full = tridiagonal_eigh(C, nb=8)[1]
    pairs = tridiagonal_eigenpairs(C, nb=8)
    assert pairs.formed == 0
    V5 = pairs.leading(5)
    assert pairs.formed == 5 and V5.shape == (40, 5)
    assert torch.allclose(V5, full[:, :5], atol=1e-13)
    assert pairs.leading(3).data_ptr() == V5.data_ptr()  # a view of what is formed
    lam, V = pairs  # unpacks like Eig: every column
    assert pairs.formed == 40 and torch.allclose(V, full, atol=1e-13) and torch.equal(lam, pairs.values)


@pytest.mark.parametrize("method, params", [("swudi", {}), ("swudi", {"init": "zero"}), ("swudi_a", {}),
                                            ("closed_form", {}), ("swudi_a", {"rank_rule": "loss_kneedle"})])
def test_spectral_methods_on_the_tridiagonal_route_equal_torchs(monkeypatch, method, params):
    """The merge and its report are the same (float64) whichever eigh route runs: with the tridiagonal
    route a top-K merge forms only its K columns and takes q(theta0) from tr(theta0 C theta0^T)."""
    from swudi_lab.merge import get_method, resolve_params

    g = torch.Generator().manual_seed(11)
    taus = torch.randn(4, 12, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 40, generator=g,
                                                                                   dtype=torch.float64)
    m = get_method(method)
    p = resolve_params(m, params)
    monkeypatch.setattr(linalg, "TRIDIAGONAL_MIN", {1: 10**9, "threaded": 10**9})
    ref, ref_info = m.fn(taus, name="layer", **p)
    formed = []
    real = linalg.Eigenpairs.leading
    monkeypatch.setattr(linalg.Eigenpairs, "leading", lambda self, k: formed.append(k) or real(self, k))
    monkeypatch.setattr(linalg, "TRIDIAGONAL_MIN", {1: 10, "threaded": 10})
    theta, info = m.fn(taus, name="layer", **p)
    assert float((theta - ref).norm() / ref.norm()) <= 1e-10  # (entrywise the closed form's small lambda amplify round-off)
    for key in ("k", "loss_before", "loss_after", "lam_max"):
        assert info[key] == pytest.approx(ref_info[key], rel=1e-10), key
    if method == "swudi" or (method == "swudi_a" and "rank_rule" not in params):
        assert formed == [info["k"]] and info["k"] < 40  # only the kept columns were back-transformed
    else:
        assert formed[-1] == 40  # every column (closed form; a rule that reads D q_k on all of them)


def test_skip_losses_leaves_the_report_losses_out_and_the_merge_unchanged(monkeypatch):
    """``skip_losses``: the same merge, no loss_before / loss_after, and on the tridiagonal route a top-K
    layer forms its K columns with no tr(theta0 C theta0^T) product."""
    from swudi_lab.merge import get_method, resolve_params

    g = torch.Generator().manual_seed(12)
    taus = torch.randn(4, 12, 40, generator=g, dtype=torch.float64)
    monkeypatch.setattr(linalg, "TRIDIAGONAL_MIN", {1: 10, "threaded": 10})
    for method in ("swudi", "swudi_a", "closed_form", "iwudi"):
        m = get_method(method)
        ref, ref_info = m.fn(taus, name="layer", **resolve_params(m, {}))
        theta, info = m.fn(taus, name="layer", **resolve_params(m, {"skip_losses": True}))
        assert float((theta - ref).norm() / ref.norm()) <= 1e-12, method  # V's columns may be formed differently
        assert "loss_before" in ref_info and "loss_before" not in info and "loss_after" not in info
        assert info["k"] == ref_info["k"]
