"""LoRA experts: the low-rank small solve (swudi_lab.spectral.lowrank) against the dense computation, the PEFT
adapter reader (swudi_lab.merge.lora) and its errors, and an end-to-end merge of real PEFT adapters."""

import hashlib
import json
import math

import pytest
import torch

from merge_helpers import cached_repo

import swudi_lab  # noqa: F401
from swudi_lab.merge import get_method, merge, merge_files, methods, resolve_params, save_safetensors
from swudi_lab.merge.io import DictCheckpoint, load_state_dict
from swudi_lab.merge.lora import LoraAdapter, is_adapter_dir
from swudi_lab.spectral import FILTERS, RANK_RULES, LowRankTasks, layer_operator, lowrank_operator

FAST = {"wudi": {"steps": 8}, "optmerge": {"steps": 8}}


def run(name, taus, **params):
    m = get_method(name)
    return m.fn(taus, name="layer", **resolve_params(m, {**FAST.get(name, {}), **params}))


def factors(ranks, d_out, d_in, seed=0, dtype=torch.float64, scales=None):
    """Random LoRA factors: B_i (d_out, r_i), A_i (r_i, d_in), scales s_i = alpha / r_i (alpha = 2 r_max)."""
    g = torch.Generator().manual_seed(seed)
    B = [torch.randn(d_out, r, generator=g, dtype=dtype) * 0.1 for r in ranks]
    A = [torch.randn(r, d_in, generator=g, dtype=dtype) / math.sqrt(d_in) for r in ranks]
    if scales is None:
        scales = [2.0 * max(ranks) / r for r in ranks]
    return LowRankTasks(B, A, scales)


# ----------------------------------------------------------------------------- the small solve


def _rules():
    fixed = list(RANK_RULES)
    return fixed + ["cumvar_0.8", "loss_elbow_0.05", "loss_residual_0.95", "wudi_risk_0.5"]


FILTER_PARAMS = {"exponential": {"t": 300.0}, "top_k": {"ratio": 0.5}, "tikhonov": {"alpha": 1e-3},
                 "landweber": {"eta": 1e-2, "n": 20}}
ONE_EIGH = ([("closed_form", {}), ("closed_form", {"init": "zero"}), ("iwudi", {}), ("iwudi", {"kappa": 3.0}),
             ("swudi", {}), ("swudi", {"k": 3}), ("swudi", {"filter_type": "none"}), ("swudi", {"init": "zero"}),
             ("swudi", {"alignment_rho": 0.5, "alignment_ref": 0.3, "filter_gamma": 0.98, "tikhonov_alpha": 1e-3}),
             ("swudi", {"consensus_power": 1.0, "consensus_floor": 0.2}), ("swudi", {"output_exp_time": 30.0}),
             ("swudi_a", {"filter_type": "exponential", "t": 300.0}), ("swudi_a", {"filter_type": "wiener"})]
            + [("swudi_a", {"rank_rule": r}) for r in _rules()]
            + [("filtered", {"filter": f, "alpha": None, **FILTER_PARAMS.get(f, {})}) for f in FILTERS])

# (ranks, d_out, d_in): d_in < N r, d_in > N r, d_out > d_in, d_out < d_in, mixed ranks, rank 1
SHAPES = [([4, 4, 4], 12, 8), ([1, 1, 1], 6, 40), ([16, 4, 1, 2], 30, 20), ([4, 16], 16, 64), ([1], 5, 7)]


@pytest.mark.parametrize("name, params", ONE_EIGH, ids=lambda x: x if isinstance(x, str) else
                         "-".join(f"{k}={v}" for k, v in x.items() if v is not None))
