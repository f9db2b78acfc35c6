"""The method registry: parameters, defaults, validation (swudi_lab.merge.registry)."""

import pytest

import swudi_lab  # noqa: F401
from swudi_lab.merge import METHODS, describe_methods, get_method, resolve_params

PAPER_DEFAULTS = {
    "task_arithmetic": {"scale": 0.3},
    "ties": {"density": 0.2, "scale": 0.3},
    "wudi": {"lr": 1e-5, "steps": 300, "eps": 1e-8, "init": "sum", "scale": 1.0, "reference": False},
    "iwudi": {"t": 300.0, "kappa": None},
    "swudi": {"t": 1300.0, "ratio": 0.65, "k": None, "filter_type": "exponential", "alignment_rho": 0.0,
              "alignment_ref": None, "filter_gamma": 1.0, "tikhonov_alpha": 0.0, "consensus_power": 0.0,
              "consensus_floor": 0.0, "output_exp_time": None, "init": "sum"},
    "swudi_a": {"rank_rule": "participation_sqrt", "min_rank": 1, "max_rank_ratio": 1.0, "rank_scale": 1.0,
                "filter_type": "none", "t": 1e6, "wiener_power": 2.0, "wiener_scale": 1.0,
                "wiener_noise": "tail_mean"},
    "optmerge": {"lr": 1e-5, "steps": 300, "rank": None},
}


def test_all_methods_registered_with_paper_defaults():
    assert set(METHODS) == {"average", "task_arithmetic", "ties", "wudi", "closed_form", "iwudi", "filtered",
                            "swudi", "swudi_a", "optmerge"}
    for name, expected in PAPER_DEFAULTS.items():
        got = resolve_params(name)
        assert {k: got[k] for k in expected} == expected, name
    spectral = {m for m in METHODS if METHODS[m].spectral}
    assert spectral == {"wudi", "closed_form", "iwudi", "filtered", "swudi", "swudi_a", "optmerge"}
    for m in spectral:
        assert {"init", "scale"} - ({"init"} if m == "optmerge" else set()) <= set(METHODS[m].defaults)


def test_unknown_and_invalid_parameters():
    with pytest.raises(ValueError, match=r"accepted: \['t', 'kappa', 'ratio', 'k', 'filter_type', 'alignment_rho'"):
        resolve_params("swudi", {"alpha": 1})
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="'init' must be one of"):
        resolve_params("swudi", {"init": "random"})
    with pytest.raises(ValueError, match="'steps' must be a finite int"):
        resolve_params("wudi", {"steps": 2.5})
    with pytest.raises(ValueError, match="ratio.*in \\(0, 1\\]"):
        resolve_params("swudi", {"ratio": 1.5})
    with pytest.raises(ValueError, match="unknown rank rule"):
        resolve_params("swudi_a", {"rank_rule": "magic"})
    with pytest.raises(ValueError, match="give the filter name"):
        resolve_params("filtered", {})
    with pytest.raises(ValueError, match="missing a required argument: 'n'"):
        resolve_params("filtered", {"filter": "landweber", "eta": 0.1})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['alpha'\]"):
        resolve_params("filtered", {"filter": "landweber", "eta": 0.1, "n": 3, "alpha": 1.0})


def test_exclusive_groups():
    p = resolve_params("swudi", {"kappa": 3, "k": 10})
    assert p["t"] is None and p["ratio"] is None and p["kappa"] == 3.0 and p["k"] == 10
    with pytest.raises(ValueError, match="only one of"):
        resolve_params("iwudi", {"t": 10, "kappa": 3})


def test_describe_lists_every_method_and_flag():
    text = describe_methods()
    for m in METHODS.values():
        assert m.name in text
        for p in m.params:
            assert p.flag in text
    assert "--rank-rule" in text and "mean of task vectors" in text
