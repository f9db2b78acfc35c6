"""Checkpoints as the ecosystem stores them: HF model directories (sharded and not), both CLIP key
layouts, a CLIPModel base, hub ids (offline only), routing profiles, the merged model directory."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from merge_helpers import cached_repo
import swudi_lab.torchvision_compat  # noqa: F401  (before transformers)

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from swudi_lab.cli import main  # noqa: E402
from swudi_lab.merge import merge, merge_files, save_safetensors  # noqa: E402
from swudi_lab.merge.io import (HFDirectoryCheckpoint, open_checkpoint, parse_size,  # noqa: E402
                                plan_shards)
from swudi_lab.merge.routing import RoutingProfile, detect_routing, match_keys  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, projection_dim=16, hidden_act="quick_gelu")
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
            max_position_embeddings=16, projection_dim=16, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1,
            pad_token_id=1)
TEXT_TOWER = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")
PARAMS = {"t": 50.0, "ratio": 0.65}  # swudi


def _vision(sd=None):
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION))
    if sd is not None:
        model.load_state_dict(sd)
    return model.eval()


def _perturbed(sd, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in sd.items()}


def _fusionbench(directory: Path, sd, config, unprefixed=None) -> Path:
    """A FusionBench-style expert: config.json and one model.safetensors with vision_model.-prefixed keys
    (and the ``unprefixed`` ones, a classifier's, as they are)."""
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    tensors = {"vision_model." + k: v.contiguous() for k, v in sd.items()} | dict(unprefixed or {})
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny CLIP ViT base (CLIPVisionModel and CLIPModel) and three experts in every layout."""
    root = tmp_path_factory.mktemp("hf")
    base = _vision()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    base.save_pretrained(root / "base_vis")
    experts = [_perturbed(base_sd, 1 + i) for i in range(3)]
    _vision(experts[0]).save_pretrained(root / "e_sharded", max_shard_size="20KB")
    _vision(experts[1]).save_pretrained(root / "e_single")
    _fusionbench(root / "e_fusionbench", experts[2], base.config)
    torch.manual_seed(1)
    clip = transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16))
    clip.vision_model.load_state_dict(base_sd)
    clip.save_pretrained(root / "base_clip", max_shard_size="40KB")
    return dict(root=root, base_sd=base_sd, experts=experts, clip_sd={k: v.clone() for k, v in clip.state_dict().items()},
                base_vis=root / "base_vis", base_clip=root / "base_clip",
                dirs=[root / "e_sharded", root / "e_single", root / "e_fusionbench"])


def test_directories_read_lazily_in_both_layouts(zoo):
    shards = sorted(p.name for p in zoo["dirs"][0].glob("*.safetensors"))
    assert len(shards) > 1 and (zoo["dirs"][0] / "model.safetensors.index.json").is_file()
    for d, sd, prefix in [(zoo["dirs"][0], zoo["experts"][0], ""), (zoo["dirs"][1], zoo["experts"][1], ""),
                          (zoo["dirs"][2], zoo["experts"][2], "vision_model.")]:
        ck = open_checkpoint(d)
        assert isinstance(ck, HFDirectoryCheckpoint) and ck.config_path == d / "config.json"
        assert ck.config == json.loads((d / "config.json").read_text())
        assert ck.keys() == sorted(prefix + k for k in sd)
        for k, v in sd.items():
            assert ck.shape(prefix + k) == tuple(v.shape) and torch.equal(ck.get(prefix + k), v)
        assert detect_routing(ck.keys()).name == "hf_clip"
    read = {p.name for p in open_checkpoint(zoo["dirs"][0]).files()}
    assert read >= set(shards) | {"config.json", "model.safetensors.index.json"}


def test_pytorch_model_bin_only_weights_only(tmp_path, zoo):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(zoo["base_vis"] / "config.json", d)
    torch.save(zoo["base_sd"], d / "pytorch_model.bin")
    ck = open_checkpoint(d)
    assert all(torch.equal(ck.get(k), v) for k, v in zoo["base_sd"].items())

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="not a weights-only"):
        open_checkpoint(d)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        open_checkpoint(d)
    (d / "pytorch_model.bin.index.json").write_text("{}")
    with pytest.raises(ValueError, match="sharded pytorch_model.bin"):
        open_checkpoint(d)


def test_merged_directory_loads_and_equals_the_in_memory_merge(tmp_path, zoo):
    out = tmp_path / "out" / "merged"
    rep = merge_files(zoo["base_vis"], zoo["dirs"], out, "swudi", progress=False, device="cpu",
                      max_shard_size="20KB", **PARAMS)
    mem = merge(zoo["base_vis"], zoo["dirs"], "swudi", progress=False, device="cpu", **PARAMS)
    assert sorted(mem.state_dict) == sorted(zoo["base_sd"])  # the base's layout, no prefix
    # transformers loads it; every tensor bitwise equal to the in-memory merge
    loaded = transformers.CLIPVisionModel.from_pretrained(out).state_dict()
    assert sorted(loaded) == sorted(mem.state_dict)
    assert all(torch.equal(loaded[k], v) for k, v in mem.state_dict.items())
    # shards and index consistent, metadata in every shard
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == sorted(p.name for p in out.glob("*.safetensors") if p.name != "heads.safetensors")
    assert len(files) > 1 and all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    total = 0
    for f in files:
        with safe_open(str(out / f), "pt") as sf:
            assert sorted(sf.keys()) == sorted(k for k, v in index["weight_map"].items() if v == f)
            meta = sf.metadata()
            total += sum(sf.get_tensor(k).numel() * sf.get_tensor(k).element_size() for k in sf.keys())
        assert meta["format"] == "pt" and meta["swudi_lab.method"] == "swudi"
        assert json.loads(meta["swudi_lab.params"])["t"] == 50.0
        assert json.loads(meta["swudi_lab.experts"]) == [str(d) for d in zoo["dirs"]]
        assert json.loads(meta["swudi_lab.tasks"]) == ["e_sharded", "e_single", "e_fusionbench"]
        assert meta["swudi_lab.routing"] == "hf_clip"
    assert index["metadata"]["total_size"] == total
    assert (out / "config.json").read_bytes() == (zoo["base_vis"] / "config.json").read_bytes()
    report = json.loads((out / "merge_report.json").read_text())
    assert (out / "merge_report.csv").is_file() and report["meta"]["routing"] == "hf_clip" == rep.meta["routing"]
    assert report["meta"]["output"] == str(out) and report["meta"]["base_only"] == []
    assert _listing(out.parent) == ["merged"] + [f"merged/{n}" for n in sorted(os.listdir(out))]  # no temp leftovers
    # hf_clip routing, as the paper's code
    routes = {r["name"]: r["route"] for r in rep.rows}
    solver = ["embeddings.position_embedding.weight"] + [
        f"encoder.layers.{i}.{m}.weight" for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")]
    mean = ["embeddings.class_embedding", "embeddings.patch_embedding.weight", "pre_layrnorm.weight",
            "pre_layrnorm.bias", "post_layernorm.weight", "encoder.layers.1.layer_norm1.weight",
            "encoder.layers.0.layer_norm2.bias", "encoder.layers.0.self_attn.q_proj.bias", "encoder.layers.1.mlp.fc2.bias"]
    assert all(routes[k] == "solver" for k in solver) and all(routes[k] == "mean" for k in mean)
    assert sorted(k for k, r in routes.items() if r == "solver") == sorted(solver)
    mean_of_experts = torch.stack([e["pre_layrnorm.bias"] for e in zoo["experts"]]).mean(0)
    torch.testing.assert_close(mem.state_dict["pre_layrnorm.bias"], mean_of_experts, rtol=0, atol=1e-6)


def test_unsharded_by_default_deterministic_and_replaces_a_previous_output(tmp_path, zoo):
    out = tmp_path / "merged"
    for _ in range(2):  # the second run replaces the first output
        merge_files(zoo["base_vis"], zoo["dirs"][:2], out, "average", progress=False)
        weights = (out / "model.safetensors").read_bytes()
    assert sorted(os.listdir(out)) == ["config.json", "merge_report.csv", "merge_report.json", "model.safetensors"]
    merge_files(zoo["base_vis"], zoo["dirs"][:2], tmp_path / "again", "average", progress=False)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == weights
    assert sorted(os.listdir(tmp_path)) == ["again", "merged"]


def test_classifier_heads_are_kept_per_task_inside_the_directory(tmp_path, zoo):
    config = transformers.CLIPVisionConfig(**VISION)
    dirs = []
    for i, n_classes in enumerate((3, 5)):
        head = {"classifier.weight": torch.full((n_classes, 32), float(i)), "classifier.bias": torch.zeros(n_classes)}
        dirs.append(_fusionbench(tmp_path / f"cls{i}", zoo["experts"][i], config, head))
    out = tmp_path / "merged"
    rep = merge_files(zoo["base_vis"], dirs, out, "average", progress=False)
    assert rep.meta["heads"] == str(out / "heads.safetensors")
    with safe_open(str(out / "heads.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["cls0/classifier.bias", "cls0/classifier.weight", "cls1/classifier.bias",
                                    "cls1/classifier.weight"]
        assert f.get_tensor("cls1/classifier.weight").shape == (5, 32)
    assert transformers.CLIPVisionModel.from_pretrained(out) is not None


def test_clipmodel_base_with_vision_experts_copies_the_text_tower(tmp_path, zoo):
    out = tmp_path / "merged"
    rep = merge_files(zoo["base_clip"], zoo["dirs"], out, "swudi", progress=False, **PARAMS)
    ref = merge(zoo["base_vis"], zoo["dirs"], "swudi", progress=False, **PARAMS).state_dict
    loaded = transformers.CLIPModel.from_pretrained(out).state_dict()
    assert sorted(loaded) == sorted(zoo["clip_sd"])
    text = sorted(k for k in zoo["clip_sd"] if k.startswith(TEXT_TOWER))
    assert rep.meta["base_only"] == text and json.loads((out / "merge_report.json").read_text())["meta"]["base_only"] == text
    assert all(torch.equal(loaded[k], zoo["clip_sd"][k]) for k in text)  # copied unchanged
    assert all(torch.equal(loaded["vision_model." + k], v) for k, v in ref.items())  # the same merge of the tower
    assert {r["route"] for r in rep.rows if r["name"] in text} == {"base"}


def test_routing_is_overridable_and_recorded(zoo):
    base, experts = zoo["base_vis"], zoo["dirs"][:2]
    gen = merge(base, experts, "swudi", progress=False, routing="generic", **PARAMS)
    hf = merge(base, experts, "swudi", progress=False, **PARAMS)
    assert gen.report.meta["routing"] == "generic" and hf.report.meta["routing"] == "hf_clip"
    assert all(torch.equal(gen.state_dict[k], v) for k, v in hf.state_dict.items())  # same rule on CLIP
    keep_norms = RoutingProfile("norms_frozen", "layer norms from the base", rules=((r".*norm.*", "base"),))
    res = merge(base, experts, "swudi", progress=False, routing=keep_norms, **PARAMS)
    norms = [k for k in zoo["base_sd"] if "norm" in k]
    assert norms and all(torch.equal(res.state_dict[k], zoo["base_sd"][k]) for k in norms)
    assert res.report.meta["routing"] == "norms_frozen"
    with pytest.raises(ValueError, match="unknown routing profile 'nope'; known: hf_clip, timm_vit, generic"):
        merge(base, experts, "average", progress=False, routing="nope")
    bad = RoutingProfile("bad", "", rules=((r".*class_embedding", "solver"),))
    with pytest.raises(ValueError, match="'embeddings.class_embedding' to the solver, but its shape"):
        merge(base, experts, "swudi", progress=False, routing=bad)


def test_detection_and_key_matching_from_the_keys():
    assert detect_routing(["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "pos_embed"]).name == "timm_vit"
    assert detect_routing(["vision_model.embeddings.patch_embedding.weight"]).name == "hf_clip"
    assert detect_routing(["fc.weight", "fc.bias"]).name == "generic"
    m = match_keys(["vision_model.a", "text_model.b", "logit_scale"], [("x", "X", ["a"]), ("y", "Y", ["vision_model.a"])])
    assert m.base_only == ["logit_scale", "text_model.b"] and m.expert_keys == [{"vision_model.a": "a"}, {"vision_model.a": "vision_model.a"}]
    with pytest.raises(ValueError, match="must be in every expert or in none"):
        match_keys(["vision_model.a", "logit_scale"], [("x", "X", ["a"]), ("y", "Y", ["vision_model.a", "logit_scale"])])
    with pytest.raises(ValueError, match=r"expert 'x' \(X\) does not match the base.*unexpected \['text_model.b'\]"):
        match_keys(["a"], [("x", "X", ["vision_model.a", "text_model.b"])])
    assert [parse_size(s) for s in (7, "7", "5GB", "500MB", "2GiB", "1KiB")] == [7, 7, 5 * 10**9, 5 * 10**8, 2**31, 1024]
    with pytest.raises(ValueError, match="max_shard_size '5 parsecs'"):
        parse_size("5 parsecs")
    layout = {k: ((10,), torch.float32) for k in "abcde"}  # 40 bytes each
    assert plan_shards(layout, 100) == {"model-00001-of-00003.safetensors": ["a", "b"],
                                        "model-00002-of-00003.safetensors": ["c", "d"],
                                        "model-00003-of-00003.safetensors": ["e"]}
    assert plan_shards(layout) == {"model.safetensors": list("abcde")}


def _broken_inputs(tmp_path, zoo):
    """(label, base, experts, exception, message) for every input the engine must refuse."""
    cases = []
    bigger = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**{**VISION, "intermediate_size": 48}))
    bigger.save_pretrained(tmp_path / "in" / "bigger")
    cases.append(("shape", zoo["base_vis"], [zoo["dirs"][0], tmp_path / "in" / "bigger"], ValueError,
                  r"tensor 'encoder.layers.0.mlp.fc1.bias': expert 'bigger' .* has shape \(48,\)"))
    torch.manual_seed(2)
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16))
    full.save_pretrained(tmp_path / "in" / "full_clip")
    cases.append(("some experts", zoo["base_clip"], [tmp_path / "in" / "full_clip", zoo["dirs"][1]], ValueError,
                  "must be in every expert or in none"))
    gone = shutil.copytree(zoo["dirs"][0], tmp_path / "in" / "gone_shard")
    (gone / "model-00002-of-00005.safetensors").unlink()
    cases.append(("missing shard", zoo["base_vis"], [gone], FileNotFoundError, "model-00002-of-00005.safetensors"))
    bad_index = shutil.copytree(zoo["dirs"][0], tmp_path / "in" / "bad_index")
    index = json.loads((bad_index / "model.safetensors.index.json").read_text())
    index["weight_map"]["post_layernorm.bias"] = "model-00009-of-00009.safetensors"
    (bad_index / "model.safetensors.index.json").write_text(json.dumps(index))
    cases.append(("index names a missing file", zoo["base_vis"], [bad_index], FileNotFoundError,
                  "model-00009-of-00009.safetensors named by"))
    unlisted = shutil.copytree(zoo["dirs"][0], tmp_path / "in" / "unlisted")
    index = json.loads((unlisted / "model.safetensors.index.json").read_text())
    del index["weight_map"]["post_layernorm.bias"]
    (unlisted / "model.safetensors.index.json").write_text(json.dumps(index))
    cases.append(("index leaves a tensor out", zoo["base_vis"], [unlisted], ValueError,
                  r"does not list tensor\(s\) \['post_layernorm.bias'\]"))
    short = dict(zoo["experts"][2])
    del short["encoder.layers.1.mlp.fc2.weight"]
    _fusionbench(tmp_path / "in" / "short", short, transformers.CLIPVisionConfig(**VISION))
    cases.append(("missing key", zoo["base_vis"], [zoo["dirs"][0], tmp_path / "in" / "short"], ValueError,
                  r"expert 'short' .* missing \['encoder.layers.1.mlp.fc2.weight'\].*prefix: base no, expert yes"))
    return cases


def test_bad_inputs_fail_before_any_work_and_write_nothing(tmp_path, zoo):
    cases = _broken_inputs(tmp_path, zoo)
    parent = tmp_path / "outputs"
    parent.mkdir()
    (parent / "keep.txt").write_text("x")
    inputs = _listing(tmp_path / "in")
    for label, base, experts, exc, message in cases:
        for out in (parent / "merged", parent / "merged.safetensors"):
            with pytest.raises(exc, match=message):
                merge_files(base, experts, out, "swudi", progress=False, **PARAMS)
            assert _listing(parent) == ["keep.txt"], label
    assert _listing(tmp_path / "in") == inputs
    # a failure in the middle of the stream (NaN in an expert) leaves nothing either
    nan = dict(zoo["experts"][2])
    nan["encoder.layers.1.mlp.fc2.weight"] = nan["encoder.layers.1.mlp.fc2.weight"].clone()
    nan["encoder.layers.1.mlp.fc2.weight"][0, 0] = float("nan")
    _fusionbench(tmp_path / "nan", nan, transformers.CLIPVisionConfig(**VISION))
    with pytest.raises(ValueError, match="'vision_model.encoder.layers.1.mlp.fc2.weight' of expert 'nan'.* NaN"):
        merge_files(zoo["base_vis"], [zoo["dirs"][0], tmp_path / "nan"], parent / "merged", "swudi",
                    progress=False, max_shard_size="20KB", **PARAMS)
    assert _listing(parent) == ["keep.txt"]
    # an output that is an input, or a directory output for a base that is no model directory
    with pytest.raises(ValueError, match="inputs are never modified"):
        merge_files(zoo["base_vis"], zoo["dirs"][:1], zoo["base_vis"], "average", progress=False)
    with pytest.raises(ValueError, match="is no merge output"):
        merge_files(zoo["base_vis"], zoo["dirs"][:1], tmp_path / "in", "average", progress=False)
    flat = save_safetensors(zoo["base_sd"], tmp_path / "flat.safetensors")
    with pytest.raises(ValueError, match="needs a Hugging Face model directory or hub id as the base"):
        merge_files(flat, [flat], parent / "merged", "average", progress=False)
    with pytest.raises(ValueError, match="max_shard_size applies to a model directory"):
        merge_files(zoo["base_vis"], zoo["dirs"][:1], parent / "m.safetensors", "average", max_shard_size="1GB")
    assert _listing(parent) == ["keep.txt"] and (zoo["base_vis"] / "model.safetensors").is_file()


HUB_SCRIPT = """
import sys, time
from swudi_lab.merge.io import open_checkpoint
from swudi_lab.cli import main
t = time.perf_counter()
try:
    open_checkpoint("swudi-test/not-cached")
except FileNotFoundError as e:
    print("ERROR", e)
print("SECONDS", time.perf_counter() - t)
if len(sys.argv) > 1:
    ck = open_checkpoint("swudi-test/tiny-clip")
    print("OPENED", ck.label, len(ck.keys()))
    print("BIN", len(open_checkpoint("swudi-test/tiny-bin").keys()))
    sys.exit(main(["merge", "--base", "swudi-test/tiny-clip", "--experts", *sys.argv[2:], "--method", "average",
                   "--out", sys.argv[1], "--quiet", "--no-progress"]))
"""


def _run_hub(env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_extra, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", HUB_SCRIPT, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=120)
    return r, time.perf_counter() - t0


def test_hub_ids_offline_cached_and_not(tmp_path, zoo):
    cache = tmp_path / "hub"
    cached_repo(cache, "swudi-test/tiny-clip", zoo["base_vis"], ["config.json", "model.safetensors"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(zoo["base_vis"] / "config.json", bin_dir)
    torch.save(zoo["base_sd"], bin_dir / "pytorch_model.bin")
    cached_repo(cache, "swudi-test/tiny-bin", bin_dir, ["config.json", "pytorch_model.bin"])
    out = tmp_path / "merged"
    r, _ = _run_hub({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, out, zoo["dirs"][1], zoo["dirs"][2])
    assert r.returncode == 0, r.stderr
    assert "ERROR hub model 'swudi-test/not-cached' could not be fetched" in r.stdout
    assert float(r.stdout.split("SECONDS ")[1].split()[0]) < 10
    assert f"OPENED swudi-test/tiny-clip {len(zoo['base_sd'])}" in r.stdout and f"BIN {len(zoo['base_sd'])}" in r.stdout
    mem = merge(zoo["base_vis"], zoo["dirs"][1:], "average", progress=False).state_dict
    loaded = transformers.CLIPVisionModel.from_pretrained(out).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mem.items())
    assert json.loads((out / "merge_report.json").read_text())["meta"]["base"] == "swudi-test/tiny-clip"


def test_hub_id_without_network_fails_fast_in_the_cli(tmp_path):
    out = tmp_path / "merged"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "swudi_lab.cli", "merge", "--base", "openai/clip-vit-base-patch32",
                        "--experts", "openai/clip-vit-base-patch32", "--method", "average", "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and time.perf_counter() - t0 < 60
    assert "hub model 'openai/clip-vit-base-patch32' could not be fetched" in r.stderr
    assert "ConnectError" in r.stderr or "Connection refused" in r.stderr, r.stderr
    assert not out.exists() and sorted(os.listdir(tmp_path)) in ([], ["hf"])


def test_cli_writes_a_sharded_directory_and_lists_the_profiles(tmp_path, zoo, capsys):
    out = tmp_path / "merged"
    args = ["merge", "--base", str(zoo["base_vis"]), "--experts", *map(str, zoo["dirs"]), "--method", "swudi",
            "--t", "50", "--out", str(out), "--max-shard-size", "30KB", "--routing", "hf_clip", "--quiet",
            "--no-progress", "--report", str(tmp_path / "report.json")]
    assert main(args) == 0
    assert (out / "model.safetensors.index.json").is_file() and (tmp_path / "report.csv").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["meta"]["max_shard_size"] == "30KB"
    capsys.readouterr()
    assert main(["merge", *args[1:-2], "--routing", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["methods"]) == 0
    assert "routing profiles (--routing; default: detected from the base's keys): hf_clip, timm_vit, generic" in \
        capsys.readouterr().out
    assert main(["merge", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "hub id" in text and "model.safetensors.index.json" in text and "--max-shard-size" in text
