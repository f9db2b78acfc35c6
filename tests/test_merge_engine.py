"""The streaming merge engine: routing, dtypes, heads, determinism, bad input (swudi_lab.merge.engine)."""

import hashlib

import pytest
import torch
from merge_helpers import make_checkpoints

import swudi_lab  # noqa: F401
from swudi_lab.merge import METHODS, iter_layer_problems, merge, merge_files, save_safetensors
from swudi_lab.merge.io import SafetensorsCheckpoint
from swudi_lab.spectral import interference_operator

PARAMS = {"wudi": {"steps": 5}, "filtered": {"filter": "wiener"}}


def write(tmp_path, base, experts):
    b = save_safetensors(base, tmp_path / "base.safetensors")
    es = [save_safetensors(e, tmp_path / f"task{i}.safetensors") for i, e in enumerate(experts)]
    return b, es


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_keys_shapes_dtypes_finite(name, dtype):
    base, experts = make_checkpoints(dtype=dtype)
    res = merge(base, experts, name, progress=False, **PARAMS.get(name, {}))
    sd = res.state_dict
    assert sorted(sd) == sorted(k for k in base if not k.startswith("head."))
    for k, v in sd.items():
        assert v.shape == base[k].shape and v.dtype == base[k].dtype, k
        assert not v.is_floating_point() or torch.isfinite(v.float()).all(), k
    assert torch.equal(sd["norm.num_batches_tracked"], base["norm.num_batches_tracked"])
    assert list(res.heads) == ["expert0", "expert1", "expert2"]
    assert res.heads["expert2"]["head.weight"].shape == (5, 16)
    routes = {r["name"]: r["route"] for r in res.report.rows}
    assert routes["norm.num_batches_tracked"] == "base" and routes["expert1/head.bias"] == "head"
    if METHODS[name].spectral:
        assert routes["blocks.0.fc.weight"] == "solver" and routes["pos_embed"] == "mean"
        mean = torch.stack([e["blocks.0.fc.bias"].float() for e in experts]).mean(0)
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the result
        torch.testing.assert_close(sd["blocks.0.fc.bias"].float(), mean, rtol=tol, atol=tol)
    else:
        assert routes["pos_embed"] == "rule"


def test_inputs_are_not_modified():
    base, experts = make_checkpoints()
    copies = [{k: v.clone() for k, v in sd.items()} for sd in [base, *experts]]
    res = merge(base, experts, "swudi", progress=False)
    for before, after in zip(copies, [base, *experts]):
        assert all(torch.equal(before[k], after[k]) for k in before)
    res.state_dict["blocks.0.fc.weight"].add_(1.0)  # the result does not alias the inputs
    assert torch.equal(base["norm.num_batches_tracked"], copies[0]["norm.num_batches_tracked"])


def test_include_exclude_fullmatch_and_no_heads():
    base, experts = make_checkpoints()
    res = merge(base, experts, "average", progress=False, include=r"blocks\.\d+\..*", exclude=[r".*\.bias"])
    sd = res.state_dict
    assert torch.equal(sd["pos_embed"], base["pos_embed"])  # not included
    assert torch.equal(sd["blocks.0.fc.bias"], base["blocks.0.fc.bias"])  # excluded
    assert not torch.equal(sd["blocks.0.fc.weight"], base["blocks.0.fc.weight"])
    # full match: "blocks" alone matches nothing
    res = merge(base, experts, "average", progress=False, include="blocks")
    assert all(torch.equal(res.state_dict[k], base[k]) for k in res.state_dict)
    # head_pattern=None: heads are ordinary tensors (same shapes needed)
    b, e = make_checkpoints(heads=False)
    assert merge(b, e, "average", progress=False, head_pattern=None).heads == {}


