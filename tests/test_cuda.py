"""The CUDA path: every merge method, the streaming file merge, the memory meter and the zoo's
training loops give on a GPU what they give on the CPU. Skipped where no GPU is present (CI);
run on a CUDA machine with ``python -m pytest tests/test_cuda.py``."""

import pytest
import torch
from merge_helpers import make_checkpoints
from safetensors.torch import load_file, save_file

from swudi_lab.evaluate import evaluate_backbone, measure
from swudi_lab.merge import METHODS, merge, merge_files

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_the_cpu_result_on_cuda(method):
    base, experts = make_checkpoints(n_experts=4, seed=3)
    params = {"filter": "exponential", "kappa": 3.0} if method == "filtered" else {}  # the one method without defaults
    cpu = merge(base, experts, method, device="cpu", dtype=torch.float64, progress=False, **params)
    gpu = merge(base, experts, method, device="cuda", dtype=torch.float64, progress=False, **params)
    assert set(gpu.state_dict) == set(cpu.state_dict)
    for k, v in cpu.state_dict.items():
        g = gpu.state_dict[k]
        assert g.device.type == "cpu" and g.dtype == v.dtype, k  # results come back to the host
        torch.testing.assert_close(g, v, rtol=1e-6, atol=1e-8, msg=f"{method}: {k}")
    assert str(gpu.report.meta["device"]).startswith("cuda")


@pytest.mark.parametrize("method, params", [
    ("swudi", {"alignment_rho": 0.5, "filter_gamma": 0.98, "tikhonov_alpha": 1e-3, "consensus_power": 1.0,
               "consensus_floor": 0.2, "output_exp_time": 5.0}),
    ("swudi_a", {"rank_rule": "wudi_risk", "filter_type": "wiener", "rank_scale": 0.8}),
    ("swudi_a", {"rank_rule": "gavish_donoho_authors", "filter_type": "exponential", "t": 300.0}),
])
def test_the_authors_knobs_give_the_cpu_result_on_cuda(method, params):
    base, experts = make_checkpoints(n_experts=4, seed=3)
    cpu = merge(base, experts, method, device="cpu", dtype=torch.float64, progress=False, **params)
    gpu = merge(base, experts, method, device="cuda", dtype=torch.float64, progress=False, **params)
    for k, v in cpu.state_dict.items():
        torch.testing.assert_close(gpu.state_dict[k], v, rtol=1e-6, atol=1e-8, msg=f"{method} {params}: {k}")


def test_streaming_file_merge_on_cuda_matches_cpu(tmp_path):
    base, experts = make_checkpoints(n_experts=3, seed=5)
    save_file(base, str(tmp_path / "base.safetensors"))
    paths = []
    for i, e in enumerate(experts):
        paths.append(tmp_path / f"e{i}.safetensors")
        save_file(e, str(paths[-1]))
    for dev in ("cpu", "cuda"):
        merge_files(tmp_path / "base.safetensors", paths, tmp_path / f"{dev}.safetensors", "swudi", device=dev,
                    progress=False)
    cpu, gpu = load_file(str(tmp_path / "cpu.safetensors")), load_file(str(tmp_path / "cuda.safetensors"))
    assert set(cpu) == set(gpu)
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-4, atol=1e-5, msg=k)


def test_measure_reports_the_cuda_peak_above_entry():
    keep = torch.empty(32 * 2**20, dtype=torch.uint8, device="cuda")  # in use before: not counted
    with measure("cuda") as m:
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert m.device.startswith("cuda") and m.seconds >= 0
    assert 64 <= m.peak_mb < 66
    del keep


def test_zoo_training_and_evaluation_run_on_cuda(tmp_path):
    from swudi_lab.zoo import ZooConfig, build_zoo
    from swudi_lab.zoo.train import PretrainRecipe, pretrain

    state, info = pretrain(PretrainRecipe(n_per_class=4, n_val_per_class=2, steps=3, batch_size=8, warmup=1),
                           device="cuda", progress=False)
    assert info["device"] == "cuda" and all(v.device.type == "cpu" and torch.isfinite(v).all() for v in state.values())
    zoo = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False, device="cuda")
    base = zoo.base_state_dict()
    on_gpu = evaluate_backbone(base, zoo, device="cuda")
    on_cpu = evaluate_backbone(base, zoo, device="cpu")
    n_test = ZooConfig.micro().n_test
    for t in zoo.tasks:  # float32 on two devices: at most one test image may flip
        assert abs(on_gpu[t] - on_cpu[t]) <= 100.0 / n_test + 1e-9, t
