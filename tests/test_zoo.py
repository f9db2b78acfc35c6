"""The offline expert zoo: task generators, micro build -> merge -> evaluate, cache integrity, online path."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import swudi_lab  # noqa: F401
from swudi_lab.evaluate import average_accuracy, evaluate_backbone, normalized_accuracy, recovered_gain
from swudi_lab.merge import merge
from swudi_lab.config import paths
from swudi_lab.zoo import (
    TASK_CLASSES,
    TASKS,
    ZooCacheError,
    ZooConfig,
    build_zoo,
    load_zoo,
    make_backbone,
    write_release,
)
from swudi_lab.zoo import tasks as T


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root, seed=0, config=ZooConfig.micro(), progress=False)


def test_tasks_are_deterministic_and_balanced(monkeypatch):
    monkeypatch.setattr(T, "CACHE_DIR", False)
    assert len(TASKS) == 8 and set(TASKS) < set(T.TASK_GENERATORS)
    for name in T.TASK_GENERATORS:
        k = TASK_CLASSES[name]
        gen = T.TASK_GENERATORS[name][1]
        x1, y1 = gen(2 * k, np.random.default_rng(T.task_seed(name, "test")), "test")
        x2, y2 = gen(2 * k, np.random.default_rng(T.task_seed(name, "test")), "test")
        assert x1.shape == (2 * k, 32, 32, 3) and x1.dtype == np.uint8
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2), name
        assert np.bincount(y1, minlength=k).tolist() == [2] * k, name
    xa, _ = T.TASK_GENERATORS["digits"][1](10, np.random.default_rng(1), "train")
    xb, _ = T.TASK_GENERATORS["digits"][1](10, np.random.default_rng(2), "train")
    assert not np.array_equal(xa, xb)


def test_pattern_and_flag_classes_are_told_apart_by_structure_not_colour():
    """Each class of ``patterns``/``flags`` is one mask layout; colours are random per image, so the
    masks (not the palette) must differ between classes and vary within one (rotation, jitter)."""
    rng = np.random.default_rng(0)
    for mask in (T._pattern_mask, T._flag_regions):
        for k in range(10):
            draws = [np.asarray(mask(k, rng)) for _ in range(5)]
            assert draws[0].shape == (32, 32) and 0 < (draws[0] > 0).mean() < 1, (mask.__name__, k)
            assert any(not np.array_equal(draws[0], d) for d in draws[1:]), (mask.__name__, k)
    x, y = T.gen_flags(400, np.random.default_rng(1), "train")
    per_class_mean = np.array([x[y == k].reshape(-1, 3).mean(0) for k in range(10)])
    assert per_class_mean.std(0).max() < 25  # average colour carries little of the label


def test_pretraining_mixture_is_disjoint_from_the_tasks():
    names = {g[0] for g in T.PRETRAIN_GROUPS}
    assert not names & set(TASKS)
    assert sum(g[1] for g in T.PRETRAIN_GROUPS) == T.PRETRAIN_CLASSES == 48
    assert not set(T.PRETRAIN_IMAGES) & set(T.TEXTURE_IMAGES)


def test_micro_zoo_build_merge_evaluate(micro):
    root, zoo = micro
    assert zoo.tasks == list(ZooConfig.micro().tasks)
    assert list(zoo.expert_paths) == zoo.tasks and all(p.is_file() for p in zoo.expert_paths.values())
    assert set(load_file(str(zoo.base_path))) == set(zoo.make_backbone().state_dict())
    m = zoo.manifest
    for key in ("config", "seed", "accuracy", "task_vector_ratio", "files", "targets"):
        assert key in m
    # evaluation reproduces the manifest's reference rows
    base_acc = evaluate_backbone(zoo.base_state_dict(), zoo)
    assert base_acc == pytest.approx(m["accuracy"]["base"])
    data = zoo.test_data()
    for t in zoo.tasks:
        acc = evaluate_backbone(zoo.load_backbone(zoo.expert_paths[t]), zoo.heads, {t: data[t]})[t]
        assert acc == pytest.approx(m["accuracy"]["expert"][t])
    # a simple merge: average of the task vectors
    base = zoo.base_state_dict()
    tvs = zoo.task_vectors()
    merged = {k: base[k] + sum(tv[k] for tv in tvs.values()) / len(tvs) for k in base}
    acc = evaluate_backbone(merged, zoo)
    assert set(acc) == set(zoo.tasks) and all(0 <= a <= 100 for a in acc.values())
    assert np.isfinite(normalized_accuracy(acc, zoo.expert_accuracy)) or min(zoo.expert_accuracy.values()) == 0
    assert 0 <= average_accuracy(acc) <= 100


def test_manifest_merge_check_is_reproduced_by_the_registry(micro):
    """The build's merge target: re-merging with the recorded method and parameters gives the
    recorded accuracies, and the target fields follow from them."""
    _, zoo = micro
    m = zoo.manifest
    base, experts = zoo.base_state_dict(), {t: zoo.expert_state_dict(t) for t in zoo.tasks}
    for label, row in m["merges"].items():
        state = merge(base, experts, row["method"], device="cpu", progress=False, **row["params"]).state_dict
        acc = evaluate_backbone(state, zoo)
        assert acc == pytest.approx(row["per_task"]), label
        assert row["recovered"] == pytest.approx(recovered_gain(acc, m["accuracy"]["base"], m["accuracy"]["expert"]), nan_ok=True)
    t = m["targets"]
    assert t["best_recovered"] == pytest.approx(np.nanmax([r["recovered"] for r in m["merges"].values()]), nan_ok=True)
    assert t["merge_met"] == (t["best_recovered"] >= t["min_recovered"])


def test_build_is_deterministic_and_reuses_the_cache(micro, tmp_path):
    root, zoo = micro
    again = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False)
    assert again.manifest["files"] == zoo.manifest["files"]
    mtime = zoo.base_path.stat().st_mtime_ns
    reused = build_zoo(root, seed=0, config=ZooConfig.micro(), progress=False)
    assert reused.base_path.stat().st_mtime_ns == mtime  # no rebuild
    other = build_zoo(tmp_path, seed=1, config=ZooConfig.micro(), progress=False)
    assert other.manifest["files"]["base.safetensors"] == zoo.manifest["files"]["base.safetensors"]
    assert other.manifest["files"]["experts/flags.safetensors"] != zoo.manifest["files"]["experts/flags.safetensors"]


def test_corrupted_or_partial_cache_is_detected_and_rebuilt(micro, tmp_path):
    root, zoo = micro
    d = tmp_path / "seed0"
    shutil.copytree(zoo.dir, d)
    expert = d / "experts" / "flags.safetensors"
    raw = bytearray(expert.read_bytes())
    raw[-5] ^= 0xFF
    expert.write_bytes(bytes(raw))
    with pytest.raises(ZooCacheError, match="corrupted"):
        load_zoo(tmp_path, 0)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = build_zoo(tmp_path, 0, ZooConfig.micro(), progress=False)
    assert rebuilt.manifest["files"] == zoo.manifest["files"]
    (d / "heads.safetensors").unlink()
    with pytest.raises(ZooCacheError, match="missing"):
        load_zoo(tmp_path, 0)
    (d / "manifest.json").unlink()
    with pytest.raises(ZooCacheError, match="manifest"):
        load_zoo(tmp_path, 0)
    with pytest.raises(ZooCacheError):  # nothing there and no release pack to materialize from
        load_zoo(tmp_path / "nothing", 0, release_root=tmp_path / "no_release")


def test_stale_cache_with_another_config_is_not_used(micro):
    root, _ = micro
    cfg = ZooConfig.micro(n_test=20)
    with pytest.raises(ZooCacheError, match="another config"):
        load_zoo(root, 0, config=cfg)


def _fake_pretrained(tmp_path, config, good_hash=True, seed=7):
    """Write ``fake_base.safetensors`` (random init ``seed``) and its recipe json; return the weights' path."""
    from swudi_lab.files import sha256_file

    sd = {k: v.contiguous() for k, v in make_backbone(config.backbone, seed=seed).state_dict().items()}
    w = tmp_path / "fake_base.safetensors"
    save_file(sd, str(w))
    digest = sha256_file(w) if good_hash else "0" * 64
    (tmp_path / "fake_base.json").write_text(json.dumps({"name": "fake_base", "sha256": digest}))
    return str(w)