def test_merge_files_streams_same_result_and_is_deterministic(tmp_path):
    base, experts = make_checkpoints(dtype=torch.float16)
    b, es = write(tmp_path, base, experts)
    out1, out2 = tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"
    rep = merge_files(b, es, out1, "swudi_a", progress=False, device="cpu", report_path=tmp_path / "r.json")
    merge_files(b, es, out2, "swudi_a", progress=False, device="cpu")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out1) == digest(out2)
    mem = merge(base, experts, "swudi_a", progress=False, device="cpu")
    ck = SafetensorsCheckpoint(out1)
    assert ck.keys() == sorted(mem.state_dict)
    assert all(torch.equal(ck.get(k), mem.state_dict[k]) for k in ck.keys())
    heads = SafetensorsCheckpoint(tmp_path / "m1.heads.safetensors")
    assert torch.equal(heads.get("task1/head.weight"), experts[1]["head.weight"])
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()
    assert rep.meta["tasks"] == ["task0", "task1", "task2"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_modules_as_inputs_and_float64():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.LayerNorm(24))
    experts = []
    for _ in range(2):
        e = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.LayerNorm(24))
        e.load_state_dict(base.state_dict())
        with torch.no_grad():
            e[0].weight.add_(0.01 * torch.randn(24, 16))
        experts.append(e)
    res = merge(base, {"a": experts[0], "b": experts[1]}, "closed_form", progress=False, dtype="float64")
    assert res.state_dict["0.weight"].dtype == torch.float32
    assert res.report.meta["tasks"] == ["a", "b"] and res.report.meta["dtype"] == "float64"


def test_iter_layer_problems_matches_spectral_core():
    base, experts = make_checkpoints()
    probs = list(iter_layer_problems(base, experts))
    assert [p.name for p in probs] == ["blocks.0.fc.weight", "blocks.1.proj.weight"]
    p = probs[0]
    taus = torch.stack([e[p.name] - base[p.name] for e in experts])
    C, D = interference_operator(taus)
    torch.testing.assert_close(p.C, C)
    torch.testing.assert_close(p.D, D)
    assert p.eig.values[0] >= p.eig.values[-1] and torch.equal(p.base, base[p.name])


# ----------------------------------------------------------------------------- bad input


def test_expert_with_different_keys_or_shapes(tmp_path):
    base, experts = make_checkpoints()
    bad = dict(experts[1])
    del bad["pos_embed"]
    with pytest.raises(ValueError, match=r"expert 'expert1'.*missing \['pos_embed'\]"):
        merge(base, [experts[0], bad], progress=False)
    bad = dict(experts[0], **{"blocks.0.fc.weight": torch.zeros(24, 17)})
    b, es = write(tmp_path, base, [bad, experts[1]])
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=r"'blocks\.0\.fc\.weight'.*task0.*\(24, 17\)"):
        merge_files(b, es, out, "swudi", progress=False)
    assert not out.exists()


def test_nan_in_checkpoint_leaves_no_output(tmp_path):
    base, experts = make_checkpoints()
    experts[2]["blocks.1.proj.weight"][3, 4] = float("inf")
    b, es = write(tmp_path, base, experts)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=r"'blocks\.1\.proj\.weight' of expert 'task2'.*NaN or Inf"):
        merge_files(b, es, out, "swudi", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "task0.safetensors",
                                                          "task1.safetensors", "task2.safetensors"]


def test_empty_missing_and_unknown():
    base, experts = make_checkpoints()
    with pytest.raises(ValueError, match="no experts"):
        merge(base, [], progress=False)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        merge(base, ["nope.safetensors"], progress=False)
    with pytest.raises(ValueError, match="unknown method 'swudy'"):
        merge(base, experts, "swudy", progress=False)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['alpha'\]"):
        merge(base, experts, "swudi", alpha=1.0, progress=False)
    with pytest.raises(ValueError, match="k=40 is larger"):  # a failing layer is named
        merge(base, experts, "swudi", k=40, progress=False)


def test_one_expert_gives_the_expert():
    base, experts = make_checkpoints(n_experts=1, dtype=torch.float64)
    for name in ("closed_form", "swudi", "swudi_a", "average"):
        sd = merge(base, experts, name, progress=False, dtype=torch.float64).state_dict
        for k, v in sd.items():
            torch.testing.assert_close(v, experts[0][k], msg=f"{name} {k}")
