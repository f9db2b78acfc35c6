"""The authors' SWUDI / SWUDI-A knobs, OptMerge and the SWUDI+ preset: reductions and hand checks."""

import math

import numpy as np
import pytest
import torch
from merge_helpers import make_checkpoints, task_stack

import swudi_lab  # noqa: F401
from swudi_lab.cli import main
from swudi_lab.config import get_preset
from swudi_lab.merge import get_method, merge, resolve_params
from swudi_lab.merge.methods import consensus_factors, lam_max, optmerge_loss, optmerge_problem
from swudi_lab.spectral import eigh, interference_operator


def run(name, taus, **params):
    m = get_method(name)
    return m.fn(taus, name="layer", **resolve_params(m, params))


def spectral(taus, f, theta0=None):
    """theta_f written out per direction: theta0 + sum_k f_k (D q_k / lambda_k - theta0 q_k) q_k^T."""
    C, D = interference_operator(taus)
    lam, V = eigh(C)
    theta0 = taus.sum(0) if theta0 is None else theta0
    out = theta0.clone()
    for k in range(lam.numel()):
        if f[k] != 0:
            q = V[:, k:k + 1]
            out = out + f[k] * ((D @ q) / lam[k] - theta0 @ q) @ q.T
    return out


@pytest.fixture(scope="module")
def taus():
    return task_stack(n=4, d_out=24, d_in=16, rank=3)


# ----------------------------------------------------------------------------- reductions


def test_swudi_at_its_neutral_knobs_is_todays_swudi(taus):
    plain, info = run("swudi", taus)
    spelled, _ = run("swudi", taus, filter_type="exponential", alignment_rho=0.0, filter_gamma=1.0,
                     tikhonov_alpha=0.0, consensus_power=0.0, consensus_floor=0.7)
    assert torch.equal(plain, spelled)
    lam = eigh(interference_operator(taus)[0]).values
    K = math.ceil(0.65 * 16)
    f = (1 - torch.exp(-lam * 1300)) * (torch.arange(16) < K)
    torch.testing.assert_close(plain, spectral(taus, f), rtol=1e-9, atol=1e-12)
    assert info["k"] == K and "filter_type" not in info
    # the product path with factors that are all one (consensus floor 1) gives the same estimate
    product, pinfo = run("swudi", taus, consensus_power=2.0, consensus_floor=1.0)
    torch.testing.assert_close(product, plain, rtol=1e-12, atol=1e-14)
    assert pinfo["filter"].startswith("exponential*consensus*top_k")


def test_swudi_none_is_swudi_a_none_with_the_same_rank(taus):
    for r in (0.3, 0.65, 1.0):
        K = math.ceil(16 * r)
        sw, si = run("swudi", taus, filter_type="none", ratio=r)
        sa, ai = run("swudi_a", taus, rank_rule="none", max_rank_ratio=K / 16)
        assert torch.equal(sw, sa) and si["k"] == ai["k"] == K
    # t, gamma and alpha do not matter without the exponential filter
    a, _ = run("swudi", taus, filter_type="none", t=5.0, filter_gamma=0.5, tikhonov_alpha=3.0)
    b, _ = run("swudi", taus, filter_type="none")
    assert torch.equal(a, b)


def test_swudi_a_exponential_with_rule_none_is_iwudi(taus):
    for t in (30.0, 1e6):
        sa, info = run("swudi_a", taus, rank_rule="none", filter_type="exponential", t=t)
        iw, _ = run("iwudi", taus, t=t)
        assert torch.equal(sa, iw) and info["k"] == 16
    assert resolve_params("swudi_a")["t"] == 1e6


# ----------------------------------------------------------------------------- SWUDI knobs by hand


def test_swudi_gamma_and_tikhonov_factors(taus):
    lam = eigh(interference_operator(taus)[0]).values
    t, gamma, alpha = 40.0, 0.8, 0.05
    keep = (torch.arange(16) < math.floor(16 * 0.5 + 0.999)).double()
    got, info = run("swudi", taus, t=t, ratio=0.5, filter_gamma=gamma, tikhonov_alpha=alpha)
    f = (1 - torch.exp(-lam * t)).clamp(0, 1) ** gamma * lam / (lam + alpha) * keep
    torch.testing.assert_close(got, spectral(taus, f), rtol=1e-9, atol=1e-12)
    assert info["filter_type"] == "exponential" and info["k"] == 8


def test_swudi_consensus_factor_by_hand():
    # two experts on disjoint input columns: along every eigen-direction only one expert lives,
    # effective count 1, c = 1 / 2; factor = phi + (1 - phi) (1/2)^p
    g = torch.Generator().manual_seed(1)
    taus = torch.zeros(2, 6, 8, dtype=torch.float64)
    taus[0, :, :4] = torch.randn(6, 4, generator=g, dtype=torch.float64)
    taus[1, :, 4:] = 2 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    V = eigh(interference_operator(taus)[0]).vectors
    torch.testing.assert_close(consensus_factors(taus, V, 2.0, 0.2), torch.full((8,), 0.2 + 0.8 * 0.25, dtype=torch.float64))
    # identical experts: count N, c = 1, factor 1
    same = torch.stack([taus[0], taus[0]])
    torch.testing.assert_close(consensus_factors(same, eigh(interference_operator(same)[0]).vectors, 3.0, 0.0)[:4],
                               torch.ones(4, dtype=torch.float64))
    lam = eigh(interference_operator(taus)[0]).values
    got, _ = run("swudi", taus, t=50.0, ratio=1.0, consensus_power=2.0, consensus_floor=0.2)
    f = (1 - torch.exp(-lam * 50)) * 0.4
    torch.testing.assert_close(got, spectral(taus, f), rtol=1e-9, atol=1e-12)


