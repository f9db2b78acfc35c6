"""``make demo`` and ``make study`` end to end on a micro zoo: one code path, two profiles; every
registry method, the sweeps each profile runs, the outputs, the cache, and the log mode of the progress."""

import json
import re

import pytest

from swudi_lab.config.presets import PAPER, ZOO_MATCHED
from swudi_lab.demo import (KAPPAS, LR_REL_GRID, RATIOS, RESULTS_FORMAT, SWEEP_IMAGES, WUDI_STEPS, _cache_key, demo_runs,
                            format_table, profile, run_demo, run_study)
from swudi_lab.merge import METHODS


def test_every_registry_method_runs_at_the_paper_setting_and_matched_variants_exist():
    runs = demo_runs(lr_rel=0.05)
    paper = {r.method: r.params for r in runs if r.setting == "paper"}
    assert list(paper) == list(METHODS)
    assert paper["swudi"] == {"t": 1300.0, "ratio": 0.65} and paper["average"] == {}
    matched = {r.method: r.params for r in runs if r.setting == "matched"}
    assert matched["iwudi"] == {"kappa": PAPER.kappa("iwudi")}
    assert matched["wudi"] == {"lr_rel": 0.05, "steps": 300}


def test_the_demo_and_the_study_are_one_code_path_with_two_profiles():
    demo, study = profile("demo"), profile("study")
    assert demo.seeds == (0,) and study.seeds == (0, 1, 2)
    assert not demo.calibrate and not demo.wudi_steps and not demo.ratios and not demo.experts_alone
    assert demo.kappas == study.kappas == KAPPAS and demo.test_images is None is study.test_images
    assert demo.sweep_images == 300, "the fast demo sweeps on 300 images per task; the table keeps whole splits"
    assert study.calibrate and study.lr_rel_grid == LR_REL_GRID and study.wudi_steps == WUDI_STEPS
    assert study.ratios == RATIOS and study.experts_alone and study.sweep_images == SWEEP_IMAGES
    quick = profile("study", quick=True)  # the smoke run of the former full demo, unchanged
    assert (quick.lr_rel_grid, quick.wudi_steps, quick.kappas, quick.ratios, quick.test_images) == (
        LR_REL_GRID[1:5:2], WUDI_STEPS[:2], KAPPAS[1::2], RATIOS[::3], 300)
    with pytest.raises(ValueError, match="unknown profile 'full'"):
        profile("full")


def test_the_study_keeps_the_cache_key_of_the_former_full_demo():
    """The seeds cached by the former ``make demo`` (the full run) stay valid for ``make study``."""
    import hashlib

    from swudi_lab import __version__

    class Zoo:
        manifest = {"files": {"base.safetensors": "ab12"}, "seed": 0}

    former = [RESULTS_FORMAT, __version__, False, "cpu", WUDI_STEPS, KAPPAS, RATIOS, LR_REL_GRID, SWEEP_IMAGES,
              sorted(METHODS)]
    expected = hashlib.sha256((json.dumps(Zoo.manifest, sort_keys=True) + repr(former)).encode()).hexdigest()
    assert _cache_key(Zoo(), False, "cpu", "study") == expected
    assert _cache_key(Zoo(), False, "cpu", "demo") != expected != _cache_key(Zoo(), True, "cpu", "study")


def test_the_cli_has_a_fast_demo_and_the_study():
    from swudi_lab.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo"]).seeds == [0] and not parser.parse_args(["demo"]).toy
    assert parser.parse_args(["study"]).seeds == [0, 1, 2]
    args = parser.parse_args(["study", "--seeds", "0", "--quick", "--fresh", "--no-progress", "--out", "x"])
    assert (args.seeds, args.quick, args.fresh, args.no_progress, args.out) == ([0], True, True, True, "x")


_PHASE_LINE = re.compile(r".*\(\d+\.\d s\)$")