@pytest.mark.parametrize("ranks, d_out, d_in", SHAPES)
def test_lowrank_path_equals_the_dense_computation(monkeypatch, name, params, ranks, d_out, d_in):
    """The factored solve gives the dense merge (float64 <= 1e-10 relative) and the dense report (losses, k,
    eigenvalue summary); in float32 it is within 1e-5 of that merge (or no further off than the dense float32
    computation, for the ill-conditioned closed form)."""
    tasks = factors(ranks, d_out, d_in, seed=len(ranks) * d_in)
    taus = tasks.dense()
    small, si = run(name, tasks, **params)
    monkeypatch.setattr(methods, "_use_subspace", lambda *shape: False)  # the dense path: d_in x d_in eigh
    dense, di = run(name, taus, **params)
    assert "subspace" not in di and "lowrank" not in di
    assert float((small - dense).norm() / dense.norm()) <= 1e-10
    if "consensus_power" not in params and "output_exp_time" not in params:
        assert si["lowrank"] and si["subspace"] <= min(sum(ranks), d_in)
    for key in ("loss_before", "loss_after", "lam_max", "lam_mean", "participation", "n_live"):
        assert si[key] == pytest.approx(di[key], rel=1e-9, abs=1e-12), key
    assert si["lam_min"] == pytest.approx(di["lam_min"], abs=1e-12)
    # k counts f != 0: the dense spectrum's round-off null eigenvalues may count for filters with f > 0 at every
    # lambda > 0, where the low-rank path has exact zeros; nothing else may differ
    if si.get("lowrank"):  # (the densified knobs take the dense tensor's own paths, tested in test_merge_methods)
        assert si["k"] <= di["k"] <= si["k"] + d_in - si["subspace"]
    err = lambda x: float((x.double() - dense).norm() / dense.norm())  # noqa: E731
    small32, _ = run(name, tasks.to(torch.float32), **params)
    dense32, _ = run(name, tasks.to(torch.float32).dense(), **params)  # the dense path on the same float32 factors
    assert small32.dtype == torch.float32
    assert err(small32) <= max(1e-5, 1.5 * err(dense32)), (err(small32), err(dense32))


@pytest.mark.parametrize("name, params", [(n, p) for n, p in ONE_EIGH
                                          if "consensus_power" not in p and "output_exp_time" not in p])
def test_one_eigh_methods_never_form_the_task_vectors(monkeypatch, name, params):
    tasks = factors([4, 2, 8], 24, 48)

    def refuse(self):
        raise AssertionError("densified")

    monkeypatch.setattr(LowRankTasks, "dense", refuse)
    delta, info = run(name, tasks, **params)
    assert delta.shape == (24, 48) and info["lowrank"]


@pytest.mark.parametrize("name, params", [("wudi", {}), ("optmerge", {}), ("average", {}), ("task_arithmetic", {}),
                                          ("ties", {})])
def test_methods_that_read_the_task_vectors_densify(name, params):
    tasks = factors([2, 3], 10, 14)
    a, _ = run(name, tasks, **params)
    b, _ = run(name, tasks.dense(), **params)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_lowrank_operator_is_the_dense_operator_in_the_span():
    """C = (Q W) diag(lam) (Q W)^T, D = (D Q) Q^T, theta0 = (theta0 Q) Q^T, n_i and L(0) as the dense operator;
    repeated directions (two experts sharing A) give m < sum r_i, a zero expert is skipped."""
    t = factors([3, 5, 2], 9, 30)
    A = [t.A[0], t.A[0] * 2.0, t.A[1], t.A[2] * 0]  # expert 1 repeats expert 0's rows, expert 3 is zero
    B = [t.B[0], t.B[1][:, :3], t.B[1], t.B[2]]
    tasks = LowRankTasks(B, A, [0.5, 1.0, 2.0, 3.0])
    op = lowrank_operator(tasks, start=True)
    ref = layer_operator(tasks.dense(), start=True)
    assert op.n_live == ref.n_live == 3 and op.Q.shape[1] == 3 + 5  # the repeated 3 rows add nothing
    torch.testing.assert_close(op.Q.T @ op.Q, torch.eye(op.Q.shape[1], dtype=op.Q.dtype), rtol=0, atol=1e-12)
    V = op.V
    torch.testing.assert_close((V * op.lam) @ V.T, ref.C, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.D @ op.Q.T, ref.D, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.theta0 @ op.Q.T, ref.theta0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.norms, ref.norms, rtol=1e-12, atol=0)
    assert op.const == pytest.approx(ref.const, rel=1e-12)
    assert (op.lam[:-1] >= op.lam[1:]).all()


