"""Evaluation harness: accuracy with each task's head, normalized accuracy, time and memory."""

import numpy as np
import pytest
import torch

import swudi_lab  # noqa: F401
from swudi_lab.evaluate import (
    average_accuracy,
    cross_effect,
    evaluate_backbone,
    mean_std,
    measure,
    normalized_accuracy,
    own_response,
    probe_accuracy,
    recovered_gain,
    ridge_probe,
)


class ChannelMeans(torch.nn.Module):
    """Features = per-channel mean of the image: (B, 3, H, W) -> (B, 3)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def _channel_task(n=30, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = np.full((n, 8, 8, 3), 20, np.uint8)
    x[np.arange(n), :, :, y] = 230  # the bright channel is the label
    x = np.clip(x + rng.integers(0, 10, x.shape), 0, 255).astype(np.uint8)
    return x, y


def test_measure_cpu_time_and_peak():
    with measure("cpu") as m:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        a += 1
    assert m.seconds > 0
    assert m.peak_mb >= 40 if m.exact_peak else m.peak_mb >= 0
    del a


def test_measure_fills_on_exception():
    with pytest.raises(RuntimeError):
        with measure("cpu") as m:
            raise RuntimeError("boom")
    assert m.seconds >= 0 and not np.isnan(m.seconds)


def test_evaluate_backbone_perfect_and_chance():
    x, y = _channel_task()
    heads = {"chan": (torch.eye(3), torch.zeros(3))}
    acc = evaluate_backbone(ChannelMeans(), heads, {"chan": (x, y)})
    assert acc == {"chan": 100.0}
    rolled = {"chan": (torch.eye(3).roll(1, 0), None)}
    assert evaluate_backbone(ChannelMeans(), rolled, {"chan": (x, y)})["chan"] == 0.0


def test_wrong_head_count_is_a_clear_error():
    x, y = _channel_task()
    with pytest.raises(ValueError, match="classes"):
        evaluate_backbone(ChannelMeans(), {"chan": (torch.eye(3)[:2], None)}, {"chan": (x, y)})
    with pytest.raises(ValueError, match="features"):
        evaluate_backbone(ChannelMeans(), {"chan": (torch.eye(4), None)}, {"chan": (x, y)})
    with pytest.raises(ValueError, match="no head"):
        evaluate_backbone(ChannelMeans(), {"other": (torch.eye(3), None)}, {"chan": (x, y)})


def test_wrong_image_size_is_a_clear_error():
    from swudi_lab.zoo.model import BackboneConfig, make_backbone

    vit = make_backbone(BackboneConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    x = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="expects"):
        evaluate_backbone(vit, {"t": (torch.zeros(2, 32), None)}, {"t": (x, np.array([0, 1, 0, 1]))})


def test_normalized_and_average_accuracy():
    merged = {"a": 45.0, "b": 90.0}
    expert = {"a": 90.0, "b": 90.0}
    assert average_accuracy(merged) == 67.5
    assert normalized_accuracy(merged, expert) == pytest.approx(75.0)
    assert normalized_accuracy(merged, expert, per_task=True) == {"a": 50.0, "b": 100.0}
    with pytest.raises(ValueError):
        normalized_accuracy({"c": 1.0}, expert)
    mu, sd = mean_std([1.0, 2.0, 3.0])
    assert mu == 2.0 and sd == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_recovered_gain_is_zero_at_the_base_and_100_at_the_experts():
    base, expert = {"a": 40.0, "b": 20.0, "c": 50.0}, {"a": 80.0, "b": 60.0, "c": 50.0}
    assert recovered_gain(dict(base), base, expert) == 0.0
    assert recovered_gain(dict(expert), base, expert) == 100.0
    assert recovered_gain({"a": 60.0, "b": 30.0, "c": 10.0}, base, expert) == pytest.approx(37.5)  # c has no gain
    assert recovered_gain({"a": 20.0}, base, expert) == pytest.approx(-50.0)  # below the base: negative


def test_own_response_ends_at_the_base_and_the_expert_and_cross_effect_diagonal_is_the_gain(tmp_path):
    from swudi_lab.zoo import ZooConfig, build_zoo

    zoo = build_zoo(tmp_path, seed=0, config=ZooConfig.micro(), progress=False)
    base, data = zoo.base_state_dict(), zoo.test_data()
    experts = {t: zoo.expert_state_dict(t) for t in zoo.tasks}
    base_acc = evaluate_backbone(base, zoo, data)
    expert_acc = {t: evaluate_backbone(e, zoo, {t: data[t]})[t] for t, e in experts.items()}
    response = own_response(base, experts, zoo, data, alphas=(0.0, 0.5, 1.0))
    assert set(response) == set(zoo.tasks) and all(list(r) == [0.0, 0.5, 1.0] for r in response.values())
    for t, r in response.items():  # lerp is exact at both ends
        assert r[0.0] == base_acc[t] and r[1.0] == expert_acc[t]
    effect = cross_effect(base, experts, zoo, data)
    assert set(effect) == set(zoo.tasks) and all(set(row) == set(zoo.tasks) for row in effect.values())
    for t in zoo.tasks:
        assert effect[t][t] == pytest.approx(expert_acc[t] - base_acc[t], abs=1e-9)
    # an "expert" equal to the base changes nothing anywhere; base_acc passed in gives the same matrix
    same = cross_effect(base, {"copy": base}, zoo, data, base_acc=base_acc)
    assert same == {"copy": {t: 0.0 for t in zoo.tasks}}
    assert cross_effect(base, experts, zoo, data, base_acc=base_acc) == effect


def test_ridge_probe_solves_the_tikhonov_normal_equation_and_ignores_feature_units():
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(60, 5, generator=g, dtype=torch.float64), torch.arange(60) % 3
    Y = torch.nn.functional.one_hot(y, 3).double()
    for alpha in (0.0, 0.1):  # (A^T A + alpha n I) W = A^T Y
        p = ridge_probe(f, y, 3, alpha)
        a = p.design(f)
        assert (a.T @ (a @ p.weight - Y) + alpha * len(a) * p.weight).abs().max() < 1e-10
    # standardized features: a positive scale and a shift per feature change no score
    scale, shift = torch.rand(5, generator=g, dtype=torch.float64) + 0.5, torch.randn(5, generator=g, dtype=torch.float64)
    p1, p2 = ridge_probe(f, y, 3, 0.1), ridge_probe(f * scale + shift, y, 3, 0.1)
    test = torch.randn(40, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(p1.design(test) @ p1.weight, p2.design(test * scale + shift) @ p2.weight)
    with pytest.raises(ValueError, match="n_classes"):
        ridge_probe(f, y, 2)
    with pytest.raises(ValueError, match="labels"):
        ridge_probe(f, y[:50], 3)


class Blind(torch.nn.Module):
    """Features that see nothing: zeros (B, 3)."""

    def forward(self, x):
        return torch.zeros(len(x), 3)


def test_probe_accuracy_reads_what_the_features_hold():
    train, test = _channel_task(60), _channel_task(30, seed=1)
    assert probe_accuracy(ChannelMeans(), None, {"chan": train}, {"chan": test}) == {"chan": 100.0}
    # blind features: the probe keeps its constant column only and predicts one class of three
    assert probe_accuracy(Blind(), None, {"chan": train}, {"chan": test})["chan"] == pytest.approx(100 / 3)