def test_swudi_output_exp_time(taus):
    t_e = 0.7
    got, _ = run("swudi", taus, output_exp_time=t_e)
    plain, _ = run("swudi", taus)
    n = taus.pow(2).sum(dim=(1, 2))
    E = sum(tau @ tau.T / ni for tau, ni in zip(taus, n))
    sigma, U = torch.linalg.eigh(E)
    torch.testing.assert_close(got, U @ torch.diag(1 - torch.exp(-sigma.clamp_min(1e-8) * t_e)) @ U.T @ plain,
                               rtol=1e-9, atol=1e-12)
    # d_out = 1: no output filter
    one = taus[:, :1, :]
    assert torch.equal(run("swudi", one, output_exp_time=t_e)[0], run("swudi", one)[0])


def test_swudi_init_zero_is_the_filtered_closed_form_alone(taus):
    lam = eigh(interference_operator(taus)[0]).values
    got, _ = run("swudi", taus, init="zero", t=200.0, filter_gamma=0.9)
    f = (1 - torch.exp(-lam * 200)) ** 0.9 * (torch.arange(16) < 11)
    torch.testing.assert_close(got, spectral(taus, f, theta0=torch.zeros_like(taus[0])), rtol=1e-9, atol=1e-12)


def test_alignment_needs_its_reference_and_scales_the_time(taus):
    with pytest.raises(ValueError, match="alignment_ref"):
        run("swudi", taus, alignment_rho=0.5)
    lmax = float(eigh(interference_operator(taus)[0]).values[0])
    assert lam_max(taus) == pytest.approx(lmax, rel=1e-12)
    got, info = run("swudi", taus, alignment_rho=0.5, alignment_ref=4 * lmax, t=100.0)
    want, _ = run("swudi", taus, t=100.0 * 2.0, tikhonov_alpha=1e-300)  # same time, through the product path
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert info["t"] == pytest.approx(200.0) and info["lam_max"] == pytest.approx(lmax)
    with pytest.raises(ValueError, match="alignment_rho"):
        resolve_params("swudi", {"alignment_rho": 2.5})
    with pytest.raises(ValueError, match="consensus_floor"):
        resolve_params("swudi", {"consensus_floor": 1.5})
    with pytest.raises(ValueError, match="filter_type"):
        resolve_params("swudi", {"filter_type": "wiener"})


def test_the_merge_prepass_supplies_the_geometric_mean_of_lambda_max():
    base, experts = make_checkpoints(dtype=torch.float64)
    res = merge(base, experts, "swudi", alignment_rho=0.5, t=100.0, progress=False, device="cpu",
                dtype=torch.float64)
    rows = {r["name"]: r for r in res.report.rows if r.get("route") == "solver"}
    lmax = {}
    for k in rows:
        taus = torch.stack([e[k] - base[k] for e in experts])
        lmax[k] = float(eigh(interference_operator(taus)[0]).values[0])
    ref = math.exp(np.mean([math.log(v) for v in lmax.values()]))
    assert len(rows) == 2
    for k, row in rows.items():
        assert row["alignment_ref"] == pytest.approx(ref, rel=1e-10)
        assert row["t"] == pytest.approx(100.0 * (ref / lmax[k]) ** 0.5, rel=1e-10)
    # the same as giving the reference by hand; rho = 0 reads nothing in the pre-pass
    by_hand = merge(base, experts, "swudi", alignment_rho=0.5, alignment_ref=ref, t=100.0, progress=False,
                    device="cpu", dtype=torch.float64)
    for k in res.state_dict:
        torch.testing.assert_close(res.state_dict[k], by_hand.state_dict[k], rtol=1e-12, atol=1e-14)


def test_swudi_plus_preset(tmp_path, capsys):
    p = get_preset("swudi-plus")
    assert p.params("swudi") == {"t": 1300.0, "ratio": 0.65, "alignment_rho": 0.5, "filter_gamma": 0.98}
    base, experts = make_checkpoints()
    a = merge(base, experts, "swudi", preset="swudi-plus", progress=False, device="cpu")
    b = merge(base, experts, "swudi", t=1300.0, ratio=0.65, alignment_rho=0.5, filter_gamma=0.98, progress=False,
              device="cpu")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert main(["presets"]) == 0 and "swudi-plus" in capsys.readouterr().out


