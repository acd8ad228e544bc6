"""The iCT formulas of Song & Dhariwal (2023), Section 3, and a short end-to-end training."""

import math

import pytest
import torch
import zoo.plugins
from zoo.diffusion import Denoiser
from zoo.nets import MLPDenoiserNet
from zoo.training import BatchNoise

import zoo_ict
from zoo_ict.loss import (
    ImprovedConsistencyTraining,
    ascending_sigmas,
    ict_num_scales,
    level_weights,
    lognormal_level_probs,
    pseudo_huber,
    pseudo_huber_c,
)
from zoo_ict.method import ICTConfig

TINY = {"hidden": 32, "num_layers": 1}


@pytest.fixture
def ict():
    """The plugin registered in-process (the installed entry point is tested in the repo's
    tests/test_example_plugin.py)."""
    zoo.plugins.reset()
    zoo.plugins.register_plugin(zoo_ict, "zoo_ict")  # a no-op where zoo-ict is installed
    yield zoo.plugins.get("methods", "ict")
    zoo.plugins.reset()


def test_pseudo_huber_c_and_limits():
    assert pseudo_huber_c(3 * 32 * 32) == pytest.approx(0.03, abs=1e-4)  # CIFAR-10: c ≈ 0.03
    assert pseudo_huber_c(2) == pytest.approx(0.00054 * math.sqrt(2))
    a, c = torch.zeros(3, 2), 0.01
    b = torch.tensor([[0.0, 0.0], [1e-4, 0.0], [3.0, 4.0]])
    d = pseudo_huber(a, b, c)
    assert d[0] == 0
    assert d[1] == pytest.approx(1e-8 / (2 * c), rel=1e-3)  # quadratic near 0: ‖·‖²/(2c)
    assert d[2] == pytest.approx(5 - c, rel=1e-5)  # linear far away: ‖·‖ − c
    assert torch.allclose(d, (b.square().sum(1) + c**2).sqrt() - c)


def test_doubling_curriculum():
    K = 400_000  # the paper's CIFAR-10 run: K' = ⌊400000 / (log2 128 + 1)⌋ = 50000
    assert ict_num_scales(0, K) == 11
    assert ict_num_scales(K, K) == 1281
    assert [ict_num_scales(k, K) for k in (49_999, 50_000, 100_000, 349_999, 350_000)] == [
        11, 21, 41, 641, 1281]
    assert ict_num_scales(7, 8, s0=10, s1=1280) == 1281  # K' = 1: doubles every iteration
    # s1/s0 not a power of two: K' = ⌊25 / (⌊log2 75⌋ + 1)⌋ = 3, and N stops at s1 + 1
    assert [ict_num_scales(k, 25, s0=2, s1=150) for k in (0, 3, 18, 21, 25)] == [
        3, 5, 129, 151, 151]


def test_lognormal_level_probabilities_are_erf_differences():
    sigmas = ascending_sigmas(11, 0.002, 80.0, 7.0)
    assert torch.all(sigmas[1:] > sigmas[:-1]) and sigmas[0] == pytest.approx(0.002)
    probs = lognormal_level_probs(sigmas, -1.1, 2.0)
    erf = [math.erf((math.log(s) + 1.1) / (math.sqrt(2) * 2.0)) for s in sigmas.tolist()]
    expected = torch.tensor([b - a for a, b in zip(erf, erf[1:], strict=False)],
                            dtype=torch.float64)
    assert torch.allclose(probs, expected / expected.sum())
    assert probs.sum() == pytest.approx(1.0) and len(probs) == 10
    # the interval holding exp(P_mean) ≈ 0.33 is likelier than either end of the grid
    mode = int(torch.searchsorted(sigmas, math.exp(-1.1))) - 1
    assert probs[mode] > max(probs[0], probs[-1])


def test_level_weights():
    sigmas = ascending_sigmas(5, 0.002, 80.0, 7.0)
    weights = level_weights(sigmas)
    assert torch.allclose(weights, 1 / torch.diff(sigmas))
    assert torch.all(weights[:-1] > weights[1:])  # smaller noise levels weigh more