def test_shipped_base_with_wrong_hash_is_refused(tmp_path):
    path = _fake_pretrained(tmp_path, ZooConfig.micro(), good_hash=False)
    with pytest.raises(ZooCacheError, match="refusing"):
        build_zoo(tmp_path / "zoo", 0, ZooConfig.micro(pretrained=path), progress=False)
    assert not (tmp_path / "zoo" / "seed0").exists()


def test_cache_built_on_a_replaced_base_is_stale(tmp_path):
    """A base rebuilt under the same name (new weights, new recipe hash) invalidates the experts."""
    cfg = ZooConfig.micro(pretrained=_fake_pretrained(tmp_path, ZooConfig.micro()))
    zoo = build_zoo(tmp_path / "zoo", 0, cfg, progress=False)
    old = zoo.manifest["pretrained"]["sha256"]
    _fake_pretrained(tmp_path, cfg, seed=8)  # same path and name, new weights and recipe hash
    new = json.loads((tmp_path / "fake_base.json").read_text())["sha256"]
    with pytest.raises(ZooCacheError, match="another pretrained base"):
        load_zoo(tmp_path / "zoo", 0, config=cfg)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = build_zoo(tmp_path / "zoo", 0, cfg, progress=False)
    assert rebuilt.manifest["pretrained"]["sha256"] == new != old