def test_zero_experts_and_zero_layers():
    tasks = factors([2, 3], 8, 12)
    zero = LowRankTasks([tasks.B[0], torch.zeros(8, 0, dtype=torch.float64)],
                        [tasks.A[0], torch.zeros(0, 12, dtype=torch.float64)], [1.0, 1.0])
    one, info = run("swudi", zero)
    assert info["n_live"] == 1
    torch.testing.assert_close(one, tasks.B[0] @ tasks.A[0])  # one live expert: the expert itself
    none = LowRankTasks([torch.zeros(8, 2, dtype=torch.float64)], [torch.randn(2, 12, dtype=torch.float64)])
    delta, info = run("swudi_a", none)
    assert info["n_live"] == 0 and delta.shape == (8, 12) and not delta.any()


def test_lowrank_tasks_validation_names_the_expert():
    B, A = [torch.randn(6, 2), torch.randn(6, 3)], [torch.randn(2, 5), torch.randn(2, 5)]
    with pytest.raises(ValueError, match=r"expert 1: B \(6, 3\) has rank 3 but A \(2, 5\) has rank 2"):
        LowRankTasks(B, A)
    with pytest.raises(ValueError, match=r"expert 1: tau_i = B A is \(6, 4\), expert 0's is \(6, 5\)"):
        LowRankTasks([B[0], B[0]], [A[0], torch.randn(2, 4)])
    bad = A[1].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="expert 1: .*NaN or Inf"):
        LowRankTasks([B[0], B[0]], [A[0], bad])
    with pytest.raises(ValueError, match="2 scales for 1 experts"):
        LowRankTasks([B[0]], [A[0]], [1.0, 2.0])
    t = LowRankTasks([B[0]], [A[0]], [0.5])
    assert t.shape == (1, 6, 5) and t.ranks == [2]
    torch.testing.assert_close(t.dense()[0], 0.5 * B[0] @ A[0])


# ----------------------------------------------------------------------------- the adapter reader


def base_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"layers.0.q.weight": torch.randn(8, 6, generator=g), "layers.0.q.bias": torch.randn(8, generator=g),
            "layers.0.fc.weight": torch.randn(10, 6, generator=g), "layers.1.q.weight": torch.randn(8, 6, generator=g),
            "layers.1.fc.weight": torch.randn(10, 6, generator=g), "norm.weight": torch.ones(6),
            "cls.weight": torch.randn(3, 6, generator=g)}


def write_adapter(path, base, *, r=2, alpha=4, targets=("q",), seed=1, config=None, drop=(), extra=None, ranks=None):
    """A PEFT-layout adapter directory for ``base`` (every weight whose module ends with a target), written by hand."""
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, w in base.items():
        module = k[: -len(".weight")]
        if k.endswith(".weight") and w.ndim == 2 and any(module.endswith(t) for t in targets):
            rk = (ranks or {}).get(module, r)
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rk, w.shape[1], generator=g)
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(w.shape[0], rk, generator=g)
    tensors.update(extra or {})
    for k in drop:
        tensors.pop(k)
    save_safetensors(tensors, path / "adapter_model.safetensors")
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(targets), "bias": "none",
           "fan_in_fan_out": False, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
           "modules_to_save": None, "base_model_name_or_path": None, "use_dora": False}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