def task_and_batch(s0=10, s1=1280, iterations=100):
    config = ICTConfig(dataset="toy", iterations=iterations, batch_size=256, s0=s0, s1=s1)
    torch.manual_seed(0)
    net = MLPDenoiserNet(2, **TINY)
    torch.nn.init.normal_(net.out.weight, std=0.5)
    task = ImprovedConsistencyTraining(Denoiser(net, "consistency"), config, data_dim=2)
    return task, torch.randn(256, 2) * 0.5


def test_levels_drawn_from_the_lognormal_probabilities():
    task, x = task_and_batch()
    seen = []
    task.net = lambda x, sigma: seen.append(sigma.clone()) or x
    for step in range(40):
        task.loss(task.net, x, None, BatchNoise(0, step, len(x)))
    sigmas, probs, _ = task.levels(0)
    target_levels = torch.cat(seen[0::2]).double()
    counts = torch.stack([(target_levels == s.float().double()).sum() for s in sigmas[:-1]])
    freq = counts.double() / counts.sum()
    assert counts.sum() == 40 * 256
    assert torch.allclose(freq, probs, atol=0.01)


def test_same_z_both_points_and_stopgrad_target():
    task, x = task_and_batch()
    calls = []
    inner = task.net

    def recording(xt, sigma):
        calls.append((xt.detach(), sigma.detach(), torch.is_grad_enabled()))
        return inner(xt, sigma)

    task.net = recording
    loss = task.loss(recording, x, None, BatchNoise(1, 0, len(x))).mean()
    (x_target, s_target, grad_target), (x_online, s_online, grad_online) = calls
    assert not grad_target and grad_online
    assert torch.all(s_online > s_target)
    # x_{i+1} − x = (σ_{i+1}/σ_i)·(x_i − x): both points share one z
    ratio = (s_online / s_target).unsqueeze(1)
    assert torch.allclose(x_online - x, ratio * (x_target - x), rtol=1e-4, atol=1e-5)
    # θ⁻ = stopgrad(θ): the gradient is that of the online branch against the detached target
    loss.backward()
    grads = [p.grad.clone() for p in inner.parameters()]
    inner.zero_grad()
    _, _, weights = task.levels(0)
    sigmas = task.levels(0)[0].float()
    i = torch.searchsorted(sigmas, s_target.float()).clamp(max=len(weights) - 1)
    with torch.no_grad():
        target = inner(x_target, s_target)
    manual = (weights[i].float() * pseudo_huber(inner(x_online, s_online), target, task.c)).mean()
    manual.backward()
    for g, p in zip(grads, inner.parameters(), strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    assert not hasattr(task, "target") and task.state_dict() == {"k": 0}


def test_short_training_samples_and_resumes(ict, tmp_path):
    config = ict.configure("toy", iterations=24, batch_size=128, network_kwargs=TINY,
                           checkpoint_every=12, log_every=12)
    run_dir = ict.train(config, tmp_path / "ict", progress=False)
    run = ict.load(run_dir)
    assert run.step == 24 and run.config.s0 == 10 and run.config.network == "mlp"
    one, two = ict.sample(run, 64, nfe=1), ict.sample(run, 64, nfe=2)
    assert (one.nfe, two.nfe) == (1, 2) and one.x.shape == (64, 2)
    assert torch.isfinite(two.x).all()
    # a sample does not depend on its batch (up to float rounding of batched matrix products)
    torch.testing.assert_close(ict.sample(run, 8, nfe=2, batch_size=3).x, two.x[:8],
                               rtol=1e-5, atol=1e-6)
    rows = ict.bench_rows(run_dir)
    assert [(r.label, r.nfe) for r in rows] == [("iCT", 1), ("iCT", 2)]
    with pytest.raises(ValueError, match="up to 2 steps"):
        ict.sample(run, 4, nfe=3)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["task"] == {"k": 24}