@pytest.mark.slow
def test_fast_demo_on_a_micro_zoo_in_log_mode(tmp_path, monkeypatch, capsys):
    """The fast demo: every method at both settings, the kappa sweep, the report; in a log (captured
    output is no terminal) one line per phase with its time, no bar, no carriage return."""
    from swudi_lab.zoo import ZooConfig

    monkeypatch.setenv("SWUDI_LAB_RESULTS", str(tmp_path / "results"))
    summary = run_demo(quick=True, progress=True, zoo_root=tmp_path / "zoo", config=ZooConfig.micro())
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "it/s" not in out + err, "no tqdm bar in a log"
    lines = out.splitlines()
    phases = [line for line in lines if line.startswith("[")]
    assert phases and all(_PHASE_LINE.match(line) for line in phases), [x for x in phases if not _PHASE_LINE.match(x)]
    assert any(line.startswith("[zoo seed0] expert ") for line in phases), "the zoo's build reports per phase too"
    labels = [r.label for r in demo_runs(ZOO_MATCHED.params("wudi")["lr_rel"])]
    for label in labels:
        assert sum(line.startswith(f"[seed 0] {label}: ") for line in phases) == 1, label
    assert any("accuracy vs kappa" in line for line in phases)
    assert re.search(r"^demo done in \d+ s \(wall time, 1 seed, quick\)\.$", out, re.M), out[-800:]
    assert "differences under about a point" in lines[-1] and "make study" in lines[-1]

    written = json.loads((tmp_path / "results" / "demo" / "summary.json").read_text())
    assert list(written["methods"]) == labels and written["profile"] == "demo"
    assert set(written["sweeps"]) == {"kappa", "closed_form"} and "disentanglement" not in written
    assert [p["kappa"] for p in written["sweeps"]["kappa"]] == list(KAPPAS[1::2])
    assert written["wudi_calibration"] == [{"lr_rel": 0.038, "source": "preset zoo-matched"}]
    assert written["methods"]["wudi (matched lr)"]["params"]["lr_rel"] == 0.038
    for row in written["methods"].values():
        assert {"avg_acc", "norm_acc", "per_task", "seconds", "peak_mb"} <= set(row)
    assert written["methods"]["swudi_a"]["ranks"]
    html = (tmp_path / "results" / "demo" / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 5 and "Accuracy vs kappa" in html and "make study" in html
    assert "WUDI vs Adam steps" not in html
    assert "swudi" in format_table(summary)
    cached = sorted(p.name for p in (tmp_path / "results" / "demo" / "seeds").iterdir())
    assert cached == ["demo-seed0.json"], "the demo's seeds never take the study's cache files"


@pytest.mark.slow
def test_study_on_a_micro_zoo(tmp_path, monkeypatch):
    from swudi_lab.zoo import ZooConfig

    monkeypatch.setenv("SWUDI_LAB_RESULTS", str(tmp_path / "results"))
    logs = []
    summary = run_study(seeds=(0,), out_dir=tmp_path / "demo", quick=True, progress=False, log=logs.append,
                        zoo_root=tmp_path / "zoo", config=ZooConfig.micro())
    written = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(written) >= {"methods", "experts", "base", "sweeps"}
    for label, row in written["methods"].items():
        assert {"avg_acc", "norm_acc", "per_task", "seconds", "peak_mb"} <= set(row), label
        assert 0.0 <= row["avg_acc"]["mean"] <= 100.0
        assert row["seconds"]["mean"] > 0
    # every per-task accuracy is averaged into avg_acc
    row = written["methods"]["swudi"]
    per_task = [v["mean"] for v in row["per_task"].values()]
    assert row["avg_acc"]["mean"] == pytest.approx(sum(per_task) / len(per_task))
    assert written["sweeps"]["kappa"] and written["sweeps"]["ratio"] and written["sweeps"]["wudi_steps"]
    assert written["methods"]["swudi_a"]["ranks"], "SWUDI-A's per-layer ranks are reported"
    # experts alone: the cross effect's diagonal is each expert's gain; the own response at 1/N is a share of it
    (seed,) = json.loads((tmp_path / "demo" / "per_seed.json").read_text())
    for t in seed["tasks"]:
        assert seed["cross_effect"][t][t] == pytest.approx(seed["experts"][t] - seed["base"][t], abs=1e-9)
    d = written["disentanglement"]
    assert d["alpha"] == pytest.approx(1 / len(seed["tasks"])) and set(d["cross_effect"]) == set(seed["tasks"])
    off = [seed["cross_effect"][s][t] for s in seed["tasks"] for t in seed["tasks"] if s != t]
    assert d["cross_off_diagonal"]["mean"] == pytest.approx(sum(off) / len(off))
    assert any("experts alone" in line for line in logs)
    html = (tmp_path / "demo" / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 7 and "Each expert alone on every task" in html
    assert (tmp_path / "demo" / "summary.csv").read_text().count("\n") == len(written["methods"]) + 1
    assert "swudi" in format_table(summary) and any("base-with-heads" in line for line in logs)
    assert any(line.startswith("study done in ") for line in logs) and written["profile"] == "study"
    # a re-run reuses the cached seed result (keyed by zoo manifest + settings) and gives the same summary
    again = []
    summary2 = run_study(seeds=(0,), out_dir=tmp_path / "demo", quick=True, progress=False, log=again.append,
                         zoo_root=tmp_path / "zoo", config=ZooConfig.micro())
    assert any("reusing" in line for line in again)
    assert summary2["methods"]["swudi"]["avg_acc"] == summary["methods"]["swudi"]["avg_acc"]
    # fresh=True recomputes and rewrites the cache, so the next plain run reuses the new result
    cache = tmp_path / "demo" / "seeds" / "seed0.json"
    stale = json.loads(cache.read_text())
    cache.write_text(json.dumps({**stale, "result": {**stale["result"], "stale": True}}))
    fresh = []
    run_study(seeds=(0,), out_dir=tmp_path / "demo", quick=True, progress=False, log=fresh.append,
              zoo_root=tmp_path / "zoo", config=ZooConfig.micro(), fresh=True)
    assert not any("reusing" in line for line in fresh)
    assert "stale" not in json.loads(cache.read_text())["result"]
    # a seed cached by the former full `make demo` (results/demo/seeds/seed0.json) is reused by the study
    legacy = tmp_path / "results" / "demo" / "seeds"
    legacy.mkdir(parents=True)
    (legacy / "seed0.json").write_text(cache.read_text())
    moved = []
    run_study(seeds=(0,), quick=True, progress=False, log=moved.append, zoo_root=tmp_path / "zoo",
              config=ZooConfig.micro())
    assert any(f"reusing {legacy / 'seed0.json'}" in line for line in moved)
    assert (tmp_path / "results" / "study" / "seeds" / "seed0.json").read_text() == cache.read_text()
