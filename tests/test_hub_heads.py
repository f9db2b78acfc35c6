"""Zero-shot heads and test sets of the TA8 benchmark (swudi_lab.hub.tasks / heads / data), offline.

A tiny CLIPModel and a byte-level CLIPTokenizer are built here and saved with save_pretrained; a
small parquet dataset in the hub's schema is written here. Both are read back through the same
loaders as hub ids. Nothing is downloaded: hub ids are only used with the hub switched off or
pointed at a local port.
"""

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image

from swudi_lab.hub import data as D  # importable without the [hub] extra
from swudi_lab.hub import heads as H
from swudi_lab.hub import tasks as T
from swudi_lab.merge.fetch import HubUnavailableError

REPO = Path(__file__).resolve().parents[1]


def _extra(module):
    return pytest.importorskip(module, reason=f"{module} (the [hub] extra) is not installed")


# ----------------------------------------------------------------------------- the task registry


def test_registry_lists_the_eight_tasks_with_their_class_and_template_counts():
    assert T.TA8 == ("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")
    classes = {"sun397": 397, "stanford-cars": 196, "resisc45": 45, "eurosat": 10, "svhn": 10, "gtsrb": 43,
               "mnist": 10, "dtd": 47}
    templates = {"sun397": 2, "stanford-cars": 8, "resisc45": 18, "eurosat": 3, "svhn": 1, "gtsrb": 3,
                 "mnist": 1, "dtd": 8}
    for tid in T.TA8:
        spec = T.get_task(tid)
        assert spec.num_classes == classes[tid] and len(set(spec.classnames)) == classes[tid], tid
        assert len(spec.templates) == templates[tid] and len(set(spec.templates)) == templates[tid], tid
        assert all(t.count("{}") == 1 for t in spec.templates), tid
        assert spec.split == "test"
    # label order of the hub test sets (first/last names pin the order)
    assert T.get_task("eurosat").classnames[0] == "annual crop land"
    assert T.get_task("eurosat").classnames[-1] == "lake or sea"
    assert T.get_task("sun397").classnames[:2] == ("abbey", "airplane cabin")
    assert T.get_task("stanford-cars").classnames[-1] == "smart fortwo Convertible 2012"
    assert T.get_task("gtsrb").prompts()[14][0] == 'a zoomed in photo of a "stop" traffic sign.'
    assert T.get_task("mnist").prompts()[7] == ['a photo of the number: "7".']


def test_hub_ids_follow_one_naming_per_model_family():
    assert T.expert_id("stanford-cars") == "tanganke/clip-vit-base-patch32_stanford-cars"
    assert T.expert_id("cars", "clip-vit-b16") == "tanganke/clip-vit-base-patch16_stanford-cars"
    assert T.expert_ids("l14")["dtd"] == "tanganke/clip-vit-large-patch14_dtd"
    assert T.base_model_id() == "openai/clip-vit-base-patch32"
    assert T.base_model_id("b16") == "openai/clip-vit-base-patch16"
    assert T.get_task("svhn").dataset_id == "ufldl-stanford/svhn" and T.get_task("svhn").config == "cropped_digits"
    assert T.get_task("svhn").test_patterns[0] == "cropped_digits/test-*.parquet"
    assert T.get_task("mnist").test_patterns[0] == "mnist/test-*.parquet"
    assert T.get_task("sun397").test_patterns[0] == "data/test-*.parquet"
    with pytest.raises(ValueError, match="unknown model family 'vit-h14'.*clip-vit-base-patch32"):
        T.get_family("vit-h14")
    with pytest.raises(ValueError, match="unknown task 'cifar10'.*sun397"):
        T.get_task("cifar10")


