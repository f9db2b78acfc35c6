"""Identities of the spectral core: filters, estimator, WUDI operator, iterative solvers.

Everything runs in float64 on tiny layers so tolerances can be tight.
"""

import numpy as np
import pytest
import torch

import swudi_lab  # noqa: F401  (import order: before timm)
from swudi_lab.spectral import (
    adam_wudi,
    check_normal_equation,
    eigh,
    empirical_filter_factors,
    exponential,
    filtered_solve,
    fit_effective_time,
    gradient_descent,
    gradient_flow,
    interference_operator,
    landweber,
    pseudoinverse,
    spectral_estimate,
    sum_init,
    swudi,
    tikhonov,
    top_k,
    wiener,
    wudi_gradient,
    wudi_loss,
    wudi_reference,
    zero,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one intra-op thread avoids thread-pool stalls on a busy CPU (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def task_vectors(N=4, d_out=6, d_in=5, seed=0, scale=1e-2):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(N, d_out, d_in, generator=g, dtype=F64)


@pytest.fixture
def layer():
    """A full-rank layer (d_in <= N d_out): taus, C, D, sum-init theta0, eig."""
    taus = task_vectors()
    C, D = interference_operator(taus)
    return taus, C, D, sum_init(taus), eigh(C)


@pytest.fixture
def deficient():
    """A rank-deficient layer (N d_out = 6 < d_in = 10): C has 4 zero eigenvalues."""
    taus = task_vectors(N=2, d_out=3, d_in=10, seed=1)
    C, D = interference_operator(taus)
    return taus, C, D, sum_init(taus)


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())


# ---------------------------------------------------------------- WUDI operator


def test_trace_C_equals_N(layer):
    taus, C, *_ = layer
    assert torch.isclose(torch.trace(C), torch.tensor(float(taus.shape[0]), dtype=F64))
    assert torch.equal(C, C.T)
    assert eigh(C).values.min() > -1e-12  # PSD


def test_C_D_match_definitions(layer):
    taus, C, D, *_ = layer
    n = taus.pow(2).sum(dim=(1, 2))
    C_ref = sum(t.T @ t / ni for t, ni in zip(taus, n))
    D_ref = sum(t @ t.T @ t / ni for t, ni in zip(taus, n))
    assert close(C, C_ref) and close(D, D_ref)
    # wide layer (d_in > d_out) takes the other Gram-matrix branch
    wide = task_vectors(N=3, d_out=2, d_in=7, seed=5)
    C2, D2 = interference_operator(wide)
    n2 = wide.pow(2).sum(dim=(1, 2))
    assert close(D2, sum(t @ t.T @ t / ni for t, ni in zip(wide, n2)))


def test_loss_is_quadratic_form_plus_constant(layer):
    taus, C, D, theta0, _ = layer
    const = wudi_loss(torch.zeros_like(theta0), taus)
    for theta in (theta0, 2 * theta0 - 1e-2):
        quad = torch.trace(theta @ C @ theta.T) - 2 * torch.trace(theta @ D.T)
        assert close(wudi_loss(theta, taus) - const, quad)


def test_autograd_gradient_equals_2_theta_C_minus_D(layer):
    taus, C, D, theta0, _ = layer
    theta = (theta0 + 1e-3).requires_grad_(True)
    wudi_loss(theta, taus).backward()
    assert close(theta.grad, wudi_gradient(theta.detach(), C, D))
    assert close(theta.grad, 2 * (theta.detach() @ C - D))


def test_all_zero_expert_gives_finite_everything(layer):
    taus, *_ = layer
    taus = taus.clone()
    taus[1] = 0
    C, D = interference_operator(taus)
    assert torch.isfinite(C).all() and torch.isfinite(D).all()
    assert torch.isclose(torch.trace(C), torch.tensor(3.0, dtype=F64))  # live experts only
    theta0 = sum_init(taus)
    for filt in (pseudoinverse(), exponential(30.0), swudi(t=30.0, ratio=0.6), tikhonov(1e-2)):
        assert torch.isfinite(spectral_estimate(C, D, theta0, filt)).all()
    assert torch.isfinite(wudi_loss(theta0, taus))
    ref = wudi_reference(taus, steps=5)
    assert torch.isfinite(ref.final).all() and np.isfinite(ref.losses).all()
    assert close(ref.final, adam_wudi(C, D, theta0, steps=5).final)


def test_all_zero_layer_returns_start():
    taus = torch.zeros(3, 4, 5, dtype=F64)
    C, D = interference_operator(taus)
    assert not C.any() and not D.any()
    theta0 = torch.ones(4, 5, dtype=F64)
    # f = 1 on lambda = 0 drops theta0 there: the pseudoinverse is D C^+ = 0; soft filters keep theta0
    assert not spectral_estimate(C, D, theta0, pseudoinverse()).any()
    assert torch.equal(spectral_estimate(C, D, theta0, exponential(300.0)), theta0)
    assert torch.equal(gradient_descent(C, D, theta0, eta=1.0, steps=3).final, theta0)
    assert torch.equal(wudi_reference(taus, theta0, steps=3).final, theta0)


# ---------------------------------------------------------------- estimator == closed forms


def test_pseudoinverse_filter_equals_pinv_and_lstsq(layer, deficient):
    _, C, D, theta0, _ = layer
    est = spectral_estimate(C, D, theta0, pseudoinverse())
    assert close(est, D @ torch.linalg.pinv(C))
    # C symmetric: theta C = D  <=>  C theta^T = D^T
    assert close(est, torch.linalg.lstsq(C, D.T).solution.T)
    # rank-deficient C: f = 1 on every direction (null space included) is D C^+ whatever theta0
    _, C, D, theta0 = deficient
    P = torch.linalg.pinv(C, hermitian=True, rtol=1e-10)
    est = spectral_estimate(C, D, theta0, pseudoinverse())
    assert close(est, D @ P, 1e-6)  # D q_k / floor on the null space: ~1e-17 / 1e-8
    assert close(est @ C, D, 1e-8)  # still solves the normal equation


def test_zero_filter_returns_start(layer):
    _, C, D, theta0, _ = layer
    assert close(spectral_estimate(C, D, theta0, zero()), theta0, 1e-14)
    assert not spectral_estimate(C, D, None, zero()).any()


def test_tikhonov_equals_ridge_solve(layer):
    _, C, D, theta0, _ = layer
    for alpha in (1e-3, 0.1, 10.0):
        ridge = torch.linalg.solve(C + alpha * torch.eye(5, dtype=F64), (D + alpha * theta0).T).T
        assert close(spectral_estimate(C, D, theta0, tikhonov(alpha)), ridge)


def test_top_k_equals_truncated_pseudoinverse(layer):
    _, C, D, theta0, _ = layer
    U, s, _ = np.linalg.svd(C.numpy())  # independent decomposition (numpy SVD, not torch eigh)
    for K in (1, 3, 5):
        C_K = (U[:, :K] * s[:K]) @ U[:, :K].T  # rank-K truncation of C
        P = torch.from_numpy(np.linalg.pinv(C_K, hermitian=True, rcond=1e-10))
        proj = torch.from_numpy(U[:, :K] @ U[:, :K].T)
        assert close(spectral_estimate(C, D, None, top_k(k=K)), D @ P)
        expected = D @ P + theta0 @ (torch.eye(5, dtype=F64) - proj)
        assert close(spectral_estimate(C, D, theta0, top_k(k=K)), expected)


def test_filtered_solve_matches_lstsq_and_ridge():
    g = torch.Generator().manual_seed(3)
    A, b = torch.randn(9, 4, generator=g, dtype=F64), torch.randn(9, generator=g, dtype=F64)
    assert close(filtered_solve(A, b, pseudoinverse()), torch.linalg.lstsq(A, b[:, None]).solution[:, 0])
    alpha = 0.3
    ridge = torch.linalg.solve(A.T @ A + alpha * torch.eye(4, dtype=F64), A.T @ b)
    assert close(filtered_solve(A, b, tikhonov(alpha)), ridge)


# ---------------------------------------------------------------- filters


def test_products_of_filters_multiply(layer):
    *_, (lam, _) = layer
    a, b, c = exponential(40.0), top_k(k=3), wiener(p=2.0, nu2=1e-2)
    assert close((a * b)(lam), a(lam) * b(lam), 1e-14)
    assert close((a * b * c)(lam), a(lam) * b(lam) * c(lam), 1e-14)
    assert close(swudi(t=40.0, k=3)(lam), (a * b)(lam), 1e-14)
    assert "exponential" in str(a * b)


def test_filter_limits():
    lam = torch.tensor([3.0, 1.0, 0.2, 0.0], dtype=F64)
    assert close(wiener(p=1.0, nu2=0.1)(lam), tikhonov(0.1)(lam), 1e-14)
    assert not exponential(0.0)(lam).any()
    assert close(exponential(1e4)(lam)[:3], torch.ones(3, dtype=F64), 1e-12)
    # Landweber -> exponential as eta -> 0 with eta n = t
    assert close(landweber(1e-5, 100_000)(lam), exponential(1.0)(lam), 1e-4)
    assert top_k(ratio=0.07)(torch.linspace(1, 2, 100)).sum() == 7  # ceil(0.07 * 100) = 7


def test_numpy_input_works(layer):
    _, C, D, theta0, _ = layer
    lam = np.array([2.0, 1.0, 0.5])
    out = exponential(1.0)(lam)
    assert isinstance(out, np.ndarray) and np.allclose(out, 1 - np.exp(-lam))
    est_np = spectral_estimate(C.numpy(), D.numpy(), theta0.numpy(), tikhonov(0.1))
    assert close(est_np, spectral_estimate(C, D, theta0, tikhonov(0.1)), 1e-14)
    gd = gradient_descent(C.numpy(), D.numpy(), theta0.numpy(), eta=0.1, steps=3)
    assert close(gd.final, gradient_descent(C, D, theta0, eta=0.1, steps=3).final, 1e-14)
    assert close(gradient_flow(C.numpy(), D.numpy(), None, times=2.0)[0],
                 spectral_estimate(C, D, None, exponential(2.0)), 1e-9)


def test_float32_default_and_float64_supported(layer):
    _, C, D, theta0, _ = layer
    est32 = spectral_estimate(C.float(), D.float(), theta0.float(), exponential(50.0))
    assert est32.dtype == torch.float32
    est64 = spectral_estimate(C.float(), D.float(), theta0.float(), exponential(50.0), dtype=F64)
    assert est64.dtype == F64 and close(est32, est64, 1e-4)


# ---------------------------------------------------------------- iterative solvers


@pytest.mark.parametrize("which", ["layer", "deficient"])
def test_gradient_descent_equals_landweber(which, request):
    C, D, theta0 = request.getfixturevalue(which)[1:4]
    eta = 1.0 / eigh(C).values[0].item()
    for theta_start in (theta0, None):
        traj = gradient_descent(C, D, theta_start, eta=eta, steps=40, record=[0, 7, 40])
        assert traj.steps == [0, 7, 40]
        start = torch.zeros_like(D) if theta_start is None else theta_start
        assert torch.equal(traj.thetas[0], start)
        for n, theta in zip(traj.steps, traj.thetas):
            assert close(theta, spectral_estimate(C, D, theta_start, landweber(eta, n)), 1e-9)
        assert torch.equal(traj.final, traj.thetas[-1])


def test_record_always_keeps_the_last_step(layer):
    _, C, D, theta0, _ = layer
    traj = gradient_descent(C, D, theta0, eta=0.1, steps=6, record=[4, 0, 4])
    assert traj.steps == [0, 4, 6]
    assert torch.equal(traj.final, gradient_descent(C, D, theta0, eta=0.1, steps=6).final)
    assert adam_wudi(C, D, theta0, steps=0).steps == [0]


def test_gradient_descent_losses_decrease_and_match_quadratic_form(layer):
    taus, C, D, theta0, (lam, _) = layer
    traj = gradient_descent(C, D, theta0, eta=1.0 / lam[0].item(), steps=20, record=range(21))
    assert len(traj.losses) == 21
    assert all(b <= a + 1e-15 for a, b in zip(traj.losses, traj.losses[1:]))
    const = wudi_loss(torch.zeros_like(theta0), taus).item()
    for theta, loss in zip(traj.thetas[::5], traj.losses[::5]):
        assert np.isclose(loss, wudi_loss(theta, taus).item() - const, rtol=1e-10)


@pytest.mark.parametrize("which", ["layer", "deficient"])
def test_gradient_flow_equals_exponential_filter(which, request):
    C, D, theta0 = request.getfixturevalue(which)[1:4]
    times = [0.0, 0.5, 3.0, 40.0]
    for theta_start in (theta0, None):
        flows = gradient_flow(C, D, theta_start, times=times)
        assert len(flows) == len(times)
        for t, theta in zip(times, flows):
            assert close(theta, spectral_estimate(C, D, theta_start, exponential(t)), 1e-9)


def test_gradient_flow_solves_the_ode(layer):
    _, C, D, theta0, _ = layer
    t, h = 2.0, 1e-4
    a, b, c = gradient_flow(C, D, theta0, times=[t - h, t, t + h])
    assert close((c - a) / (2 * h), -(b @ C - D), 1e-6)  # central difference


def test_adam_exact_gradient_equals_reference_over_300_steps(layer):
    taus, C, D, theta0, _ = layer
    record = [0, 1, 150, 300]
    fast = adam_wudi(C, D, theta0, lr=1e-5, steps=300, record=record)
    ref = wudi_reference(taus, None, lr=1e-5, steps=300, record=record)  # None = sum init = theta0
    assert fast.steps == ref.steps == record
    for a, b in zip(fast.thetas, ref.thetas):
        assert close(a, b, 1e-9)
    assert np.allclose(fast.losses, ref.losses, rtol=1e-8)
    assert ref.losses[-1] < ref.losses[0]
    # Adam moves each entry by about lr per step (first step: exactly lr where the gradient is nonzero)
    first = (fast.thetas[1] - fast.thetas[0]).abs()
    assert torch.allclose(first, torch.full_like(first, 1e-5), rtol=1e-6)


def test_adam_matches_torch_optim_adam_by_hand(layer):
    _, C, D, theta0, _ = layer
    p = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=3e-4, betas=(0.8, 0.99), eps=1e-10)
    for _ in range(20):
        opt.zero_grad()
        (torch.trace(p @ C @ p.T) - 2 * torch.trace(p @ D.T)).backward()
        opt.step()
    fast = adam_wudi(C, D, theta0, lr=3e-4, steps=20, betas=(0.8, 0.99), eps=1e-10)
    assert close(fast.final, p.detach(), 1e-10)


