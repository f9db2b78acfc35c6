"""HF CLIP vision <-> timm CLIP ViT conversion (swudi_lab.hub.convert, swudi-lab convert).

Random-init tiny models of both libraries (no weights are downloaded): the image embeddings agree
after conversion both ways, the round trips are bitwise, both HF key layouts and sharded
directories convert, and bad inputs are clear errors that write nothing.
"""

import json
import os

import pytest
import torch

import swudi_lab  # noqa: F401  (torchvision shim before transformers / timm)

transformers = pytest.importorskip("transformers", reason="transformers (the [hub] extra) is not installed")

from transformers import (CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel,  # noqa: E402
                          CLIPVisionModelWithProjection)
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from swudi_lab.cli import main  # noqa: E402
from swudi_lab.hub.convert import (HF_PREFIX, TIMM_CLIP_MODELS, TimmSpec, convert_checkpoint,  # noqa: E402
                                   detect_hf_prefix, hf_config_from_timm_spec, hf_to_timm,
                                   plan_hf_to_timm, plan_timm_to_hf, read_timm_spec, timm_spec_from_hf_config,
                                   timm_to_hf)
from swudi_lab.merge import merge, save_safetensors  # noqa: E402
from swudi_lab.merge.io import load_state_dict  # noqa: E402
from swudi_lab.merge.routing import VISION_PREFIX, vision_prefix  # noqa: E402

VC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
          patch_size=8, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100,
          max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
RTOL = 1e-5


def _jitter(model, seed):
    """Random weights everywhere (LayerNorms too), so that a swapped or misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_with_projection(seed=0):
    torch.manual_seed(seed)
    return _jitter(CLIPVisionModelWithProjection(CLIPVisionConfig(**VC)), seed)


def hf_clip(seed=0):
    torch.manual_seed(seed)
    return _jitter(CLIPModel(CLIPConfig(vision_config=VC, text_config=TC, projection_dim=VC["projection_dim"])), seed)


def hf_bare(seed=0):
    torch.manual_seed(seed)
    return _jitter(CLIPVisionModel(CLIPVisionConfig(**VC)), seed)


def timm_clip(seed=0, num_classes=16):
    """A tiny timm CLIP ViT built the way timm's CLIP configs build theirs."""
    from functools import partial

    from timm.layers import LayerNorm

    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                          num_classes=num_classes, act_layer="quick_gelu", pre_norm=True, class_token=True,
                          global_pool="token", no_embed_class=False, norm_layer=partial(LayerNorm, eps=1e-5))
    _jitter(m, seed)
    if num_classes:
        with torch.no_grad():
            m.head.bias.zero_()  # CLIP's projection has no bias
    return m


def images(n=3, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return ((a - b).norm() / a.norm()).item()


def hf_embeds(model, x):
    with torch.no_grad():
        if isinstance(model, CLIPModel):
            out = model.get_image_features(pixel_values=x)
            return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns an output object
        if isinstance(model, CLIPVisionModelWithProjection):
            return model(pixel_values=x).image_embeds
        return model(pixel_values=x).pooler_output


def timm_embeds(model, x):
    with torch.no_grad():
        return model(x)


def sd_equal(a, b):
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def bitwise_equal(a, b):
    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and a[k].contiguous().view(-1).view(torch.uint8).equal(b[k].contiguous().view(-1).view(torch.uint8))
        for k in a)


def spec_for(config, num_classes):
    return timm_spec_from_hf_config(config, num_classes)


def files_in(d):
    return sorted(p.name for p in d.iterdir())


# ----------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("build", [hf_with_projection, hf_clip], ids=["vision+projection", "CLIPModel"])
def test_hf_to_timm_image_embeddings(build):
    hf = build()
    sd = hf.state_dict()
    plan = plan_hf_to_timm(sd)
    assert plan.prefix == HF_PREFIX and plan.dims["num_classes"] == 16
    if isinstance(hf, CLIPModel):  # the text tower is skipped, not an error
        assert "logit_scale" in plan.skipped and "text_projection.weight" in plan.skipped
        assert any(k.startswith("text_model.") for k in plan.skipped)
    spec = spec_for(hf.config.to_dict(), 16)
    assert spec.model is None and spec.kwargs["num_heads"] == 4 and spec.kwargs["act_layer"] == "quick_gelu"
    tm = spec.create().eval()
    tm.load_state_dict(hf_to_timm(sd), strict=True)
    assert tm.head.bias is not None and not tm.head.bias.any()
    x = images()
    a, b = hf_embeds(hf, x), timm_embeds(tm, x)
    assert a.shape == b.shape == (3, 16)
    assert rel(a, b) <= RTOL