# ----------------------------------------------------------------------------- a tiny CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A saved tiny CLIPModel + CLIPTokenizer folder (every byte in the vocabulary, a few merges)."""
    _extra("transformers")
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    from swudi_lab.hub.standin import byte_level_vocabulary

    vocab, merges = byte_level_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # a logit scale unlike the default, so that its use is checked
        model.logit_scale.fill_(2.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(tiny_clip):
    return H.load_clip(tiny_clip)


def test_tokenizer_covers_the_prompts(loaded):
    _, tok = loaded
    ids = tok(['a photo of the number: "7".', "i love my Ferrari 458 Italia Coupe 2012!"])["input_ids"]
    unk = tok.unk_token_id
    # every piece is a real token: the only <|endoftext|> is the closing one (unk is the same token)
    assert all(row.count(unk) == 1 and row[-1] == unk for row in ids)


def test_head_rows_are_unit_norm_and_equal_a_hand_computation(tiny_clip, loaded):
    model, tok = loaded
    head = H.build_head(model, tok, "eurosat", base=str(tiny_clip))
    spec = T.get_task("eurosat")
    assert head.weight.shape == (10, 16) and head.weight.dtype == torch.float32
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    assert head.num_templates == 3 and head.task == "eurosat"
    assert head.logit_scale.item() == pytest.approx(2.5)
    assert torch.equal(head.visual_projection, model.visual_projection.weight.detach())
    with torch.no_grad():
        for k, name in enumerate(spec.classnames):
            embs = []
            for template in spec.templates:  # one prompt at a time, no padding
                enc = tok([template.format(name)], return_tensors="pt")
                e = model.get_text_features(**enc)
                e = e if isinstance(e, torch.Tensor) else e.pooler_output
                embs.append(e[0] / e[0].norm())
            mean = torch.stack(embs).mean(0)
            assert torch.allclose(head.weight[k], mean / mean.norm(), atol=1e-6), name


def test_head_logits_equal_clipmodel_logits_with_one_template(loaded):
    model, tok = loaded
    head = H.build_head(model, tok, "mnist")  # one template per class
    prompts = [p[0] for p in T.get_task("mnist").prompts()]
    torch.manual_seed(1)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        enc = tok(prompts, padding=True, return_tensors="pt")
        reference = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          pixel_values=pixels).logits_per_image
        vision_out = model.vision_model(pixel_values=pixels)
        ours = H.image_logits(vision_out, head)
        ours_from_pooled = H.image_logits(vision_out.pooler_output, head)
        embeds = vision_out.pooler_output @ model.visual_projection.weight.T
    assert ours.shape == (4, 10)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours, ours_from_pooled)
    assert torch.allclose(head.logits(embeds), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"pooler_output of shape \(4, 7\)"):
        H.image_logits(torch.zeros(4, 7), head)