def test_adapter_keys_map_onto_the_base(tmp_path):
    base = base_state()
    ts = write_adapter(tmp_path / "a", base, r=2, alpha=6, targets=("q", "fc"), ranks={"layers.1.fc": 3},
                       config={"rank_pattern": {"layers.1.fc": 3}, "alpha_pattern": {"fc": 9}})
    assert is_adapter_dir(tmp_path / "a") and not is_adapter_dir(tmp_path)
    ad = LoraAdapter(tmp_path / "a", DictCheckpoint(base))
    assert ad.targeted == ["layers.0.fc.weight", "layers.0.q.weight", "layers.1.fc.weight", "layers.1.q.weight"]
    A, B = ts["base_model.model.layers.1.fc.lora_A.weight"], ts["base_model.model.layers.1.fc.lora_B.weight"]
    got = ad.delta("layers.1.fc.weight", base["layers.1.fc.weight"])
    torch.testing.assert_close(got, (9 / 3) * B @ A)  # alpha_pattern 9, rank_pattern 3
    A, B = ts["base_model.model.layers.0.q.lora_A.weight"], ts["base_model.model.layers.0.q.lora_B.weight"]
    torch.testing.assert_close(ad.get("layers.0.q.weight"), base["layers.0.q.weight"] + 3 * B @ A)
    assert torch.equal(ad.get("norm.weight"), base["norm.weight"])  # not targeted: the base's


def test_rslora_and_fan_in_fan_out(tmp_path):
    base = {"h.attn.weight": torch.randn(6, 10)}  # Conv1D layout: (d_in, d_out)
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 6, generator=g), torch.randn(10, 4, generator=g)
    write_adapter(tmp_path / "a", {}, r=4, alpha=8, targets=("attn",),
                  config={"use_rslora": True, "fan_in_fan_out": True},
                  extra={"base_model.model.h.attn.lora_A.weight": A, "base_model.model.h.attn.lora_B.weight": B})
    ad = LoraAdapter(tmp_path / "a", DictCheckpoint(base))
    torch.testing.assert_close(ad.delta("h.attn.weight", base["h.attn.weight"]), (8 / 2) * (B @ A).T)


def test_modules_to_save_replace_the_base_tensor(tmp_path):
    base = base_state()
    full = torch.randn(3, 6)
    write_adapter(tmp_path / "a", base, config={"modules_to_save": ["cls"]}, extra={"base_model.model.cls.weight": full})
    ad = LoraAdapter(tmp_path / "a", DictCheckpoint(base))
    assert ad.is_full("cls.weight") and torch.equal(ad.get("cls.weight"), full)


def _error(tmp_path, match, base=None, **kw):
    base = base or base_state()
    write_adapter(tmp_path / "bad", base, **kw)
    with pytest.raises(ValueError, match=match):
        LoraAdapter(tmp_path / "bad", DictCheckpoint(base, "base.safetensors"))


def test_rank_disagreeing_with_the_config(tmp_path):
    _error(tmp_path, r"layers.0.q.lora_A.weight' has shape \(2, 6\), rank 2, but .*adapter_config.json gives module "
                     r"'layers.0.q' rank 4 \(its r\)", r=2, config={"r": 4})


def test_rank_pattern_disagreeing_with_the_tensors(tmp_path):
    _error(tmp_path, r"'layers.1.q' rank 5 \(its rank_pattern\)", config={"rank_pattern": {"layers.1.q": 5}})


def test_incomplete_pair(tmp_path):
    _error(tmp_path, r"adapter_model.safetensors: module 'layers.1.q' has .*lora_A.weight' but no "
                     r"base_model.model.layers.1.q.lora_B.weight", drop=["base_model.model.layers.1.q.lora_B.weight"])


def test_target_module_without_tensors(tmp_path):
    _error(tmp_path, r"target module 'fc' of .*adapter_config.json has no lora_A / lora_B tensors",
           config={"target_modules": ["q", "fc"]})


def test_targeted_base_layer_missing_from_the_adapter(tmp_path):
    _error(tmp_path, r"the base's 'layers.1.q.weight' \(8, 6\) is targeted .* but the adapter has no "
                     r"base_model.model.layers.1.q.lora_A.weight",
           drop=["base_model.model.layers.1.q.lora_A.weight", "base_model.model.layers.1.q.lora_B.weight"])


def test_tensors_for_a_module_not_targeted(tmp_path):
    _error(tmp_path, r"module 'layers.0.fc' has LoRA tensors .* but is not targeted by target_modules = \['q'\]",
           extra={"base_model.model.layers.0.fc.lora_A.weight": torch.randn(2, 6),
                  "base_model.model.layers.0.fc.lora_B.weight": torch.randn(10, 2)})


