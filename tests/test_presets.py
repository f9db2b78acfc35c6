"""Presets: the paper's settings per model family, read by the registry, the engine and the CLI."""

import pytest
import torch

from swudi_lab import cli
from swudi_lab.config import PAPER, PRESETS, ZOO_MATCHED, get_preset
from swudi_lab.merge import METHODS, merge, resolve_params


def test_published_settings_per_family():
    assert PAPER.params("swudi") == {"t": 1300.0, "ratio": 0.65}
    assert PAPER.params("iwudi") == {"t": 300.0}
    assert PAPER.params("wudi") == {"lr": 1e-5, "steps": 300}
    assert PAPER.params("swudi_a") == {"rank_rule": "participation_sqrt"}
    assert get_preset("clip-vit-b16").params("swudi") == {"t": 1800.0, "ratio": 0.65}
    assert get_preset("llama-3.2-3b").params("swudi") == {"t": 300.0, "ratio": 0.85}
    assert get_preset("qwen2-vl-7b").params("swudi") == {"t": 1300.0, "ratio": 0.01, "scale": 0.2}
    assert get_preset("internvl2.5-1b").params("swudi") == {"t": 300.0, "ratio": 0.65, "scale": 0.1}


def test_scale_matched_preset_carries_the_paper_kappa():
    # kappa = t N / d_in on CLIP ViT-B/32: N = 8, d_in = 768
    assert ZOO_MATCHED.params("iwudi") == {"kappa": pytest.approx(300 * 8 / 768)}
    assert ZOO_MATCHED.params("swudi")["kappa"] == pytest.approx(1300 * 8 / 768)


def test_every_preset_setting_is_a_valid_registry_call():
    for preset in PRESETS.values():
        for method in preset.methods:
            assert method in METHODS
            resolve_params(method, preset=preset)  # raises on a name or value the method rejects


def test_preset_values_sit_under_the_callers_own():
    assert resolve_params("swudi", preset="clip-vit-b16")["t"] == 1800.0
    assert resolve_params("swudi", {"ratio": 0.5}, preset="clip-vit-b16") == resolve_params("swudi", {"t": 1800, "ratio": 0.5})
    by_kappa = resolve_params("swudi", {"kappa": 2.0}, preset="clip-vit-b16")  # kappa replaces the preset's t
    assert by_kappa["t"] is None and by_kappa["kappa"] == 2.0
    assert resolve_params("iwudi", preset="qwen2-vl-7b") == resolve_params("iwudi")  # no setting: the defaults
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve_params("swudi", preset="nope")
    with pytest.raises(KeyError, match="covers: swudi"):
        get_preset("llama-3.2-3b").params("wudi")


def _toy_checkpoints(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"model.embed_tokens.weight": torch.randn(10, 4, generator=g), "model.layers.0.mlp.weight": torch.randn(6, 4, generator=g)}
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    return base, experts


def test_merge_with_a_preset_equals_its_values_spelled_out_and_keeps_its_exclusions():
    base, experts = _toy_checkpoints()
    by_preset = merge(base, experts, "swudi", preset="llama-3.2-3b", progress=False, device="cpu")
    spelled = merge(base, experts, "swudi", t=300.0, ratio=0.85, exclude=[r".*embed_tokens\..*"], progress=False,
                    device="cpu")
    for k in base:
        assert torch.equal(by_preset.state_dict[k], spelled.state_dict[k])
    assert torch.equal(by_preset.state_dict["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert by_preset.report.meta["preset"] == "llama-3.2-3b"


def test_cli_merge_preset_and_presets_listing(tmp_path, capsys):
    from safetensors.torch import save_file

    base, experts = _toy_checkpoints(1)
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, e in enumerate(experts):
        save_file(e, tmp_path / f"e{i}.safetensors")
        paths.append(str(tmp_path / f"e{i}.safetensors"))
    out = tmp_path / "merged.safetensors"
    rc = cli.main(["merge", "--base", str(tmp_path / "base.safetensors"), "--experts", *paths, "--method", "swudi",
                   "--preset", "clip-vit-b16", "--ratio", "0.5", "--out", str(out), "--quiet", "--no-progress",
                   "--device", "cpu"])
    assert rc == 0 and out.is_file()
    from safetensors.torch import load_file

    want = merge(base, experts, "swudi", t=1800.0, ratio=0.5, progress=False, device="cpu").state_dict
    got = load_file(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    capsys.readouterr()
    assert cli.main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in PRESETS) and "t=1800" in listing
    assert cli.main(["merge", "--base", "b", "--experts", "e", "--method", "swudi", "--preset", "nope", "--out", "o"]) == 2
