"""Tests written to kill mutants that survived the rest of the suite (issue 16).

Each test checks the code against an independent computation — a hand-written formula, a finite
difference, a spy that records what the code did, or a statistic of many seeded draws — never
against another output of the function under test. docs/testing.md lists the mutants each one
kills and how to run the mutation tool.
"""

import math

import numpy as np
import pytest
import torch
from interrupt import Killed, kill_at
from PIL import Image
from test_cm import FixedNoise, consistency_fn
from torch import nn
from zoo_cm.loss import ConsistencyTraining, ContinuousConsistency, karras_time, l2_distance
from zoo_cm.method import CMConfig

import zoo.plugins
from zoo.data import BatchLoader, load_dataset
from zoo.data.hdf5 import read_images, write_image_batches, write_images
from zoo.diffusion import Denoiser, StackedGenerator
from zoo.diffusion.samplers import sample_edm_stochastic
from zoo.editing import edit_files
from zoo.training import Trainer, load_checkpoint

EPS, T, RHO = 0.002, 80.0, 7.0


def hand_tau(u):
    """τ(u) = (ε^{1/ρ} + u·(T^{1/ρ} − ε^{1/ρ}))^ρ, written out here (EDM Eq. 5 in continuous u)."""
    return (EPS ** (1 / RHO) + u * (T ** (1 / RHO) - EPS ** (1 / RHO))) ** RHO


def hand_grid(n):
    """The Karras grid t_i = τ(1 − i/(n−1)), i = 0..n−1, from T down to ε, in float64."""
    return torch.tensor([hand_tau(1 - i / (n - 1)) for i in range(n)], dtype=torch.float64)


def cm_config(**kw):
    return CMConfig(dataset="toy", teacher="t", **kw)


# ------------------------------------------------------------------ consistency models


@pytest.mark.parametrize("u", [0.05, 0.3, 0.6, 0.95])
def test_continuous_karras_time_derivative_is_the_finite_difference_of_tau(u):
    """τ'(u) against a central difference of τ written out here (kills: τ' without its ρ)."""
    t, dt_du = karras_time(torch.tensor([u], dtype=torch.float64), EPS, T, RHO)
    h = 1e-6
    fd = (hand_tau(u + h) - hand_tau(u - h)) / (2 * h)
    assert t.item() == pytest.approx(hand_tau(u), rel=1e-12)
    assert dt_du.item() == pytest.approx(fd, rel=1e-6)


def cd_continuous_vs_discrete(u, delta_rel):
    """(∇ of the CD∞ loss, τ'(u)·∇d(f_θ(x_t, t), sg f_θ(x_t − Δ·v, t − Δ))/Δ) at Δ = delta_rel·t,
    with v = (x_t − D_φ(x_t, t))/t the teacher's velocity and τ' a finite difference of τ, both
    computed here; the discrete pair is CD's on a grid whose spacing at t is Δ (N → ∞ as Δ → 0)."""
    f = consistency_fn(torch.float64, seed=5)
    teacher = consistency_fn(torch.float64, seed=6, parameterization="edm").requires_grad_(False)
    task = ContinuousConsistency(f, cm_config(mode="cd-cont", weighting="uniform"), l2_distance,
                                 teacher)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, dtype=torch.float64, generator=generator)
    z = torch.randn(3, 2, dtype=torch.float64, generator=generator)
    uu = torch.full((3,), u, dtype=torch.float64)
    task.loss(f, x, None, FixedNoise(u=uu, z=z)).sum().backward()
    continuous = torch.cat([p.grad.flatten() for p in f.parameters()])

    f.zero_grad()
    t = torch.full((3,), hand_tau(u), dtype=torch.float64)
    dt_du = (hand_tau(u + 1e-6) - hand_tau(u - 1e-6)) / 2e-6
    x_t = x + t[:, None] * z
    with torch.no_grad():
        v = (x_t - teacher(x_t, t)) / t[:, None]  # dx/dt = (x − D(x; t))/t, EDM Eq. 3 with σ = t
        delta = delta_rel * t
        target = f(x_t - delta[:, None] * v, t - delta)  # one Euler step of the teacher: t → t − Δ
    (l2_distance(f(x_t, t), target) / delta).sum().backward()
    discrete = dt_du * torch.cat([p.grad.flatten() for p in f.parameters()])
    return continuous, discrete