def test_empirical_filter_factors_recover_landweber_and_exponential(layer):
    _, C, D, theta0, eig = layer
    eta, n = 0.5 / eig.values[0].item(), 30
    theta = gradient_descent(C, D, theta0, eta=eta, steps=n).final
    f = empirical_filter_factors(theta, theta0, D, eig)
    assert f.shape == (5,) and close(f, landweber(eta, n)(eig.values), 1e-9)
    theta = gradient_flow(C, D, theta0, times=[7.0])[0]
    assert close(empirical_filter_factors(theta, theta0, D, eig), exponential(7.0)(eig.values), 1e-9)
    # numpy inputs and a (values, vectors) pair
    pair = (eig.values.numpy(), eig.vectors.numpy())
    f_np = empirical_filter_factors(theta.numpy(), theta0.numpy(), D.numpy(), pair)
    assert close(f_np, exponential(7.0)(eig.values), 1e-9)


def test_fit_effective_time_recovers_t(layer):
    *_, (lam, _) = layer
    for t in (0.3, 5.0, 80.0):
        t_eff, r2 = fit_effective_time(exponential(t)(lam), lam)
        assert abs(t_eff - t) < 1e-7 * t and r2 > 1 - 1e-12
    w = torch.linspace(0.1, 1.0, 5, dtype=F64)
    t_eff, r2 = fit_effective_time(exponential(5.0)(lam).numpy(), lam.numpy(), weights=w)
    assert abs(t_eff - 5.0) < 1e-6 and r2 > 1 - 1e-12
    assert fit_effective_time(torch.zeros(5, dtype=F64), lam) == (0.0, 1.0)
    # a non-exponential filter fits worse
    assert fit_effective_time(top_k(k=2)(lam), lam)[1] < 1 - 1e-3


