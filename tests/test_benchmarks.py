"""benchmarks/merge_regime.py on a micro zoo: subsets, N = 1 and scale identities, own response and cross effect."""

import importlib.util
from pathlib import Path

import pytest

from swudi_lab.zoo import ZooConfig, build_zoo

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_subsets_are_distinct_and_of_the_right_size():
    mvt = _load("merge_regime")
    tasks = [f"t{i}" for i in range(8)]
    picked = mvt.subsets(tasks, 4, 5)
    assert len(picked) == len(set(picked)) == 5 and all(len(s) == 4 for s in picked)
    assert mvt.subsets(tasks, 8, 3) == [tuple(tasks)]  # only one subset of size 8 exists


def test_one_expert_merges_to_itself_and_average_is_task_arithmetic_at_one_over_n(tmp_path):
    mr = _load("merge_regime")
    zoo = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False)
    score = mr.Scorer(zoo, images=None)
    rows = mr.run_sizes(score, sizes=(1, 3), n_subsets=1, log=lambda _: None)
    assert {(r["size"], r["method"]) for r in rows} == {(n, m) for n in (1, 3) for m in mr.RUNS}
    expert = zoo.expert_accuracy
    for r in rows:
        if r["size"] == 1 and r["method"] in ("average", "closed_form"):
            (task,) = r["tasks"]
            assert r["avg_acc"] == pytest.approx(expert[task], abs=1e-9), r
    assert "size=1" in mr.table(rows, "size") and "size=3" in mr.table(rows, "size")
    scaled = mr.run_scales(score, scales=(1 / 3, 1.0), log=lambda _: None)
    assert {r["method"] for r in scaled} == set(mr.RUNS) - {"average"}
    (avg3,) = [r for r in rows if r["size"] == 3 and r["method"] == "average"]
    (ta3,) = [r for r in scaled if r["scale"] == 1 / 3 and r["method"] == "task_arithmetic"]
    assert ta3["avg_acc"] == pytest.approx(avg3["avg_acc"], abs=1e-9)  # averaging is task arithmetic at 1/N
    assert "scale=1" in mr.table(scaled, "scale")


def test_own_response_rows_cross_effect_diagonal_and_task_vector_cosines(tmp_path):
    mr = _load("merge_regime")
    zoo = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False)
    score = mr.Scorer(zoo, images=None)
    rows = mr.own_response(score, alphas=(0.0, 1.0))
    assert {(r["task"], r["alpha"]) for r in rows} == {(t, a) for t in zoo.tasks for a in (0.0, 1.0)}
    for r in rows:  # the share of the gain is 0 at the base and 100 at the expert (nan where the expert gained nothing)
        if score.expert_acc[r["task"]] > score.base_acc[r["task"]]:
            assert r["recovered"] == pytest.approx(100.0 * r["alpha"])
    effect = mr.cross_effect(score)
    for t in zoo.tasks:
        assert effect[t][t] == pytest.approx(score.expert_acc[t] - score.base_acc[t], abs=1e-9)
    assert "mean share" in mr.response_table(rows) and "off-diagonal" in mr.cross_table(effect)
    assert len(mr.task_vector_cosines(score)) == len(zoo.tasks) * (len(zoo.tasks) - 1) // 2
    t = zoo.tasks[0]  # a task vector against itself, twice as long, and negated: cosines 1, 1, -1
    e = score.experts[t]
    score.experts = {"x": e, "2x": {k: 2 * e[k] - w0 for k, w0 in score.base.items()},
                     "-x": {k: 2 * w0 - e[k] for k, w0 in score.base.items()}}
    assert mr.task_vector_cosines(score) == pytest.approx([1.0, -1.0, -1.0], abs=1e-9)


def test_heads_and_probes_rows_keep_nothing_at_the_base_and_everything_at_the_experts(tmp_path):
    import math

    mr = _load("merge_regime")
    zoo = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False)
    score = mr.Scorer(zoo, images=None)
    rows = mr.heads_and_probes(score, train_images=40, log=lambda _: None)
    assert [r["model"] for r in rows[:2]] == ["base", "experts (each on its own task)"] and len(rows) == 2 + len(mr.RUNS)
    base, experts = rows[0], rows[1]
    assert base["head_kept"] == 0.0 and base["probe_kept"] == 0.0
    for v in (experts["head_kept"], experts["probe_kept"]):  # nan only when no expert moved its probe at all
        assert math.isnan(v) or v == pytest.approx(100.0)
    assert all(set(r["per_task_probe"]) == set(zoo.tasks) for r in rows)
    assert all(0.0 <= a <= 100.0 for r in rows for a in r["per_task_probe"].values())
    assert "probe: gain kept" in mr.probe_table(rows)


def test_rank_rules_benchmark_on_a_micro_zoo(tmp_path, capsys):
    rr = _load("rank_rules")
    zoo = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False)
    base, experts = zoo.base_state_dict(), {t: zoo.expert_state_dict(t) for t in zoo.tasks}
    ranks, d_in = rr.rank_table(base, experts, ["none", "participation_sqrt", "wudi_risk"])
    assert d_in and all(ranks["none"][n] == d_in[n] for n in d_in)
    assert all(1 <= ranks[r][n] <= d_in[n] for r in ranks for n in d_in)
    assert rr.main(["--root", str(tmp_path), "--images", "20", "--rules", "participation_sqrt", "none",
                    "--no-references"]) == 0
    out = capsys.readouterr().out
    assert "gavish_donoho_authors" in out and "swudi_a (none)" in out and "swudi_a (participation_sqrt)" in out


@pytest.mark.parametrize("method", ["swudi", "swudi_a", "closed_form"])
@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
def test_floor_benchmark_implementations_compute_the_library_merge(method, shape):
    """benchmarks/floor.py's straightforward implementation and its floor compute swudi_lab's merge (float64),
    so the benchmark times the same result three ways."""
    import torch

    from swudi_lab.merge import get_method, resolve_params
    from swudi_lab.spectral import eigh, filter_factors, layer_operator, numerical_rank_tolerance, swudi, top_k

    fl = _load("floor")
    taus = fl.task_vectors(0, *shape, n=4, rank=3, dtype=torch.float64)
    m = get_method(method)
    ours, info = m.fn(taus, name="layer", **resolve_params(m, {}))
    torch.testing.assert_close(fl.straightforward(taus, method), ours, rtol=1e-9, atol=1e-12)
    lam = eigh(layer_operator(taus).C).values
    filt = swudi(1300.0, k=info["k"]) if method == "swudi" else top_k(k=info["k"])
    f, o = filter_factors(filt, lam, numerical_rank_tolerance(lam))
    K = info["k"]
    torch.testing.assert_close(fl.floor(taus, K, f[:K], o[:K]), ours, rtol=1e-9, atol=1e-12)