@pytest.mark.parametrize("u", [0.3, 0.7])
def test_cd_continuous_gradient_is_the_limit_of_the_discrete_cd_gradient(u):
    """The relative gap between the CD∞ gradient and the scaled discrete CD gradient shrinks
    like Δ (kills: the teacher's velocity sign flipped, τ' without its ρ factor)."""
    gaps = []
    for delta_rel in (1e-4, 1e-6):
        continuous, discrete = cd_continuous_vs_discrete(u, delta_rel)
        gaps.append(((continuous - discrete).norm() / continuous.norm()).item())
    assert gaps[1] < 1e-5  # measured: 9e-7
    assert gaps[1] < gaps[0] / 50  # first order in Δ: 100× smaller Δ, ~100× smaller gap


def test_discrete_weighting_is_evaluated_at_t_n():
    """λ(t_n)·d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x_{t_n}, t_n)) with λ = snrp1 = 1/t² + 1, the
    distance recomputed here from spied outputs and t_n from a hand-written grid
    (kills: λ evaluated at t_{n+1})."""
    f = consistency_fn(torch.float32, seed=3)
    config = cm_config(mode="ct", init="random", iterations=100, s0=10, s1=10, weighting="snrp1")
    task = ConsistencyTraining(f, config, l2_distance)
    online, target = [], []
    task.net.register_forward_hook(lambda m, a, out: online.append(out))
    task.target.register_forward_hook(lambda m, a, out: target.append(out))
    x, z, n = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 2, 5, 8])
    loss = task.loss(task.net, x, None, FixedNoise(n=n, z=z))
    grid = hand_grid(task.num_scales(0)).float()
    assert len(grid) == 10
    t_n = grid[n + 1]  # the smaller of the pair
    d = (online[0] - target[0]).square().mean(1)
    torch.testing.assert_close(loss, (1 / t_n**2 + 1) * d, rtol=1e-5, atol=0)


# ------------------------------------------------------------------ samplers


def test_stochastic_churn_adds_noise_of_variance_sigma_hat_squared_minus_sigma_squared():
    """A spy denoiser records x at its first call: x − x_T must have variance σ̂² − σ² per
    coordinate (EDM Algorithm 2 line 5), over 16 000 seeded draws (kills: σ̂ − σ instead)."""
    seen = []

    def spy(x, sigma, class_labels=None):
        seen.append((x.clone(), torch.as_tensor(sigma).clone()))
        return torch.zeros_like(x)

    n, dim, s, churn = 2000, 8, 3.0, 0.25  # one step: γ = min(S_churn/1, √2 − 1) = 0.25
    x_T = torch.full((n, dim), 1.5)
    sample_edm_stochastic(spy, x_T, torch.tensor([s, 0.0]), generator=StackedGenerator(range(n)),
                          S_churn=churn)
    x_hat, sigma_hat = seen[0]
    s_hat = s * (1 + churn)
    assert torch.allclose(sigma_hat.double(), torch.tensor(s_hat, dtype=torch.float64))
    added = (x_hat - x_T).double()
    expected_var = s_hat**2 - s**2  # 5.0625; (σ̂ − σ)² would be 0.5625
    # 16 000 N(0, v) draws: the sample variance's relative standard error is √(2/16000) ≈ 1.1 %
    assert added.var().item() == pytest.approx(expected_var, rel=0.05)
    assert abs(added.mean().item()) < 5 * math.sqrt(expected_var / added.numel())


# ------------------------------------------------------------------ data


