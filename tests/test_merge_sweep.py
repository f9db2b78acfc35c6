"""filter_sweep: one eigh per layer, identical results to the registry's methods."""

import pytest
import torch

from swudi_lab.merge import merge
from swudi_lab.merge.sweep import filter_sweep, per_layer
from swudi_lab.spectral import kappa_time
from swudi_lab.spectral import exponential, pseudoinverse, swudi

from merge_helpers import make_checkpoints


@pytest.fixture(scope="module")
def ckpts():
    return make_checkpoints(n_experts=4, dtype=torch.float64)


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=k)


def test_sweep_matches_each_method(ckpts):
    base, experts = ckpts
    rules = {
        "closed": per_layer(pseudoinverse()),
        "iwudi": lambda d, n: exponential(kappa_time(3.0, d, n)),
        "swudi": lambda d, n: swudi(kappa_time(13.0, d, n), ratio=0.5),
    }
    out = filter_sweep(base, experts, rules, dtype=torch.float64)
    kw = dict(progress=False, device="cpu", dtype=torch.float64)
    _same(out["closed"], merge(base, experts, "closed_form", **kw).state_dict)
    _same(out["iwudi"], merge(base, experts, "iwudi", kappa=3.0, **kw).state_dict)
    _same(out["swudi"], merge(base, experts, "swudi", kappa=13.0, ratio=0.5, **kw).state_dict)


def test_sweep_zero_init_and_scale(ckpts):
    base, experts = ckpts
    rule = {"x": lambda d, n: exponential(kappa_time(1.0, d, n))}
    out = filter_sweep(base, experts, rule, init="zero", scale=0.5, dtype=torch.float64)["x"]
    ref = merge(base, experts, "iwudi", kappa=1.0, init="zero", scale=0.5, progress=False, dtype=torch.float64)
    _same(out, ref.state_dict)


def test_kappa_time_is_the_scale_free_time():
    # kappa = t N / d_in: the paper's t = 300 on d_in = 768 with N = 8 is kappa = 3.125
    assert kappa_time(300 * 8 / 768, 768, 8) == pytest.approx(300.0)


def test_sweep_rejects_bad_arguments(ckpts):
    base, experts = ckpts
    with pytest.raises(ValueError, match="init"):
        filter_sweep(base, experts, {"x": per_layer(pseudoinverse())}, init="mean")
    with pytest.raises(ValueError, match="rules"):
        filter_sweep(base, experts, {})