def test_shape_disagreeing_with_the_base(tmp_path):
    _error(tmp_path, r"lora_B.weight' \(9, 2\) x .*lora_A.weight' \(2, 6\) gives a \(9, 6\) update, but the base's "
                     r"'layers.0.fc.weight' has shape \(10, 6\)", targets=("q", "fc"),
           extra={"base_model.model.layers.0.fc.lora_B.weight": torch.randn(9, 2)})


def test_key_the_base_does_not_have(tmp_path):
    _error(tmp_path, r"'base_model.model.layers.7.q.lora_A.weight' targets 'layers.7.q.weight', which the base "
                     r"\(base.safetensors\) does not have",
           extra={"base_model.model.layers.7.q.lora_A.weight": torch.randn(2, 6),
                  "base_model.model.layers.7.q.lora_B.weight": torch.randn(8, 2)})


@pytest.mark.parametrize("config, match", [
    ({"peft_type": "PREFIX_TUNING"}, r"peft_type is 'PREFIX_TUNING'; only LoRA adapters"),
    ({"use_dora": True}, r"use_dora = True is not supported \(DoRA"),
    ({"lora_bias": True}, r"lora_bias = True is not supported"),
    ({"r": 0}, r"r = 0, expected a positive integer"),
])
def test_unsupported_configs_are_refused(tmp_path, config, match):
    _error(tmp_path, match, config=config)


def test_dora_magnitude_and_embedding_lora_are_refused(tmp_path):
    _error(tmp_path, r"lora_magnitude_vector\): DoRA is not supported",
           extra={"base_model.model.layers.0.q.lora_magnitude_vector": torch.ones(8)})