def test_loader_draws_a_new_permutation_every_epoch_and_each_visits_every_sample_once():
    ds = load_dataset("checkerboard", n=60)
    loader = BatchLoader(ds, 20, seed=4)
    orders = []
    for epoch in range(4):
        x = torch.cat([loader.batch_at(3 * epoch + b)[0] for b in range(3)])
        index = (x[:, None, :] == ds.x[None]).all(-1).float().argmax(1)
        assert torch.equal(ds.x[index], x)  # every row found in the dataset
        assert sorted(index.tolist()) == list(range(60))  # a permutation: each sample once
        orders.append(index)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(orders[a], orders[b]), f"epochs {a} and {b} share an order"


def test_hdf5_cache_write_is_all_or_nothing(tmp_path):
    """A write that dies part-way leaves the previous cache file intact and no temporary file
    (kills: writing straight into the final path)."""
    path = tmp_path / "cache.h5"
    old = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    checksum = write_images(path, old, np.array([0, 1]), name="old")

    def dying_batches():
        yield np.full((3, 1, 4, 4), 7, np.uint8), np.array([1, 2, 3])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_image_batches(path, dying_batches(), count=6, name="new")
    cached = read_images(path, resolution=4, channels=1)
    assert cached.checksum == checksum and np.array_equal(cached.images, old)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.h5"]


# ------------------------------------------------------------------ editing


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, c_noise, class_labels=None):
        return torch.tanh(self.conv(x) + c_noise.reshape(-1, 1, 1, 1))