def test_hf_bare_layout_to_timm_features():
    hf = hf_bare()
    sd = hf.state_dict()
    assert detect_hf_prefix(sd) == "" and not any(k.startswith(HF_PREFIX) for k in sd)
    tm = spec_for(hf.config.to_dict(), 0).create().eval()
    tm.load_state_dict(hf_to_timm(sd), strict=True)
    x = images()
    assert rel(hf_embeds(hf, x), timm_embeds(tm, x)) <= RTOL  # no head: the pooled, normed class token


def test_both_hf_layouts_give_the_same_timm_state():
    hf = hf_with_projection()
    prefixed = {k: v for k, v in hf.state_dict().items() if k != "visual_projection.weight"}
    bare = {k[len(HF_PREFIX):]: v for k, v in prefixed.items()}
    assert detect_hf_prefix(prefixed) == HF_PREFIX and detect_hf_prefix(bare) == ""
    assert HF_PREFIX == VISION_PREFIX and all(detect_hf_prefix(sd) == vision_prefix(sd) for sd in (prefixed, bare))
    assert bitwise_equal(hf_to_timm(prefixed), hf_to_timm(bare))


@pytest.mark.parametrize("prefix", [HF_PREFIX, ""], ids=["vision_model.", "bare"])
def test_timm_to_hf_image_embeddings(prefix):
    n_cls = 16 if prefix else 0  # visual_projection only exists in the prefixed layout
    tm = timm_clip(num_classes=n_cls).eval()
    spec = TimmSpec(None, dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4,
                               mlp_ratio=2.0, act_layer="quick_gelu", num_classes=n_cls), 1e-5)
    cfg = hf_config_from_timm_spec(spec)
    assert cfg["architectures"] == (["CLIPVisionModelWithProjection"] if n_cls else ["CLIPVisionModel"])
    hf_sd = timm_to_hf(tm.state_dict(), prefix=prefix)
    cls = CLIPVisionModelWithProjection if n_cls else CLIPVisionModel
    hf = cls(CLIPVisionConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})).eval()
    missing, unexpected = hf.load_state_dict(hf_sd, strict=True)
    assert not missing and not unexpected
    x = images()
    assert rel(timm_embeds(tm, x), hf_embeds(hf, x)) <= RTOL


# ----------------------------------------------------------------------------- round trips, inputs


@pytest.mark.parametrize("build", [hf_with_projection, hf_bare], ids=["vision_model.", "bare"])
def test_hf_timm_hf_roundtrip_is_bitwise(build):
    sd = build().state_dict()
    prefix = detect_hf_prefix(sd)
    assert bitwise_equal(timm_to_hf(hf_to_timm(sd), prefix=prefix), sd)


def test_clipmodel_roundtrip_keeps_the_vision_tower():
    sd = hf_clip().state_dict()
    vision = {k: v for k, v in sd.items() if k.startswith(HF_PREFIX) or k == "visual_projection.weight"}
    assert bitwise_equal(timm_to_hf(hf_to_timm(sd)), vision)


@pytest.mark.parametrize("num_classes", [16, 0])
def test_timm_hf_timm_roundtrip_is_bitwise(num_classes):
    sd = timm_clip(num_classes=num_classes).state_dict()
    for prefix in ([HF_PREFIX] if num_classes else [HF_PREFIX, ""]):
        assert bitwise_equal(hf_to_timm(timm_to_hf(sd, prefix=prefix)), sd)