def test_adam_has_an_effective_time(layer):
    _, C, D, theta0, eig = layer
    traj = adam_wudi(C, D, theta0, lr=1e-4, steps=50)
    f = empirical_filter_factors(traj.final, theta0, D, eig)
    t_eff, r2 = fit_effective_time(f, eig.values)
    assert np.isfinite(t_eff) and t_eff > 0 and r2 <= 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("make, name", [
    (lambda C, D, T: check_normal_equation(C[:, :3], D, T), "C"),
    (lambda C, D, T: check_normal_equation(C + torch.triu(torch.ones_like(C), 1), D, T), "C"),
    (lambda C, D, T: check_normal_equation(C, D[:, :3], T), "D"),
    (lambda C, D, T: check_normal_equation(C, D, T[:2]), "theta0"),
    (lambda C, D, T: check_normal_equation(C * float("nan"), D, T), "C"),
    (lambda C, D, T: check_normal_equation(C, D, T + float("inf")), "theta0"),
    (lambda C, D, T: spectral_estimate(C, D * float("nan"), T, zero()), "D"),
    (lambda C, D, T: gradient_descent(C, D, T, eta=0.0, steps=3), "eta"),
    (lambda C, D, T: gradient_descent(C, D, T, eta=-1.0, steps=3), "eta"),
    (lambda C, D, T: gradient_descent(C, D, T, eta=0.1, steps=-1), "steps"),
    (lambda C, D, T: gradient_descent(C, D, T, eta=0.1, steps=3, record=[4]), "record"),
    (lambda C, D, T: gradient_descent(C, D[:2, :4], T, eta=0.1, steps=3), "D"),
    (lambda C, D, T: gradient_flow(C, D, T, times=[1.0, -1.0]), "t"),
    (lambda C, D, T: adam_wudi(C, D, T, lr=0.0), "lr"),
    (lambda C, D, T: adam_wudi(C, D, T, betas=(0.9, 1.0)), "betas"),
    (lambda C, D, T: adam_wudi(C, D, T[:, :2]), "theta0"),
    (lambda C, D, T: wudi_reference(torch.zeros(2, 3, 4), torch.zeros(3, 5)), "theta0"),
    (lambda C, D, T: wudi_reference(torch.full((2, 3, 4), float("nan"))), "expert"),
    (lambda C, D, T: empirical_filter_factors(T, T, D, eigh(C[:4, :4])), "eig"),
    (lambda C, D, T: fit_effective_time([0.5, 0.5], [1.0, 2.0, 3.0]), "lam"),
    (lambda C, D, T: fit_effective_time([0.5, 0.5], [1.0, 2.0], weights=[-1.0, 1.0]), "weights"),
    (lambda C, D, T: landweber(0.0, 3), "eta"),
    (lambda C, D, T: landweber(0.1, -1), "n"),
    (lambda C, D, T: tikhonov(0.0), "alpha"),
    (lambda C, D, T: tikhonov(-1.0), "alpha"),
    (lambda C, D, T: wiener(p=0.0), "p"),
    (lambda C, D, T: wiener(nu2=0.0), "nu2"),
    (lambda C, D, T: exponential(-1.0), "t"),
    (lambda C, D, T: top_k(k=0), "k"),
    (lambda C, D, T: top_k(ratio=0.0), "ratio"),
    (lambda C, D, T: top_k(ratio=1.5), "ratio"),
    (lambda C, D, T: top_k(k=6)(torch.ones(5)), "k"),
    (lambda C, D, T: top_k(k=2, ratio=0.5), "k"),
    (lambda C, D, T: exponential(1.0)(torch.ones(2, 2)), "lam"),
    (lambda C, D, T: exponential(1.0)(torch.tensor([1.0, float("nan")])), "lam"),
])
def test_bad_input_raises_value_error_naming_the_argument(layer, make, name):
    _, C, D, theta0, _ = layer
    with pytest.raises(ValueError, match=name):
        make(C, D, theta0)