def test_pickled_adapter_is_read_weights_only(tmp_path):
    base = base_state()
    ts = write_adapter(tmp_path / "a", base)
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    torch.save(ts, tmp_path / "a" / "adapter_model.bin")
    ad = LoraAdapter(tmp_path / "a", DictCheckpoint(base))
    assert ad.targeted == ["layers.0.q.weight", "layers.1.q.weight"]

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(ValueError, match="not a weights-only checkpoint"):
        LoraAdapter(tmp_path / "a", DictCheckpoint(base))


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_engine_merges_adapters_low_rank_and_writes_nothing_on_error(tmp_path):
    """merge() with adapter directories: targeted layers through the low-rank path equal the dense merge of
    W0 + s B A experts, untargeted ones stay the base's; an invalid adapter fails before anything is written."""
    base = {k: v.double() for k, v in base_state().items()}
    dirs = []
    for i, r in enumerate([2, 3, 1]):
        write_adapter(tmp_path / f"a{i}", base, r=r, alpha=2 * r + 1, targets=("q", "fc"), seed=10 + i)
        dirs.append(tmp_path / f"a{i}")
    before = [_digest(d) for d in dirs]
    got = merge(base, dirs, "swudi", progress=False, head_pattern=None, dtype=torch.float64)
    experts = [{k: LoraAdapter(d, DictCheckpoint(base)).get(k) for k in base} for d in dirs]
    want = merge(base, experts, "swudi", progress=False, head_pattern=None, dtype=torch.float64)
    rows = {r["name"]: r for r in got.report.rows}
    for k in base:
        torch.testing.assert_close(got.state_dict[k], want.state_dict[k], rtol=1e-10, atol=1e-12)
        assert rows[k].get("lowrank", False) == (k.endswith(".weight") and base[k].ndim == 2 and k != "cls.weight")
    assert torch.equal(got.state_dict["cls.weight"], base["cls.weight"])  # no adapter targets it: the base's
    assert torch.equal(got.state_dict["norm.weight"], base["norm.weight"])
    assert [_digest(d) for d in dirs] == before  # inputs never modified
    write_adapter(tmp_path / "a1", base, r=3, targets=("q", "fc"), config={"r": 2})  # now inconsistent
    save_safetensors(base, tmp_path / "base.safetensors")
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="rank 3, but"):
        merge_files(tmp_path / "base.safetensors", dirs, out, "swudi", progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


# ----------------------------------------------------------------------------- end to end: transformers + peft


@pytest.fixture(scope="module")
def peft_models(tmp_path_factory):
    """A tiny Llama saved by transformers and three LoRA adapters (random nonzero lora_B) saved by peft."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import swudi_lab.torchvision_compat  # noqa: F401  (before transformers imports torchvision)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("peft")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    adapters, deltas, merged = [], [], []
    for i, (r, alpha, rs) in enumerate([(2, 8, False), (4, 4, True), (3, 6, False)]):
        torch.manual_seed(100 + i)
        model = LlamaForCausalLM.from_pretrained(root / "base")
        lc = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)  # random lora_B: nonzero task vectors
        pm = get_peft_model(model, lc)
        pm.save_pretrained(root / f"adapter{i}")
        s = alpha / (math.sqrt(r) if rs else r)
        d = {}
        for name, mod in pm.base_model.model.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                B, A = mod.lora_B["default"].weight.detach().double(), mod.lora_A["default"].weight.detach().double()
                assert mod.scaling["default"] == pytest.approx(s)  # peft's own scale: alpha / r, or / sqrt(r) (rsLoRA)
                d[name + ".weight"] = mod.scaling["default"] * B @ A
        adapters.append(root / f"adapter{i}")
        deltas.append(d)
        merged.append({k: v.detach().clone() for k, v in pm.merge_and_unload().state_dict().items()})
    return root, adapters, deltas, merged


def test_peft_adapters_merge_into_a_checkpoint_that_loads(peft_models, tmp_path):
    from transformers import LlamaForCausalLM

    root, adapters, deltas, peft_merged = peft_models
    assert all(is_adapter_dir(a) for a in adapters)
    base_ck = DictCheckpoint(load_state_dict(root / "base" / "model.safetensors"))
    for a, want in zip(adapters, peft_merged):  # each adapter read as an expert = peft's own merge_and_unload
        ad = LoraAdapter(a, base_ck)
        for k in base_ck.keys():
            torch.testing.assert_close(ad.get(k), want[k], rtol=1e-5, atol=1e-6)
    out = tmp_path / "merged"
    report = merge_files(root / "base", adapters, out, "swudi", progress=False)
    assert (out / "config.json").is_file() and (out / "merge_report.json").is_file()
    merged = LlamaForCausalLM.from_pretrained(out).state_dict()
    base = load_state_dict(root / "base" / "model.safetensors")
    targeted = set(deltas[0])
    assert len(targeted) == 6 and all(set(d) == targeted for d in deltas)
    rows = {r["name"]: r for r in report.rows}
    for k, w0 in base.items():
        if k not in targeted:
            assert torch.equal(merged[k], w0), k  # no adapter targets it: the base's
            continue
        assert rows[k]["lowrank"]
        taus = torch.stack([d[k] for d in deltas])  # the dense task vectors (alpha / r) B A, float64
        delta, _ = run("swudi", taus)
        want = (w0.double() + delta).float()
        assert float((merged[k] - want).norm() / want.norm()) <= 1e-5, k
        assert float((merged[k] - w0).norm()) > 0


def test_cli_merges_adapter_directories(peft_models, tmp_path):
    from swudi_lab.cli import main

    root, adapters, _, _ = peft_models
    out = tmp_path / "cli"
    rc = main(["merge", "--base", str(root / "base"), "--experts", *map(str, adapters), "--method", "swudi_a",
               "--out", str(out), "--no-progress", "--quiet", "--device", "cpu"])
    assert rc == 0
    api = merge(root / "base", adapters, "swudi_a", progress=False, device="cpu").state_dict
    got = load_state_dict(out / "model.safetensors")
    assert set(got) == set(api) and all(torch.equal(got[k], api[k]) for k in api)


HUB_ADAPTERS = """
import sys
from swudi_lab.cli import main
sys.exit(main(["merge", "--base", sys.argv[1], "--experts", *sys.argv[3:], "--method", "swudi", "--out", sys.argv[2],
               "--quiet", "--no-progress", "--device", "cpu"]))
"""


def test_adapters_by_hub_id_from_the_cache(peft_models, tmp_path):
    """Adapters given as hub ids (offline, from the HF cache, fetched like any hub model: safetensors and json)
    merge as their local directories do."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, adapters, _, _ = peft_models
    cache = tmp_path / "hub"
    ids = [f"swudi-test/lora-{i}" for i in range(len(adapters))]
    for repo, a in zip(ids, adapters):
        cached_repo(cache, repo, a, ["adapter_config.json", "adapter_model.safetensors"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", HUB_ADAPTERS, str(root / "base"), str(tmp_path / "out"), *ids],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    local = merge(root / "base", adapters, "swudi", progress=False, device="cpu").state_dict
    got = load_state_dict(tmp_path / "out" / "model.safetensors")
    assert set(got) == set(local) and all(torch.equal(got[k], local[k]) for k in local)
    meta = json.loads((tmp_path / "out" / "merge_report.json").read_text())["meta"]
    assert meta["experts"] == ids  # the report names the hub ids


def test_benchmark_rows_and_table():
    """benchmarks/lora.py on tiny shapes: both paths measured and equal, a dense run over budget skipped."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_lora", Path(__file__).parents[1] / "benchmarks" / "lora.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(1, log=lambda *a: None, shapes=[("tiny", "fc", 48, 32), ("tiny", "big", 40, 64)], n=3, r=4)
    assert rows[0]["rel_diff"] <= 1e-4 and rows[0]["m"] == 12 and rows[0]["time_ratio"] > 0
    rows += bench.run(1, log=lambda *a: None, shapes=[("tiny", "skip", 8, 16)], n=2, r=2, dense_budget_s=0.0)
    assert "dense_skipped" in rows[-1] and "dense_s" not in rows[-1]
    text = bench.table(rows)
    assert text.count("\n") == 1 + len(rows) and "skipped: estimated" in text and "| tiny | fc | 48 x 32 | 12 |" in text


def test_adapters_and_full_checkpoints_mix(tmp_path):
    """An adapter beside a full expert: the layer is densified (tau from B A for the adapter, W - W0 for the other)
    and equals the merge of the two full experts."""
    base = {k: v.double() for k, v in base_state().items()}
    write_adapter(tmp_path / "a", base, targets=("q", "fc"), seed=3)
    full = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    got = merge(base, [tmp_path / "a", full], "swudi_a", progress=False, head_pattern=None, dtype=torch.float64)
    as_full = {k: LoraAdapter(tmp_path / "a", DictCheckpoint(base)).get(k) for k in base}
    want = merge(base, [as_full, full], "swudi_a", progress=False, head_pattern=None, dtype=torch.float64)
    assert got.report.meta["tasks"] == ["a", "expert1"]
    for k in base:
        torch.testing.assert_close(got.state_dict[k], want.state_dict[k], rtol=1e-10, atol=1e-12)
    assert not any(r.get("lowrank") for r in got.report.rows)


def test_vision_prefix_is_matched_like_full_experts(tmp_path):
    """An adapter trained on a vision tower without the vision_model. prefix, on a CLIPModel-like base with it (and
    a text tower the adapter never saw): its keys map onto the prefixed ones, the text tower is not asked for."""
    g = torch.Generator().manual_seed(0)
    base = {"vision_model.encoder.layers.0.q.weight": torch.randn(8, 6, generator=g),
            "text_model.encoder.layers.0.q.weight": torch.randn(8, 6, generator=g)}
    tower = {"encoder.layers.0.q.weight": base["vision_model.encoder.layers.0.q.weight"]}
    write_adapter(tmp_path / "a", tower, r=2, alpha=2)
    ad = LoraAdapter(tmp_path / "a", DictCheckpoint(base))
    assert ad.targeted == ["vision_model.encoder.layers.0.q.weight"]
    assert not ad.delta("text_model.encoder.layers.0.q.weight", base["text_model.encoder.layers.0.q.weight"]).any()