def test_inputs_are_never_modified_and_outputs_are_copies():
    sd = hf_with_projection().state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    out = hf_to_timm(sd)
    for v in out.values():
        v.add_(1.0)  # writing into the output must not reach the input
    assert sd_equal(sd, before)
    tsd = timm_clip().state_dict()
    tbefore = {k: v.clone() for k, v in tsd.items()}
    for v in timm_to_hf(tsd).values():
        v.mul_(2.0)
    assert sd_equal(tsd, tbefore)


def test_qkv_fusion_order_and_dtype():
    sd = {k: v.to(torch.float16) for k, v in hf_bare().state_dict().items()}
    out = hf_to_timm(sd)
    q, k, v = (sd[f"encoder.layers.1.self_attn.{x}_proj.weight"] for x in "qkv")
    assert torch.equal(out["blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))
    assert all(t.dtype == torch.float16 for t in out.values())


# ----------------------------------------------------------------------------- configs


OPENAI = {  # the size fields of openai/clip-vit-*'s vision_config
    "vit_base_patch32_clip_quickgelu_224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, image_size=224, patch_size=32),
    "vit_base_patch16_clip_quickgelu_224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, image_size=224, patch_size=16),
    "vit_large_patch14_clip_quickgelu_224": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                 num_attention_heads=16, image_size=224, patch_size=14),
    "vit_large_patch14_clip_quickgelu_336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                 num_attention_heads=16, image_size=336, patch_size=14),
}


@pytest.mark.parametrize("name", sorted(TIMM_CLIP_MODELS))
def test_registered_timm_models_match_the_hf_configs(name):
    """The spec names the registered model; it has exactly the keys and shapes of the converted HF tower."""
    import timm

    cfg = dict(OPENAI[name], hidden_act="quick_gelu", layer_norm_eps=1e-5, model_type="clip_vision_model")
    proj = 512 if cfg["hidden_size"] == 768 else 768
    spec = timm_spec_from_hf_config({"model_type": "clip", "vision_config": cfg, "projection_dim": proj}, proj)
    assert spec.model == name
    reg = timm.create_model(name, pretrained=False, device="meta", **spec.model_kwargs())
    custom = VisionTransformer(device="meta", **spec.model_kwargs())
    shapes = {k: tuple(v.shape) for k, v in reg.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in custom.state_dict().items()}
    assert reg.patch_embed.proj.bias is None and reg.global_pool == "token"
    assert isinstance(reg.fc_norm, torch.nn.Identity) and reg.norm.eps == 1e-5
    hf_plan = plan_timm_to_hf(reg.state_dict() | {"head.bias": torch.zeros(proj)})  # meta tensors: shapes only
    hf_shapes = {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in hf_plan.layout().items()}
    assert plan_hf_to_timm(hf_shapes).layout() == {k: (s, torch.float32) for k, s in shapes.items()}


def test_spec_json_roundtrip_and_gelu():
    spec = timm_spec_from_hf_config(dict(VC, hidden_act="gelu", layer_norm_eps=1e-6), 16)
    assert spec.kwargs["act_layer"] == "gelu" and spec.model is None
    again = TimmSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and hf_config_from_timm_spec(again)["layer_norm_eps"] == 1e-6
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        timm_spec_from_hf_config(dict(VC, hidden_act="relu"))
    with pytest.raises(ValueError, match="not divisible by num_attention_heads 5"):
        timm_spec_from_hf_config(dict(VC, num_attention_heads=5))


# ----------------------------------------------------------------------------- bad state dicts


def test_unknown_missing_and_misshapen_keys_are_named():
    sd = hf_with_projection().state_dict()
    with pytest.raises(ValueError, match=r"no timm counterpart: 'vision_model.encoder.layers.0.extra.weight'"):
        hf_to_timm(dict(sd, **{"vision_model.encoder.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"no timm counterpart: 'something_else'"):
        hf_to_timm(dict(sd, something_else=torch.zeros(2)))
    bad = dict(sd)
    bad["vision_model.encoder.layers.1.self_attn.k_proj.weight"] = torch.zeros(32, 31)
    with pytest.raises(ValueError, match=r"'vision_model.encoder.layers.1.self_attn.k_proj.weight' has shape "
                                         r"\(32, 31\), expected \(32, 32\)"):
        hf_to_timm(bad)
    gone = {k: v for k, v in sd.items() if k != "vision_model.encoder.layers.0.self_attn.v_proj.bias"}
    with pytest.raises(ValueError, match=r"'vision_model.encoder.layers.0.self_attn.v_proj.bias' is missing"):
        hf_to_timm(gone)
    mixed = dict(sd, **{"embeddings.class_embedding": torch.zeros(32)})
    with pytest.raises(ValueError, match="mixed HF layouts"):
        hf_to_timm(mixed)
    bare = hf_bare().state_dict()
    with pytest.raises(ValueError, match="mixed HF layouts"):
        hf_to_timm(dict(bare, **{"vision_model.post_layernorm.weight": torch.zeros(32)}))
    with pytest.raises(ValueError, match="these are timm keys"):
        hf_to_timm(timm_clip().state_dict())


def test_timm_side_errors():
    tsd = timm_clip().state_dict()
    with pytest.raises(ValueError, match=r"'head.bias' is not all zero"):
        timm_to_hf(dict(tsd, **{"head.bias": torch.ones(16)}))
    with pytest.raises(ValueError, match=r"only the 'vision_model.' layout"):
        timm_to_hf(tsd, prefix="")
    with pytest.raises(ValueError, match=r"'patch_embed.proj.bias' has no HF CLIP counterpart"):
        timm_to_hf(dict(tsd, **{"patch_embed.proj.bias": torch.zeros(32)}))
    with pytest.raises(ValueError, match=r"no HF CLIP counterpart: 'blocks.0.ls1.gamma'"):
        timm_to_hf(dict(tsd, **{"blocks.0.ls1.gamma": torch.zeros(32)}))
    with pytest.raises(ValueError, match=r"'blocks.1.attn.qkv.weight' has shape \(95, 32\), expected \(96, 32\)"):
        timm_to_hf(dict(tsd, **{"blocks.1.attn.qkv.weight": torch.zeros(95, 32)}))
    with pytest.raises(ValueError, match="these are HF keys"):
        timm_to_hf(hf_bare().state_dict())
    with pytest.raises(ValueError, match="prefix must be"):
        timm_to_hf(tsd, prefix="visual.")


# ----------------------------------------------------------------------------- files and the CLI


def test_cli_sharded_directory_roundtrip(tmp_path, capsys):
    hf = hf_with_projection()
    src = tmp_path / "expert"
    hf.save_pretrained(src, max_shard_size="20KB")
    assert (src / "model.safetensors.index.json").is_file() and len(list(src.glob("model-*.safetensors"))) > 1
    out = tmp_path / "timm" / "expert.safetensors"
    assert main(["convert", "--to", "timm", str(src), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["timm_model"] is None and side["timm_kwargs"]["embed_dim"] == 32 and side["hf_prefix"] == HF_PREFIX
    assert side["assumed"] == [] and side["hf_config"]["num_attention_heads"] == 4
    spec = read_timm_spec(out)
    tm = spec.create().eval()
    tm.load_state_dict(load_state_dict(out), strict=True)
    x = images()
    assert rel(hf_embeds(hf, x), timm_embeds(tm, x)) <= RTOL

    back = tmp_path / "back"
    assert main(["convert", "--to", "hf", str(out), str(back)]) == 0
    assert files_in(back) == ["config.json", "model.safetensors"]
    assert files_in(tmp_path) == ["back", "expert", "timm"]  # no temporaries left
    again = CLIPVisionModelWithProjection.from_pretrained(back).eval()
    assert bitwise_equal(again.state_dict(), hf.state_dict())
    cfg = json.loads((back / "config.json").read_text())
    for k, v in VC.items():
        assert cfg[k] == v, k


def test_cli_bare_layout_and_single_file(tmp_path):
    hf = hf_bare()
    src = tmp_path / "bare"
    hf.save_pretrained(src)
    st = src / "model.safetensors"
    out = tmp_path / "t.safetensors"
    # a bare .safetensors without a config: a 32-wide tower's head count cannot be inferred (head_dim 64)
    rc = main(["convert", "--to", "timm", str(st), str(out)])
    assert rc == 1 and not out.exists() and not out.with_suffix(".json").exists()
    assert main(["convert", "--to", "timm", str(st), str(out), "--config", str(src / "config.json")]) == 0
    tm = read_timm_spec(out).create().eval()
    tm.load_state_dict(load_state_dict(out), strict=True)
    assert rel(hf_embeds(hf, images()), timm_embeds(tm, images())) <= RTOL
    back = tmp_path / "back"
    assert main(["convert", "--to", "hf", str(out), str(back), "--prefix", ""]) == 0
    again = CLIPVisionModel.from_pretrained(back).eval()
    assert bitwise_equal(again.state_dict(), hf.state_dict())


def test_inferred_config_for_an_openai_like_width(tmp_path):
    cfg = dict(VC, hidden_size=64, num_attention_heads=1, intermediate_size=256)  # head_dim 64, mlp 4x
    torch.manual_seed(0)
    hf = _jitter(CLIPVisionModel(CLIPVisionConfig(**cfg)), 0)
    st = save_safetensors(hf.state_dict(), tmp_path / "w.safetensors")
    info = convert_checkpoint(st, tmp_path / "t.safetensors", "timm")
    assert any("num_attention_heads=1" in a for a in info["assumed"])
    spec = read_timm_spec(tmp_path / "t.safetensors")
    assert spec.kwargs["num_heads"] == 1 and spec.kwargs["img_size"] == 32 and spec.kwargs["mlp_ratio"] == 4.0


def test_cli_errors_write_nothing(tmp_path, capsys):
    hf = hf_with_projection()
    src = tmp_path / "expert"
    hf.save_pretrained(src, max_shard_size="20KB")
    out = tmp_path / "out" / "t.safetensors"
    out.parent.mkdir()

    shard = sorted(src.glob("model-*.safetensors"))[1]
    moved = tmp_path / "aside.safetensors"
    os.rename(shard, moved)
    assert main(["convert", "--to", "timm", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"shard {shard}" in err and "not found" in err
    assert files_in(out.parent) == []
    os.rename(moved, shard)

    cfg = json.loads((src / "config.json").read_text())
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(dict(cfg, hidden_size=48)))
    assert main(["convert", "--to", "timm", str(src), str(out), "--config", str(wrong)]) == 1
    assert "hidden_size is 48 but the weights have 32" in capsys.readouterr().err
    assert files_in(out.parent) == []

    sd = dict(hf.state_dict(), **{"vision_model.encoder.layers.0.adapter.weight": torch.zeros(3, 3)})
    odd = save_safetensors(sd, tmp_path / "odd.safetensors")
    assert main(["convert", "--to", "timm", str(odd), str(out), "--config", str(src / "config.json")]) == 1
    assert "'vision_model.encoder.layers.0.adapter.weight'" in capsys.readouterr().err
    assert files_in(out.parent) == []

    tsd = dict(timm_clip().state_dict(), **{"head.bias": torch.ones(16)})
    tfile = save_safetensors(tsd, tmp_path / "tb.safetensors")
    back = tmp_path / "out" / "hfdir"
    assert main(["convert", "--to", "hf", str(tfile), str(back), "--config", str(src / "config.json")]) == 1
    assert "'head.bias' is not all zero" in capsys.readouterr().err
    assert files_in(out.parent) == []

    back.mkdir()
    good = save_safetensors(timm_clip().state_dict(), tmp_path / "good.safetensors")
    assert main(["convert", "--to", "hf", str(good), str(back), "--config", str(src / "config.json")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert files_in(back) == []

    assert main(["convert", "--to", "timm", str(src), str(src / "model.safetensors.index.safetensors")]) == 1
    assert "is one of the inputs" in capsys.readouterr().err  # its sidecar would be the index file


def test_pytorch_model_bin_and_prefixed_vision_model_without_projection(tmp_path):
    """A weights-only ``pytorch_model.bin`` directory converts; ``--to hf`` without a head in the default
    ``vision_model.`` layout is a ``CLIPVisionModel`` checkpoint that transformers loads."""
    hf = hf_bare()
    src = tmp_path / "bin"
    src.mkdir()
    hf.config.save_pretrained(src)
    torch.save({HF_PREFIX + k: v for k, v in hf.state_dict().items()}, src / "pytorch_model.bin")
    out = tmp_path / "t.safetensors"
    assert main(["convert", "--to", "timm", str(src), str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["hf_prefix"] == HF_PREFIX
    back = tmp_path / "back"
    assert main(["convert", "--to", "hf", str(out), str(back)]) == 0
    assert json.loads((back / "config.json").read_text())["architectures"] == ["CLIPVisionModel"]
    assert next(iter(load_state_dict(back / "model.safetensors"))).startswith(HF_PREFIX)
    again = CLIPVisionModel.from_pretrained(back).eval()
    assert bitwise_equal(again.state_dict(), hf.state_dict())


def test_convert_rejects_a_bad_index(tmp_path):
    """The shard index is checked by swudi_lab.merge.io's reader before anything is converted or written."""
    hf = hf_bare()
    hf.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    index = tmp_path / "m" / "model.safetensors.index.json"
    out = tmp_path / "t.safetensors"
    data = json.loads(index.read_text())
    key = next(iter(data["weight_map"]))
    other = sorted(set(data["weight_map"].values()) - {data["weight_map"][key]})[0]
    data["weight_map"][key] = other
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"puts tensor {key!r} in {other}, which does not hold it"):
        convert_checkpoint(tmp_path / "m", out, "timm")
    data["weight_map"][key] = "../escape.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="names '../escape.safetensors', not a file in"):
        convert_checkpoint(tmp_path / "m", out, "timm")
    assert files_in(tmp_path) == ["m"]


# ----------------------------------------------------------------------------- merging in timm layout


def test_timm_layout_merge_differs_only_on_qkv():
    """Fusing q, k, v changes WUDI's per-layer problem on attention (benchmarks/qkv_layout.py, docs/hub.md).

    The one other difference is a routing one: HF's position embedding is 2-D (T, D), so the engine
    solves it like a weight matrix; timm's is (1, T, D), so it gets the mean of the task vectors.
    Everything else (out_proj, fc1, fc2, norms, biases, the qkv biases) is bitwise the same.
    """
    base = hf_bare(0).state_dict()
    g = torch.Generator().manual_seed(5)
    experts = [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    kw = dict(progress=False, device="cpu", t=50.0, ratio=0.75)
    hf_res = merge(base, experts, "swudi", **kw)
    timm_res = merge(hf_to_timm(base), [hf_to_timm(e) for e in experts], "swudi", **kw)
    hf_merge, back = hf_res.state_dict, timm_to_hf(timm_res.state_dict, prefix="")
    assert sorted(back) == sorted(hf_merge)
    routes = {r["name"]: r["route"] for r in hf_res.report.rows}
    troutes = {r["name"]: r["route"] for r in timm_res.report.rows}
    assert routes["embeddings.position_embedding.weight"] == "solver" and troutes["pos_embed"] == "mean"
    assert routes["encoder.layers.0.self_attn.q_proj.weight"] == troutes["blocks.0.attn.qkv.weight"] == "solver"
    for k in hf_merge:
        if any(f"self_attn.{x}_proj.weight" in k for x in "qkv"):
            assert rel(hf_merge[k] - base[k], back[k] - base[k]) > 1e-3, k
        elif k == "embeddings.position_embedding.weight":
            mean = base[k] + torch.stack([e[k] - base[k] for e in experts]).mean(0)
            assert torch.allclose(back[k], mean, rtol=0, atol=1e-6) and not torch.allclose(hf_merge[k], mean)
        else:
            assert torch.equal(hf_merge[k], back[k]), k


def test_qkv_layout_benchmark_runs_small():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "qkv_layout.py"
    spec = importlib.util.spec_from_file_location("qkv_layout", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base, experts = mod.make_models(width=32, depth=1, heads=4, n_experts=2, rank=2, seed=0)
    res = mod.compare(base, experts, "closed_form")
    assert all(r["rel_tau"] == 0 for r in res["rows"].values() if r["kind"] == "other")
    assert all(r["rel_tau"] > 1e-3 for r in res["rows"].values() if r["kind"] in "qkv")
    assert "q_proj mean over layers" in mod.table(res)