def test_soft_filters_stay_exact_below_the_eigenvalue_floor():
    """Eigenvalues below the 1e-8 floor: GD / gradient flow still equal their filters exactly.

    The floor protects pseudoinverse-like filters from dividing by round-off; filters whose
    f(lambda)/lambda has a finite limit at 0 (Landweber: eta n, exponential: t) must use it.
    """
    from swudi_lab.spectral import Eig

    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    lam = torch.tensor([2.0, 1.0, 0.5, 0.1, 1e-3, 1e-6, 1e-9, 1e-11, 1e-13, 0.0, 0.0, 0.0], dtype=torch.float64)
    C = Q @ torch.diag(lam) @ Q.T
    C = 0.5 * (C + C.T)
    D = torch.randn(5, 12, generator=g, dtype=torch.float64)
    theta0 = torch.randn(5, 12, generator=g, dtype=torch.float64)
    eig = Eig(lam, Q)  # the exact decomposition, so only the division is under test
    eta, n = 0.4, 2000
    gd = theta0.clone()
    for _ in range(n):
        gd = gd - eta * (gd @ C - D)
    lw = spectral_estimate(C, D, theta0, landweber(eta, n), eig=eig)
    torch.testing.assert_close(lw, gd, rtol=1e-9, atol=1e-9)
    # exponential: the k-th direction moves by (1 - exp(-lambda t)) / lambda * D q_k -> t D q_k
    t = 50.0
    ex = spectral_estimate(C, D, theta0, exponential(t), eig=eig)
    f_over = torch.where(lam > 0, -torch.expm1(-lam * t) / lam.clamp_min(1e-300), torch.full_like(lam, t))
    want = theta0 + ((D @ Q) * f_over - (theta0 @ Q) * (-torch.expm1(-lam * t))) @ Q.T
    torch.testing.assert_close(ex, want, rtol=1e-10, atol=1e-12)