def test_cache_round_trip_is_bitwise_and_skips_the_model(tiny_clip, tmp_path, monkeypatch):
    cache = tmp_path / "heads"
    first = H.zeroshot_head(tiny_clip, "dtd", cache_dir=cache)
    path = H.head_path(tiny_clip, "dtd", cache)
    assert path.is_file() and path.parent.parent == cache and not list(path.parent.glob(".*.tmp"))

    def no_model(*a, **k):
        raise AssertionError("the cached head should have been used")

    monkeypatch.setattr(H, "load_clip", no_model)
    again = H.zeroshot_head(tiny_clip, "dtd", cache_dir=cache)
    for name in ("weight", "logit_scale", "visual_projection"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert (again.base, again.task, again.num_templates, again.prompts_hash) == (
        first.base, first.task, first.num_templates, first.prompts_hash)
    assert again.prompts_hash == T.get_task("dtd").prompts_hash()


def _flip_byte(path: Path, offset_from_end: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_corrupted_or_mismatched_cache_file_is_caught(tiny_clip, loaded, tmp_path):
    model, tok = loaded
    cache = tmp_path / "heads"
    good = H.zeroshot_head(tiny_clip, "eurosat", cache_dir=cache, model=model, tokenizer=tok)
    path = H.head_path(tiny_clip, "eurosat", cache)
    pristine = path.read_bytes()

    path.write_bytes(pristine[: len(pristine) // 2])  # truncated
    with pytest.raises(H.HeadCacheError, match=f"{path}.*unreadable.*on_invalid='rebuild'"):
        H.zeroshot_head(tiny_clip, "eurosat", cache_dir=cache)

    path.write_bytes(pristine)
    _flip_byte(path, 6)  # inside the tensor data (a low byte of a float: the value stays finite)
    with pytest.raises(H.HeadCacheError, match=f"{path}.*checksum mismatch"):
        H.load_head(path, task="eurosat")

    # a head of another task under this task's name; of the right task but another base
    H.save_head(H.build_head(model, tok, "mnist", base=good.base), path)
    with pytest.raises(H.HeadCacheError, match="head of task 'mnist', expected 'eurosat'"):
        H.load_head(path, task="eurosat")
    path.write_bytes(pristine)
    with pytest.raises(H.HeadCacheError, match="is a head of base"):
        H.load_head(path, task="eurosat", base=tmp_path)

    # same task, other prompts (a template changed since the head was cached)
    import dataclasses

    edited = dataclasses.replace(T.get_task("eurosat"), templates=("a satellite photo of {}.",) * 3)
    with pytest.raises(H.HeadCacheError, match="prompts hash .* differs"):
        H.load_head(path, task=edited)

    # rebuild when allowed: a warning naming the file, then the same head as before, bitwise
    path.write_bytes(pristine[:100])
    with pytest.warns(UserWarning, match=f"rebuilding zero-shot head: head file {path}"):
        rebuilt = H.zeroshot_head(tiny_clip, "eurosat", cache_dir=cache, on_invalid="rebuild",
                                  model=model, tokenizer=tok)
    assert torch.equal(rebuilt.weight, good.weight)
    reread = H.load_head(path, task="eurosat", base=tiny_clip)  # (header key order is not fixed: compare contents)
    assert torch.equal(reread.weight, good.weight) and torch.equal(reread.visual_projection, good.visual_projection)
    with pytest.raises(ValueError, match="on_invalid must be"):
        H.zeroshot_head(tiny_clip, "eurosat", cache_dir=cache, on_invalid="ignore")


def test_local_folder_without_safetensors_is_refused(tmp_path):
    _extra("transformers")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not loaded")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights .*pickled checkpoints are not loaded"):
        H.load_clip(tmp_path)


# ----------------------------------------------------------------------------- test sets


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


SIZES = [(20, 28), (40, 32), (32, 32), (48, 36)]  # (height, width)


@pytest.fixture(scope="module")
def local_eurosat(tmp_path_factory):
    """A local folder in the hub layout: data/test-0000{0,1}-of-00002.parquet (+ a train file not to be read).

    Class c has 3 + c % 4 rows; row groups of 7 rows.
    """
    pa, pq = _extra("pyarrow"), _extra("pyarrow.parquet")
    root = tmp_path_factory.mktemp("eurosat_local")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    labels = [c for c in range(10) for _ in range(3 + c % 4)]
    rng.shuffle(labels)
    images = []
    for i in range(len(labels)):
        h, w = SIZES[i % len(SIZES)]
        images.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    half = len(labels) // 2
    for part, (lo, hi) in enumerate(((0, half), (half, len(labels)))):
        table = pa.table({
            "image": pa.array([{"bytes": _png(a), "path": None} for a in images[lo:hi]],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array(labels[lo:hi], type=pa.int64()),
        })
        pq.write_table(table, root / "data" / f"test-0000{part}-of-00002.parquet", row_group_size=7)
    pq.write_table(pa.table({"image": pa.array([{"bytes": b"x", "path": None}]), "label": pa.array([99])}),
                   root / "data" / "train-00000-of-00001.parquet")
    return root, np.asarray(labels), images


def _hand_preprocess(array: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(D.OPENAI_MEAN)[:, None, None]
    std = torch.tensor(D.OPENAI_STD)[:, None, None]
    return (x - mean) / std


def test_preprocessing_matches_a_hand_computation():
    rng = np.random.default_rng(3)
    tall = rng.integers(0, 256, size=(48, 32, 3), dtype=np.uint8)  # short side already 32: crop rows 8..40
    image = Image.fromarray(tall)
    out = D.preprocess(image, image_size=32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, _hand_preprocess(tall[8:40]), atol=1e-6)
    assert image.size == (32, 48)  # the input is untouched

    small = rng.integers(0, 256, size=(15, 10, 3), dtype=np.uint8)  # w=10, h=15 -> 32 x int(32*1.5)=48, bicubic
    resized = np.asarray(Image.fromarray(small).resize((32, 48), Image.BICUBIC))
    assert torch.allclose(D.preprocess(Image.fromarray(small), 32), _hand_preprocess(resized[8:40]), atol=1e-6)

    wide = rng.integers(0, 256, size=(20, 45), dtype=np.uint8)  # grey, w=45 h=20 -> 72 x 32, crop cols 20..52
    resized = np.asarray(Image.fromarray(wide).resize((72, 32), Image.BICUBIC))
    rgb = np.repeat(resized[:, 20:52, None], 3, axis=2)
    assert torch.allclose(D.preprocess(Image.fromarray(wide), 32), _hand_preprocess(rgb), atol=1e-6)
    assert D.preprocess(Image.fromarray(tall), 224).shape == (3, 224, 224)


def test_local_parquet_folder_reads_through_the_hub_loader(local_eurosat):
    root, labels, images = local_eurosat
    ts = D.load_test_set("eurosat", root, image_size=32)
    assert [f.name for f in ts.files] == ["test-00000-of-00002.parquet", "test-00001-of-00002.parquet"]
    assert len(ts) == ts.num_rows == len(labels)
    assert np.array_equal(ts.labels, labels)
    seen_labels, first = [], None
    for pixels, lab in ts.batches(batch_size=16):
        assert pixels.shape[1:] == (3, 32, 32) and pixels.dtype == torch.float32 and len(pixels) <= 16
        first = pixels[0] if first is None else first
        seen_labels.extend(lab.tolist())
    assert seen_labels == labels.tolist()
    assert torch.equal(first, D.preprocess(Image.fromarray(images[0]), 32))


def test_class_balanced_subsample_is_balanced_and_seeded(local_eurosat):
    root, labels, _ = local_eurosat
    sizes = np.bincount(labels, minlength=10)  # 3 + c % 4: 3, 4, 5, 6, 3, ...
    a = D.load_test_set("eurosat", root, n_test=20, seed=0, image_size=32)
    assert len(a) == 20 and a.class_counts().tolist() == [2] * 10
    b = D.load_test_set("eurosat", root, n_test=20, seed=0, image_size=32)
    c = D.load_test_set("eurosat", root, n_test=20, seed=1, image_size=32)
    assert np.array_equal(a.indices, b.indices) and not np.array_equal(a.indices, c.indices)
    assert np.all(np.diff(a.indices) > 0) and np.array_equal(a.labels, labels[a.indices])
    assert [lab for _, batch in a.batches(batch_size=6) for lab in batch.tolist()] == a.labels.tolist()

    odd = D.load_test_set("eurosat", root, n_test=37, seed=0, image_size=32).class_counts()
    assert odd.sum() == 37 and odd.max() - odd.min() <= 1
    # more than the small classes hold: they give all their rows, the others share the rest evenly
    big = D.load_test_set("eurosat", root, n_test=40, seed=2, image_size=32).class_counts()
    assert big.sum() == 40 and np.all(big <= sizes)
    open_classes = big < sizes
    assert np.all(big[~open_classes] == sizes[~open_classes]) and np.ptp(big[open_classes]) <= 1
    assert len(D.load_test_set("eurosat", root, n_test=10_000, image_size=32)) == len(labels)
    with pytest.raises(ValueError, match="n_test must be >= 1"):
        D.load_test_set("eurosat", root, n_test=0)


def test_bad_local_data_is_named(local_eurosat, tmp_path):
    pa, pq = _extra("pyarrow"), _extra("pyarrow.parquet")
    root, _, _ = local_eurosat
    with pytest.raises(FileNotFoundError, match=r"test set of svhn: no parquet file matching \['cropped_digits/test-"):
        D.load_test_set("svhn", root)
    (tmp_path / "data").mkdir()
    bad = tmp_path / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"image": pa.array([{"bytes": b"", "path": None}]), "label": pa.array([10])}), bad)
    with pytest.raises(ValueError, match=f"{bad}: label 10 at row 0 is outside \\[0, 10\\)"):
        D.load_test_set("eurosat", tmp_path)
    pq.write_table(pa.table({"img": pa.array([b""]), "label": pa.array([1])}), bad)
    with pytest.raises(ValueError, match="no column 'image'"):
        D.load_test_set("eurosat", tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a hub id"):
        D.load_test_set("eurosat", tmp_path / "missing" / "folder")


# ----------------------------------------------------------------------------- offline


def test_hub_ids_fail_fast_and_clearly_when_offline(tmp_path, monkeypatch):
    _extra("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"test set of sun397.*dataset 'tanganke/sun397'.*"
                                                  r"data/test-\*\.parquet.*HF_HUB_OFFLINE is set"):
        D.load_test_set("sun397", hub_cache_dir=tmp_path)
    with pytest.raises(HubUnavailableError, match=r"base CLIP openai/clip-vit-base-patch32.*model "
                                                  r"'openai/clip-vit-base-patch32'.*HF_HUB_OFFLINE"):
        H.zeroshot_head("openai/clip-vit-base-patch32", "mnist", cache_dir=tmp_path / "heads",
                        hub_cache_dir=tmp_path / "hub")
    assert time.perf_counter() - t0 < 3.0
    assert not (tmp_path / "heads").exists() or not list((tmp_path / "heads").rglob("*.safetensors"))


_CHILD = textwrap.dedent("""
    import json, os, socket, sys, time
    import swudi_lab.hub.tasks, swudi_lab.hub.heads, swudi_lab.hub.data
    lazy = {m: m in sys.modules for m in ("transformers", "huggingface_hub", "pyarrow")}
    from swudi_lab.hub.data import load_test_set
    out = {"lazy": lazy}
    def attempt(name, **kw):
        t0 = time.perf_counter()
        try:
            load_test_set("eurosat", hub_cache_dir=os.environ["HF_HUB_CACHE"], **kw)
            out[name] = ["no error", time.perf_counter() - t0]
        except Exception as e:
            out[name] = [f"{type(e).__name__}: {e}", time.perf_counter() - t0]
    attempt("refused")                        # HF_ENDPOINT=http://127.0.0.1:9, set before import
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)  # accepts, never answers
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:%d" % server.getsockname()[1]
    attempt("silent", timeout=1.0)
    print(json.dumps(out))
""")


def test_a_hub_id_in_the_local_hub_cache_reads_offline_through_the_same_loader(local_eurosat, tmp_path,
                                                                               monkeypatch):
    _extra("huggingface_hub")
    root, labels, _ = local_eurosat
    repo = tmp_path / "hub" / "datasets--tanganke--eurosat"  # huggingface_hub's cache layout
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    (snapshot / "data").mkdir(parents=True)
    for f in sorted((root / "data").glob("test-*.parquet")):
        (snapshot / "data" / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ts = D.load_test_set("eurosat", n_test=20, image_size=32, hub_cache_dir=tmp_path / "hub")
    local = D.load_test_set("eurosat", root, n_test=20, image_size=32)
    assert [f.parent for f in ts.files] == [snapshot / "data"] * 2
    assert np.array_equal(ts.indices, local.indices) and np.array_equal(ts.labels, labels[local.indices])


def test_only_the_test_split_and_the_readme_are_asked_of_the_hub(local_eurosat, tmp_path, monkeypatch):
    hf = _extra("huggingface_hub")
    root, labels, _ = local_eurosat
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf.HfApi, "repo_info", lambda self, repo_id, **kw: calls.append(("info", repo_id, kw)))

    def fake_snapshot_download(repo_id, **kw):  # stands in for the hub: no network
        calls.append(("download", repo_id, kw))
        return str(root)

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    ts = D.load_test_set("eurosat", image_size=32, timeout=2.5, hub_cache_dir=tmp_path)
    assert len(ts) == len(labels)
    (_, rid, info_kw), (_, did, dl_kw) = calls
    assert rid == did == "tanganke/eurosat" and info_kw["timeout"] == 2.5 and info_kw["repo_type"] == "dataset"
    assert dl_kw["repo_type"] == "dataset" and dl_kw["cache_dir"] == tmp_path
    assert dl_kw["allow_patterns"] == ["data/test-*.parquet", "data/test/*.parquet", "README.md"]
    calls.clear()
    with pytest.raises(FileNotFoundError, match="test set of svhn: no parquet file"):
        D.test_files("svhn")
    assert calls[1][1] == "ufldl-stanford/svhn"
    assert calls[1][2]["allow_patterns"][:2] == ["cropped_digits/test-*.parquet", "cropped_digits/test/*.parquet"]


def test_unreachable_endpoints_fail_within_seconds(tmp_path):
    _extra("huggingface_hub")
    _extra("pyarrow")
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["lazy"] == {"transformers": False, "huggingface_hub": False, "pyarrow": False}
    message, seconds = out["refused"]
    assert message.startswith("HubUnavailableError: could not fetch test set of eurosat"), message
    assert "'tanganke/eurosat'" in message and "127.0.0.1:9 is unreachable" in message and seconds < 3.0
    message, seconds = out["silent"]
    assert message.startswith("HubUnavailableError") and "is unreachable" in message, message
    assert seconds < 4.0, seconds
