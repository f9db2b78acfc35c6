"""A filter registered in one place is everywhere: the registry, ``swudi-lab methods``,
``swudi-lab merge --method filtered --filter NAME`` (with its own flags), the explorers' choices
and the toy demo's table. Nothing else is edited."""

from typing import Annotated

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from swudi_lab import cli
from swudi_lab.merge import get_method, merge
from swudi_lab.registry import Doc, positive
from swudi_lab.spectral import FILTERS, Filter, eigh, interference_operator, make_filter, spectral_estimate
from swudi_lab.spectral.filters import Time, register_filter
from swudi_lab.toy.demo import run_toy_demo
from swudi_lab.viz.explorers import cutoff_filters, inverse_problem_explorer

NAME = "stretched"


@pytest.fixture
def stretched():
    """``f(lambda) = (1 - exp(-lambda t))^gamma``, registered for the test and removed after it."""

    @register_filter(NAME, cutoff=lambda lambda_c, lam: make(1.0 / lambda_c, 2.0),
                     sweep=lambda s, n: (lambda t: make(t, 2.0), [t / s for t in np.logspace(0, 16, 41).tolist()]))
    def make(t: Time, gamma: Annotated[float, Doc("stretching exponent gamma", check=positive)] = 1.0) -> Filter:
        return Filter(NAME, {"t": t, "gamma": gamma}, lambda lam: (-torch.expm1(-lam * t)) ** gamma)

    yield make
    del FILTERS[NAME]


def test_a_registered_filter_is_reachable_everywhere(stretched, tmp_path, capsys):
    # the registry and the filtered method's parameters (its new flag --gamma included)
    assert make_filter(NAME, t=2.0, gamma=3.0).label == "stretched(t=2, gamma=3)"
    with pytest.raises(ValueError, match="'gamma' must be > 0"):
        make_filter(NAME, t=2.0, gamma=-1.0)
    assert "gamma" in [p.name for p in get_method("filtered").params]

    # swudi-lab methods lists it and its parameter
    assert cli.main(["methods", "filtered"]) == 0
    listing = capsys.readouterr().out
    assert "--gamma" in listing and "stretching exponent gamma" in listing

    # swudi-lab merge --method filtered --filter stretched --t 5 --gamma 2 gives theta_f of that filter
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 5, generator=g, dtype=torch.float64)}
    experts = [{"w": base["w"] + 0.1 * torch.randn(6, 5, generator=g, dtype=torch.float64)} for _ in range(3)]
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, e in enumerate(experts):
        paths.append(str(tmp_path / f"e{i}.safetensors"))
        save_file(e, paths[-1])
    out = tmp_path / "merged.safetensors"
    rc = cli.main(["merge", "--base", str(tmp_path / "base.safetensors"), "--experts", *paths, "--method", "filtered",
                   "--filter", NAME, "--t", "5", "--gamma", "2", "--dtype", "float64", "--device", "cpu",
                   "--out", str(out), "--quiet", "--no-progress"])
    assert rc == 0
    taus = torch.stack([e["w"] - base["w"] for e in experts])
    C, D = interference_operator(taus)
    want = base["w"] + spectral_estimate(C, D, taus.sum(0), stretched(5.0, 2.0), eig=eigh(C))
    torch.testing.assert_close(load_file(out)["w"], want, rtol=1e-12, atol=1e-12)
    assert torch.equal(merge(base, experts, "filtered", filter=NAME, t=5.0, gamma=2.0, dtype=torch.float64,
                             device="cpu", progress=False).state_dict["w"], load_file(out)["w"])

    # the explorers offer it, and draw it
    assert NAME in cutoff_filters()
    fig = inverse_problem_explorer(filter=NAME, n=16, mode="static")
    assert any(NAME in (trace.name or "") for trace in fig.data)

    # the toy demo's table has its rows, one per choice rule
    rows = [r for r in run_toy_demo("shaw", n=16) if r["filter"] == NAME]
    assert {r["rule"] for r in rows} == {"oracle", "gcv", "l_curve", "discrepancy"}
    assert all(np.isfinite(r["error"]) for r in rows)


def test_the_registry_refuses_a_second_filter_of_the_same_name(stretched):
    with pytest.raises(ValueError, match="already registered"):
        register_filter(NAME)(lambda: Filter(NAME, {}, torch.ones_like))
