"""``swudi-lab bench clip`` end to end on the offline stand-in: the same code path as the hub run.

The stand-in (:mod:`swudi_lab.hub.standin`) is built by the real libraries: a tiny
``transformers.CLIPModel`` base and tokenizer, ``CLIPVisionModel`` experts in both key layouts,
test sets as parquet files in the hub's layout. Only the download itself is not exercised here.
"""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("pyarrow")

from swudi_lab import cli  # noqa: E402
from swudi_lab.hub import bench as B  # noqa: E402
from swudi_lab.hub.standin import build_standin  # noqa: E402
from swudi_lab.merge import merge  # noqa: E402

TASKS = ("eurosat", "svhn", "mnist", "dtd")  # the stand-in's smallest tasks: fast
METHODS = ("task_arithmetic", "swudi", "swudi_a")


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return build_standin(tmp_path_factory.mktemp("standin") / "s", tasks=TASKS)


def _config(standin, out, **kw):
    return B.BenchConfig(base=str(standin.base), experts={t: str(p) for t, p in standin.experts.items()},
                         data={t: str(p) for t, p in standin.data.items()}, tasks=TASKS, methods=METHODS,
                         out=str(out), heads_cache=str(out / "heads"), device="cpu", standin=True, **kw)


def test_the_pipeline_scores_every_model_and_resumes_from_its_cache(standin, tmp_path, monkeypatch):
    logs = []
    result = B.run_clip_bench(_config(standin, tmp_path), progress=False, log=logs.append)
    assert "offline stand-in" in logs[0]
    table = result["table"]
    assert list(table) == ["zero-shot", "experts", *METHODS]
    for row in table.values():
        assert set(row["per_task"]) == set(TASKS)
        assert all(0.0 <= a <= 100.0 for a in row["per_task"].values())
        assert row["avg_acc"] == pytest.approx(sum(row["per_task"].values()) / len(TASKS))
    assert table["experts"]["norm_acc"] == pytest.approx(100.0)
    assert {k: table["swudi"]["params"][k] for k in ("t", "ratio", "kappa")} == {"t": 1300.0, "ratio": 0.65, "kappa": None}
    assert table["swudi"]["seconds"] > 0
    assert "published" not in table["swudi"]  # a stand-in is never compared with the paper
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"] == json.loads(json.dumps(table))
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("model,avg_acc,norm_acc,published")

    # a re-run resumes: nothing is merged or scored again, the numbers are the same
    def no_merge(*a, **k):
        raise AssertionError("a cached model was merged again")

    monkeypatch.setattr(B, "merge", no_merge)
    logs.clear()
    again = B.run_clip_bench(_config(standin, tmp_path), progress=False, log=logs.append)
    assert any("every score came from the cache" in line for line in logs)
    assert again["table"] == table


def test_the_merge_is_the_engine_merge_of_the_vision_towers(standin):
    base = B._vision_state(standin.base, "base")
    experts = [B._vision_state(standin.experts[t], t) for t in TASKS]
    assert all(set(e) == set(base) for e in experts)  # both key layouts map onto one
    direct = merge(base, experts, "swudi", t=1300.0, ratio=0.65, progress=False, device="cpu", head_pattern=None)
    by_preset = merge(base, experts, "swudi", preset="clip-vit-b32", progress=False, device="cpu", head_pattern=None)
    assert all(torch.equal(direct.state_dict[k], by_preset.state_dict[k]) for k in base)
    solved = {r["name"] for r in direct.report.rows if r.get("route") == "solver"}
    assert "embeddings.position_embedding.weight" in solved  # HF CLIP: every 2-D matrix, as the paper's code
    assert {"encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.self_attn.k_proj.weight"} <= solved


def test_published_numbers_sit_beside_ours_for_the_ta8_table():
    cfg = B.BenchConfig(tasks=B.TA8, methods=("swudi",)).resolved()
    per_task = {t: 80.0 for t in B.TA8}
    rows = {"zero-shot": {"per_task": per_task}, "swudi": {"per_task": per_task, "params": {}, "seconds": 1.0}}
    rows.update({f"expert {t}": {"per_task": {t: 90.0}} for t in B.TA8})

    class _TS:
        labels = [0, 1]

    result = B._assemble(cfg, rows, {t: _TS() for t in B.TA8})
    assert result["table"]["swudi"]["published"] == 85.55
    assert result["table"]["swudi"]["difference"] == pytest.approx(80.0 - 85.55)
    assert result["table"]["zero-shot"]["published"] == 48.2
    assert "85.55" in B.format_bench_table(result)


def test_cli_bench_clip_on_the_standin(standin, tmp_path, capsys):
    args = ["bench", "clip", "--base", str(standin.base), "--tasks", *TASKS, "--methods", "average",
            "--experts", *[f"{t}={p}" for t, p in standin.experts.items()],
            "--data", *[f"{t}={p}" for t, p in standin.data.items()],
            "--heads-cache", str(tmp_path / "heads"), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "average" in out
    assert cli.main(["bench", "clip", "--experts", "eurosat"]) == 1
    assert "TASK=SOURCE" in capsys.readouterr().err


def test_a_missing_hub_extra_is_one_line_naming_it(tmp_path):
    """With transformers unimportable, the hub features say which extra to install, in one line."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('transformers', 'huggingface_hub', 'pyarrow'):\n"
        "            raise ImportError(f'blocked {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import swudi_lab\n"
        "from swudi_lab.hub.bench import standin_config\n"  # importing the modules needs no extra
        "try:\n"
        f"    standin_config({str(tmp_path / 's')!r})\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    message = r.stdout.strip()
    assert len(message.splitlines()) == 1 and 'pip install "swudi_lab[hub]"' in message, message