def test_edit_files_edits_input_i_with_seed_plus_i(tmp_path):
    """Two identical inputs edited with seed 5 differ, and the second equals that image edited
    alone with seed 6 (kills: every input seeded with SEED)."""
    torch.manual_seed(0)
    f = Denoiser(TinyNet(), "consistency").eval()
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8), np.uint8)
    folder, alone = tmp_path / "in", tmp_path / "alone"
    folder.mkdir(), alone.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(folder / name)
    Image.fromarray(pixels).save(alone / "b.png")
    options = dict(shape=(1, 8, 8), sigmas=[80.0, 5.0, 0.5], sigma_min=EPS, sigma_max=T,
                   sigma=2.0)
    with torch.no_grad():
        names, rows = edit_files(f, "stroke", folder, seed=5, **options)
        _, single = edit_files(f, "stroke", alone, seed=6, **options)
    assert names == ["a", "b"]
    assert not torch.allclose(rows[0][-1], rows[1][-1])
    torch.testing.assert_close(rows[1][-1], single[0][-1], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the trainer

TINY = dict(
    network_kwargs={"hidden": 32, "num_layers": 2},
    batch_size=32,
    lr=1e-3,
    ema_rate=0.9,
    checkpoint_every=3,
    log_every=100,
    dataset_options={"n": 500},
)


def trainer_for(run_dir, **overrides):
    edm = zoo.plugins.get("methods", "edm")
    config = edm.configure("toy", **{**TINY, **overrides})
    dataset = load_dataset(config.dataset, **config.dataset_options)
    config.method = "edm"
    return Trainer(edm.make_task(config, dataset), config, dataset, run_dir, progress=False)


def test_exact_resume_with_dropout_reseeds_every_step(tmp_path):
    """With dropout, an interrupted-and-resumed run (under another global RNG state) ends with
    the weights of the uninterrupted run: dropout masks come from (seed, step), not from the
    process's RNG history (kills: the per-step reseeding removed)."""
    dropout = {"hidden": 32, "num_layers": 2, "dropout": 0.5}
    torch.manual_seed(0)
    trainer_for(tmp_path / "straight", iterations=5, network_kwargs=dropout).fit()

    torch.manual_seed(123)
    with pytest.raises(Killed):
        trainer_for(tmp_path / "resumed", iterations=5, network_kwargs=dropout).fit(
            on_step=kill_at(4))
    assert load_checkpoint(tmp_path / "resumed")["step"] == 3
    torch.manual_seed(456)
    trainer_for(tmp_path / "resumed", iterations=5, network_kwargs=dropout).fit(resume=True)
    trainer_for(tmp_path / "plain", iterations=5).fit()

    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    plain = load_checkpoint(tmp_path / "plain")
    assert a["step"] == b["step"] == 5
    for key in a["net"]:
        torch.testing.assert_close(a["net"][key], b["net"][key], rtol=0, atol=0)
    # dropout is really active: the same run without it ends elsewhere
    assert any(not torch.equal(a["net"][k], plain["net"][k]) for k in a["net"])


def test_gradient_clipping_scales_the_raw_gradient_to_the_max_norm(tmp_path):
    """The gradient the optimiser sees is the raw gradient (captured by hooks during backward)
    times min(1, c/‖g‖), with ‖g‖ computed here (kills: clipping never applied)."""
    clip = 1e-3
    trainer = trainer_for(tmp_path, iterations=2, grad_clip=clip)
    params = list(trainer.net.parameters())
    raw, seen = {}, []
    for i, p in enumerate(params):
        p.register_hook(lambda g, i=i: raw.__setitem__(i, g.detach().clone()))
    step = trainer.optimizer.step

    def spy_step(*args, **kwargs):
        seen.append(([raw[i] for i in range(len(params))],
                     [p.grad.detach().clone() for p in params]))
        return step(*args, **kwargs)

    trainer.optimizer.step = spy_step
    trainer.fit()
    assert len(seen) == 2
    for before, after in seen:
        norm = torch.sqrt(sum(g.double().square().sum() for g in before)).item()
        assert norm > 10 * clip  # the clip binds
        scale = min(1.0, clip / (norm + 1e-6))
        for g_raw, g in zip(before, after):
            torch.testing.assert_close(g, g_raw * scale, rtol=1e-5, atol=1e-12)


def test_method_load_returns_the_ema_weights_unless_raw_is_asked_for(tmp_path):
    """The denoiser a run loads holds the checkpoint's EMA tensors (and the raw ones with
    ema=False), which differ after a few steps (kills: Method.load ignoring the EMA)."""
    edm = zoo.plugins.get("methods", "edm")
    trainer_for(tmp_path, iterations=3).fit()
    state = load_checkpoint(tmp_path)
    assert any(not torch.equal(state["ema"][k], state["net"][k]) for k in state["net"])
    for ema, part in ((True, "ema"), (False, "net")):
        loaded = edm.load(tmp_path, ema=ema).denoiser.state_dict()
        assert loaded.keys() == state[part].keys()
        assert all(torch.equal(loaded[k], state[part][k]) for k in loaded)


# ------------------------------------------------------------------ the evaluation EMA (survivors
# of scripts/mutation.sh zoo/training/ema.py)


def test_ema_beta_without_rate_or_half_life_copies_and_without_ramp_up_is_the_plain_half_life():
    from zoo.training.ema import ema_beta

    assert ema_beta(0.0, 0.0, 64) == 0.0  # no EMA: θ_ema ← θ every step
    assert ema_beta(0.0, 50.0, 128) == pytest.approx(0.5 ** (128 / 50_000), rel=1e-12)
    # a half-life of exactly one sample (ramp-up 1, one sample seen) halves per sample
    assert ema_beta(0.0, 50.0, 1, rampup=1.0, nimg=1) == pytest.approx(0.5, rel=1e-12)


def test_ema_is_frozen_and_copies_the_buffers():
    from zoo.training.ema import EMA

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(net)
    assert not any(p.requires_grad for p in ema.module.parameters())
    net(torch.randn(16, 3) * 5 + 2)  # training mode: the running statistics move
    ema.update(net, 0.9)
    for b_ema, b in zip(ema.module.buffers(), net.buffers(), strict=True):
        assert torch.equal(b_ema, b)
    assert not torch.equal(ema.module[1].running_mean, torch.zeros(4))