def test_release_pack_round_trip(tmp_path):
    cfg = ZooConfig.micro(pretrained=_fake_pretrained(tmp_path, ZooConfig.micro()))
    zoo = build_zoo(tmp_path / "zoo", 0, cfg, progress=False)
    rel = write_release(zoo, tmp_path / "release")
    assert (rel / "manifest.json").is_file() and not (rel / "experts").exists()
    again = load_zoo(tmp_path / "fresh", 0, release_root=tmp_path / "release")
    assert again.manifest["files"] == zoo.manifest["files"]
    for t in zoo.tasks:
        tau = load_file(str(rel / "task_vectors" / f"{t}.safetensors"))
        assert all(v.dtype == torch.float16 for v in tau.values())
    tv = rel / "task_vectors" / f"{zoo.tasks[0]}.safetensors"
    tv.write_bytes(tv.read_bytes()[:-10])
    with pytest.raises(ZooCacheError, match="release pack"):
        load_zoo(tmp_path / "fresh2", 0, release_root=tmp_path / "release")


def test_online_recipe_with_offline_stand_ins(tmp_path, monkeypatch):
    from PIL import Image

    from swudi_lab.zoo import online

    def fake_model(name, pretrained, num_classes=0):
        assert name == "hub_vit_stand_in" and pretrained and num_classes == 0
        from timm.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)

    class FakeDataset:
        def __init__(self, task, split):
            rng = np.random.default_rng(len(task) + (split == "test"))
            self.targets = list(np.arange(50) % 4)
            self.images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in self.targets]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.images[i], self.targets[i]

    monkeypatch.setattr(online, "MODEL_FACTORY", fake_model)
    monkeypatch.setattr(online, "DATASET_FACTORY", lambda task, split, root: FakeDataset(task, split))
    online.dataset_split.cache_clear()
    cfg = online.online_config("hub_vit_stand_in", tasks=("mnist", "eurosat"), img_size=32, n_train=24, n_test=12,
                               steps=2, batch_size=8)
    zoo = build_zoo(tmp_path, 0, cfg, progress=False)
    online.dataset_split.cache_clear()
    assert zoo.tasks == ["tv:mnist", "tv:eurosat"] and zoo.n_classes == {"tv:mnist": 4, "tv:eurosat": 4}
    x, y = zoo.test_data()["tv:mnist"]
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
    acc = evaluate_backbone(zoo.base_state_dict(), zoo)
    assert acc == pytest.approx(zoo.manifest["accuracy"]["base"])


def test_shipped_seed0_release_is_intact(tmp_path):
    rel = paths.release_dir() / "seed0"
    if not (rel / "manifest.json").exists():
        pytest.skip("no shipped release pack")
    zoo = load_zoo(tmp_path, 0)  # materializes from the shipped pack and verifies every hash
    m = zoo.manifest
    assert len(zoo.tasks) == 8 and set(m["targets"]) >= {"avg_gain", "mean_ratio", "gain_met", "ratio_met", "merge_met"}
    assert m["pretrained"]["sha256"] == json.loads((paths.pretrained_dir() / f"{m['pretrained']['name']}.json").read_text())["sha256"]
    assert m["config_key"] == ZooConfig().key()  # the default recipe is the shipped one (new options keep old keys)


def test_attention_only_finetuning_moves_only_the_attention_projections():
    from swudi_lab.zoo.train import FinetuneRecipe, finetune

    cfg = ZooConfig.micro()
    base = make_backbone(cfg.backbone, seed=0).state_dict()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.arange(16) % 3
    head = (torch.randn(3, cfg.backbone.embed_dim, generator=torch.Generator().manual_seed(0)), torch.zeros(3))
    recipe = FinetuneRecipe(steps=2, batch_size=8, lr=1e-2, warmup=1, trainable="attention")
    out = finetune(base, lambda: make_backbone(cfg.backbone), head, x, y, recipe)
    moved = {k for k in base if not torch.equal(base[k], out[k])}
    assert moved == {k for k in base if ".attn." in k}  # qkv and proj, weights and biases; nothing else
    assert "trainable" not in FinetuneRecipe().to_dict() and recipe.to_dict()["trainable"] == "attention"
    with pytest.raises(ValueError, match="trainable"):
        finetune(base, lambda: make_backbone(cfg.backbone), head, x, y, FinetuneRecipe(steps=1, trainable="mlp"))


def _shipped_targets() -> dict:
    rel = paths.release_dir() / "seed0" / "manifest.json"
    if not rel.exists():
        pytest.skip("no shipped release pack")
    return json.loads(rel.read_text())["targets"]


def test_shipped_seed0_meets_the_gain_and_size_targets():
    t = _shipped_targets()
    assert t["avg_gain"] >= t["min_avg_gain"] and t["gain_met"], t
    lo, hi = t["ratio_range"]
    assert lo <= t["mean_ratio"] <= hi and t["ratio_met"], t


@pytest.mark.xfail(strict=True, reason="known gap: the best spectral merge of the shipped seed-0 experts keeps "
                   "47 % of their gain over base-with-heads (target 50 %); on the GPU-pretrained base merges keep "
                   "41-47 % (5-9 % on the earlier CPU base), and fine-tuning lr 1e-4 to 2e-4 or other heads keep "
                   "44-47 %; see its manifest and the README")
def test_shipped_seed0_best_merge_keeps_half_the_gain():
    t = _shipped_targets()
    assert t["best_recovered"] >= t["min_recovered"] and t["merge_met"], t