def test_cli_reaches_the_knobs(tmp_path, capsys):
    from swudi_lab.merge import save_safetensors
    from swudi_lab.merge.io import load_state_dict

    base, experts = make_checkpoints()
    b = str(save_safetensors(base, tmp_path / "base.safetensors"))
    es = [str(save_safetensors(e, tmp_path / f"t{i}.safetensors")) for i, e in enumerate(experts)]
    out = tmp_path / "m.safetensors"
    args = ["merge", "--base", b, "--experts", *es, "--out", str(out), "--no-progress", "--device", "cpu", "--quiet"]
    assert main(args + ["--method", "swudi", "--alignment-rho", "0.5", "--filter-gamma", "0.98",
                        "--consensus-power", "1", "--output-exp-time", "2"]) == 0
    want = merge(base, experts, "swudi", alignment_rho=0.5, filter_gamma=0.98, consensus_power=1.0,
                 output_exp_time=2.0, progress=False, device="cpu").state_dict
    got = load_state_dict(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert main(args + ["--method", "swudi_a", "--rank-rule", "wudi_risk_2", "--filter-type", "wiener",
                        "--rank-scale", "0.5"]) == 0
    assert main(args + ["--method", "optmerge", "--steps", "5"]) == 0
    capsys.readouterr()
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for flag in ("--alignment-rho", "--filter-gamma", "--tikhonov-alpha", "--consensus-power", "--consensus-floor",
                 "--output-exp-time", "--rank-scale", "--wiener-noise", "optmerge"):
        assert flag in text


# ----------------------------------------------------------------------------- SWUDI-A knobs


def test_swudi_a_wiener_noise_estimates(taus):
    lam = eigh(interference_operator(taus)[0]).values
    K = 5
    tail = lam[K:].clamp_min(1e-8)
    for how, nu2 in [("tail_mean", tail.mean()), ("tail_first", tail[0]), ("tail_median", float(np.median(tail.numpy())))]:
        got, info = run("swudi_a", taus, rank_rule="none", max_rank_ratio=K / 16, filter_type="wiener",
                        wiener_noise=how, wiener_scale=3.0)
        assert info["nu2"] == pytest.approx(float(nu2))
        f = lam**2 / (lam**2 + 3.0 * float(nu2)) * (torch.arange(16) < K)
        torch.testing.assert_close(got, spectral(taus, f), rtol=1e-9, atol=1e-12)
    # nothing discarded: the global median (mean of the two middle values of 16)
    _, info = run("swudi_a", taus, rank_rule="none", filter_type="wiener")
    assert info["nu2"] == pytest.approx(float(np.median(lam.numpy())))


def test_swudi_a_rank_scale_and_clamps(taus):
    _, base_info = run("swudi_a", taus)
    K = base_info["k"]
    _, info = run("swudi_a", taus, rank_scale=0.5)
    assert info["k"] == max(1, round(K * 0.5))
    _, info = run("swudi_a", taus, rank_rule="none", max_rank_ratio=0.25, min_rank=6)
    assert info["k"] == 6  # upper clamp max(min_rank, round(0.25 * 16) = 4) = 6


def test_swudi_a_passes_the_start_energy_to_the_loss_rules(taus):
    from swudi_lab.spectral import choose_rank, rank_context

    C, D = interference_operator(taus)
    eig = eigh(C)
    for init in ("sum", "zero"):
        ctx = rank_context(taus, eig=eig, D=D, init=init)
        for rule in ("wudi_risk", "loss_elbow_0.001", "gavish_donoho_authors", "gavish_donoho"):
            _, info = run("swudi_a", taus, rank_rule=rule, init=init)
            assert info["k"] == choose_rank(eig.values, rule, **ctx), (rule, init)


# ----------------------------------------------------------------------------- OptMerge


def test_optmerge_loss_is_the_hand_written_one_and_decreases():
    taus = task_stack(n=3, d_out=10, d_in=7, rank=2)
    targets, P, n, K = optmerge_problem(taus)
    assert K == max(1, 7 // 3) == 2
    theta = torch.randn(10, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = 0.0
    mean = taus.mean(0)
    for tau in taus:
        U, S, Vh = torch.linalg.svd(tau - mean)
        target = U[:, :K] @ torch.diag(S[:K]) @ Vh[:K] + mean
        _, s, vh = torch.linalg.svd(tau)
        proj = torch.diag(s[:K]) @ vh[:K]
        ref += float(((theta - target) @ proj.T).pow(2).sum() / tau.pow(2).sum())
    assert float(optmerge_loss(theta, targets, P, n)) == pytest.approx(ref, rel=1e-12)
    out, info = run("optmerge", taus, lr=1e-3, steps=50)
    assert info["loss_after"] < info["loss_before"] and info["rank"] == 2
    assert info["loss_after"] == pytest.approx(float(optmerge_loss(out, targets, P, n)), rel=1e-10)
    # the fast path gives autograd Adam's iterates on the explicit loss
    theta = taus.sum(0).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=1e-3)
    for _ in range(50):
        opt.zero_grad()
        optmerge_loss(theta, targets, P, n).backward()
        opt.step()
    torch.testing.assert_close(out, theta.detach(), rtol=1e-7, atol=1e-10)
    assert resolve_params("optmerge") == {"lr": 1e-5, "steps": 300, "rank": None, "scale": 1.0}
