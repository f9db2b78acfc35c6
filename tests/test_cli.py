"""The swudi-lab command line (swudi_lab.cli)."""

import json
import subprocess
import sys

import torch
from merge_helpers import make_checkpoints

import swudi_lab  # noqa: F401
from swudi_lab.cli import main
from swudi_lab.merge import merge, save_safetensors
from swudi_lab.merge.io import load_state_dict


def files(tmp_path, **kw):
    base, experts = make_checkpoints(**kw)
    b = str(save_safetensors(base, tmp_path / "base.safetensors"))
    es = [str(save_safetensors(e, tmp_path / f"task{i}.safetensors")) for i, e in enumerate(experts)]
    return base, experts, b, es


def test_merge_roundtrip(tmp_path, capsys):
    base, experts, b, es = files(tmp_path)
    out = tmp_path / "merged.safetensors"
    rc = main(["merge", "--base", b, "--experts", *es, "--method", "swudi", "--kappa", "3", "--ratio", "0.5",
               "--out", str(out), "--report", str(tmp_path / "report.json"), "--no-progress", "--device", "cpu"])
    assert rc == 0
    got = load_state_dict(out)
    want = merge(base, experts, "swudi", kappa=3, ratio=0.5, progress=False, device="cpu").state_dict
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    rep = json.loads((tmp_path / "report.json").read_text())
    row = next(r for r in rep["rows"] if r["name"] == "blocks.0.fc.weight")
    assert row["kappa"] == 3.0 and row["t"] == 3.0 * 16 / 3 and row["k"] == 8
    assert "blocks.0.fc.weight" in capsys.readouterr().out
    assert (tmp_path / "report.csv").read_text().startswith("name,shape,route")


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "swudi_a" in out and "--rank-rule" in out and "1300" in out


def test_bad_input_is_an_error_without_output(tmp_path, capsys):
    base, experts, b, es = files(tmp_path)
    out = tmp_path / "m.safetensors"
    common = ["--base", b, "--out", str(out), "--no-progress"]
    cases = [
        (["--experts", *es, "--method", "swudi", "--alpha", "1"], "--alpha is not a parameter of method 'swudi'"),
        (["--experts", *es, "--method", "iwudi", "--t", "3", "--kappa", "1"], "only one of"),
        (["--experts", *es, str(tmp_path / "gone.safetensors"), "--method", "average"], "gone.safetensors"),
        (["--experts", *es, "--method", "nope"], "invalid choice"),
        (["--experts", "--method", "swudi"], "expected at least one argument"),
        (["--experts", *es, "--method", "swudi_a", "--rank-r", "3"], "unrecognized arguments"),  # no abbreviations
        (["--experts", *es, "--method", "swudi", "--rank", "3"], "--rank is not a parameter of method 'swudi'"),
    ]
    for args, message in cases:
        rc = main(["merge", *common, *args])
        assert rc != 0, args
        assert message in capsys.readouterr().err, args
        assert not out.exists()
    experts[0]["pos_embed"][0, 0, 0] = float("nan")
    save_safetensors(experts[0], es[0])
    assert main(["merge", *common, "--experts", *es, "--method", "ties"]) == 1
    assert "'pos_embed' of expert 'task0'" in capsys.readouterr().err and not out.exists()


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "swudi_lab.cli", "methods", "swudi"], capture_output=True, text=True)
    assert r.returncode == 0 and "--ratio" in r.stdout


def test_demo_toy_prints_the_filter_table(capsys):
    from swudi_lab.cli import main

    assert main(["demo", "--toy"]) == 0
    out = capsys.readouterr().out
    for name in ("pseudoinverse", "landweber", "exponential", "tikhonov", "top_k", "swudi", "wiener"):
        assert name in out


def test_zoo_info_on_a_micro_zoo(tmp_path, capsys):
    from swudi_lab.cli import main
    from swudi_lab.zoo import ZooConfig, build_zoo

    build_zoo(tmp_path / "zoo", seed=0, config=ZooConfig.micro(), progress=False)
    assert main(["zoo", "info", "--root", str(tmp_path / "zoo")]) == 0
    assert "Zoo(" in capsys.readouterr().out
    # no cache and no shipped release for seed 7: a one-line error, non-zero exit
    assert main(["zoo", "info", "--root", str(tmp_path / "missing"), "--seeds", "7"]) != 0
    assert "swudi-lab zoo build --seeds 7" in capsys.readouterr().err


def test_zoo_build_variant_needs_its_own_root_and_changes_only_the_finetuning(tmp_path, capsys):
    import argparse

    from swudi_lab.cli import _zoo_config, main
    from swudi_lab.zoo import ZooConfig

    assert main(["zoo", "build", "--lr", "3e-4"]) != 0  # would overwrite the demo's cache: refused before any work
    assert "--root" in capsys.readouterr().err
    assert main(["zoo", "build", "--root", str(tmp_path), "--steps", "0"]) != 0
    assert "positive" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was built
    args = argparse.Namespace(root=str(tmp_path), lr=3e-4, steps=None)
    variant, default = _zoo_config(args), ZooConfig()
    assert variant.finetune.lr == 3e-4 and variant.finetune.steps == default.finetune.steps
    assert variant.backbone == default.backbone and variant.pretrained == default.pretrained
    assert variant.key() != default.key()  # a variant never passes for the default cache, nor the reverse
    assert _zoo_config(argparse.Namespace(root=None, lr=None, steps=None)).key() == default.key()
    args = argparse.Namespace(root=str(tmp_path), lr=None, steps=None, head_scale=100.0, trainable="attention", head="centered")
    other = _zoo_config(args).finetune
    assert (other.head_scale, other.trainable, other.head, other.lr) == (100.0, "attention", "centered", default.finetune.lr)
    assert main(["zoo", "build", "--root", str(tmp_path), "--head-scale", "-1"]) != 0
    assert "positive" in capsys.readouterr().err


def test_zoo_build_on_another_base_is_a_variant_checked_before_any_work(tmp_path, capsys):
    import argparse
    import shutil

    from swudi_lab.cli import _zoo_config, main
    from swudi_lab.zoo import ZooConfig
    from swudi_lab.config import paths
    from swudi_lab.zoo.build import DEFAULT_PRETRAINED

    out = tmp_path / "zoo"
    assert main(["zoo", "build", "--root", str(out), "--pretrained", str(tmp_path / "none.safetensors")]) != 0
    assert "none.json not found" in capsys.readouterr().err  # both files named, one line, no traceback
    assert main(["zoo", "build", "--pretrained", DEFAULT_PRETRAINED]) != 0  # the demo's cache is never a variant
    assert "--root" in capsys.readouterr().err
    pre = tmp_path / "pre"
    assert main(["zoo", "build", "--root", str(out), "--pretrain", "--pretrain-steps", "0", "--pretrained-out", str(pre)]) != 0
    assert "positive" in capsys.readouterr().err
    assert not out.exists() and not pre.exists()  # nothing was built or pretrained
    for suffix in (".safetensors", ".json"):
        shutil.copy(paths.pretrained_dir() / f"{DEFAULT_PRETRAINED}{suffix}", tmp_path / f"other{suffix}")
    ns = dict(root=str(out), lr=None, steps=None, head_scale=None, trainable=None, head=None)
    variant = _zoo_config(argparse.Namespace(**ns, pretrained=str(tmp_path / "other.safetensors")))
    default = ZooConfig()
    assert variant.pretrained == str(tmp_path / "other.safetensors") and variant.finetune == default.finetune
    assert variant.key() != default.key()
