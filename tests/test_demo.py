"""The zoo demo end to end on a micro zoo: every registry method, the sweeps, the outputs."""

import json

import pytest

from swudi_lab.config.presets import PAPER
from swudi_lab.demo import demo_runs, format_table, run_demo
from swudi_lab.merge import METHODS


def test_every_registry_method_runs_at_the_paper_setting_and_matched_variants_exist():
    runs = demo_runs(lr_rel=0.05)
    paper = {r.method: r.params for r in runs if r.setting == "paper"}
    assert list(paper) == list(METHODS)
    assert paper["swudi"] == {"t": 1300.0, "ratio": 0.65} and paper["average"] == {}
    matched = {r.method: r.params for r in runs if r.setting == "matched"}
    assert matched["iwudi"] == {"kappa": PAPER.kappa("iwudi")}
    assert matched["wudi"] == {"lr_rel": 0.05, "steps": 300}


@pytest.mark.slow
def test_demo_on_a_micro_zoo(tmp_path):
    from swudi_lab.zoo import ZooConfig

    logs = []
    summary = run_demo(seeds=(0,), out_dir=tmp_path / "demo", quick=True, progress=False, log=logs.append,
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
    # a re-run reuses the cached seed result (keyed by zoo manifest + settings) and gives the same summary
    again = []
    summary2 = run_demo(seeds=(0,), out_dir=tmp_path / "demo", quick=True, progress=False, log=again.append,
                        zoo_root=tmp_path / "zoo", config=ZooConfig.micro())
    assert any("reusing" in line for line in again)
    assert summary2["methods"]["swudi"]["avg_acc"] == summary["methods"]["swudi"]["avg_acc"]
    # fresh=True recomputes and rewrites the cache, so the next plain run reuses the new result
    cache = tmp_path / "demo" / "seeds" / "seed0.json"
    stale = json.loads(cache.read_text())
    cache.write_text(json.dumps({**stale, "result": {**stale["result"], "stale": True}}))
    fresh = []
    run_demo(seeds=(0,), out_dir=tmp_path / "demo", quick=True, progress=False, log=fresh.append,
             zoo_root=tmp_path / "zoo", config=ZooConfig.micro(), fresh=True)
    assert not any("reusing" in line for line in fresh)
    assert "stale" not in json.loads(cache.read_text())["result"]
