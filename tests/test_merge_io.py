"""Safe loading and atomic, deterministic writing (swudi_lab.merge.io)."""

import pytest
import torch
from safetensors.torch import load_file

import swudi_lab  # noqa: F401
from swudi_lab.merge.io import SafetensorsWriter, load_state_dict, open_checkpoint, save_safetensors


class NotWeights:  # pickled as an arbitrary object: weights_only loading must refuse it
    pass


def sample():
    g = torch.Generator().manual_seed(0)
    return {"b.w": torch.randn(3, 4, generator=g).to(torch.bfloat16), "a": torch.randn(5, generator=g).half(),
            "s": torch.tensor(2.5, dtype=torch.float64), "i": torch.arange(4), "m": torch.tensor([True, False]),
            "e": torch.zeros(0, 3)}


def test_writer_roundtrip_matches_safetensors(tmp_path):
    sd = sample()
    p = save_safetensors(sd, tmp_path / "x.safetensors", {"k": "v"})
    back = load_file(str(p))
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    ck = open_checkpoint(p)
    assert ck.keys() == sorted(sd) and ck.shape("b.w") == (3, 4) and ck.dtype("b.w") == torch.bfloat16
    # same tensors, different insertion order -> same bytes
    q = save_safetensors(dict(reversed(list(sd.items()))), tmp_path / "y.safetensors", {"k": "v"})
    assert p.read_bytes() == q.read_bytes()


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(target, {"a": ((2,), torch.float32), "b": ((2,), torch.float32)}) as w:
            w.write("a", torch.ones(2))
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
    with pytest.raises(ValueError, match="declared"):
        with SafetensorsWriter(target, {"a": ((2,), torch.float32)}) as w:
            w.write("a", torch.ones(3))
    with pytest.raises(ValueError, match="only 0 of 1"):
        SafetensorsWriter(target, {"a": ((2,), torch.float32)}).close()
    assert target.read_bytes() == b"old"


def test_torch_files_weights_only(tmp_path):
    sd = {"w": torch.randn(2, 2)}
    torch.save(sd, tmp_path / "ok.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "nested.pth")
    assert torch.equal(load_state_dict(tmp_path / "ok.pt")["w"], sd["w"])
    assert torch.equal(open_checkpoint(str(tmp_path / "nested.pth")).get("w"), sd["w"])
    torch.save({"w": torch.randn(2), "obj": NotWeights()}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match=r"evil\.bin is not a weights-only checkpoint"):
        open_checkpoint(tmp_path / "evil.bin")


def test_missing_unreadable_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        open_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        open_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="junk.pt"):
        open_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint suffix"):
        open_checkpoint(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="entry 'x' is a int"):
        open_checkpoint({"x": 3})
