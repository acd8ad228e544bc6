"""MeanFlow (Geng et al. 2025): the MeanFlow identity at the closed-form average velocity of
Gaussian data, the JVP against finite differences, r = t as flow matching, sampling (NFE,
batch independence, the data distribution in one step), a short run, discovery and the bench."""

import json
import math
from importlib import metadata

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from zoo_meanflow import (
    MeanFlowNet,
    adaptive_loss,
    meanflow_target,
    sample_meanflow,
    sample_times,
)

import zoo.plugins
from zoo.cli import main
from zoo.diffusion.samplers import run_sampler
from zoo.methods import Run
from zoo.nets import build_network
from zoo.training import BatchNoise

TINY_MLP = {"hidden": 16, "num_layers": 1}


class GaussianMeanFlow(nn.Module):
    """The exact fields of data N(μ, Σ) on the path z_t = (1 − t)·x + t·ε: p_t = N(m_t, C_t)
    with m_t = (1 − t)·μ and C_t = (1 − t)²·Σ + t²·I (in Σ's eigenbasis Q: S_t² = (1 − t)²·λ +
    t²), the flow map z_r = m_r + Q·diag(S_r/S_t)·Qᵀ·(z_t − m_t), the velocity
    v = −μ + Q·diag(S_t'/S_t)·Qᵀ·(z − m_t) and the average velocity u = (z_t − z_r)/(t − r)."""

    def __init__(self, mu, cov):
        super().__init__()
        lam, q = torch.linalg.eigh(cov)
        self.register_buffer("mu", mu)
        self.register_buffer("lam", lam)
        self.register_buffer("q", q)

    def _std(self, t):
        return ((1 - t)[:, None] ** 2 * self.lam + t[:, None] ** 2).sqrt()

    def _times(self, s, z):
        return torch.as_tensor(s, dtype=z.dtype).expand(z.shape[0])

    def flow(self, z, t, r):
        t, r = self._times(t, z), self._times(r, z)
        centred = (z - (1 - t)[:, None] * self.mu) @ self.q
        return (1 - r)[:, None] * self.mu + (centred * self._std(r) / self._std(t)) @ self.q.T

    def velocity(self, z, t):
        t = self._times(t, z)
        std = self._std(t)
        d_std = ((t - 1)[:, None] * self.lam + t[:, None]) / std
        centred = (z - (1 - t)[:, None] * self.mu) @ self.q
        return -self.mu + (centred * d_std / std) @ self.q.T

    def forward(self, z, times, class_labels=None):
        r, t = (self._times(s, z) for s in times)
        return (z - self.flow(z, t, r)) / (t - r)[:, None]


def gaussian():
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.6], [-0.3, 0.5]], dtype=torch.float64)
    return GaussianMeanFlow(mu, a @ a.T)


def random_times(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    return t * torch.rand(n, generator=g, dtype=torch.float64), t  # r < t


def test_closed_form_is_the_average_velocity_and_satisfies_the_identity():
    field = gaussian()
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    r, t = random_times(6)
    # u is the time average of v along the trajectory through z_t (Eq. 3), by the midpoint rule
    k = 2000
    taus = (r[:, None] + (t - r)[:, None] * (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    z_k, t_k, taus = z.repeat_interleave(k, 0), t.repeat_interleave(k), taus.flatten()
    mean_v = field.velocity(field.flow(z_k, t_k, taus), taus).view(6, k, 2).mean(1)
    u = field(z, (r, t))
    torch.testing.assert_close(u, mean_v, rtol=0, atol=1e-6)
    # the loss's JVP target u_tgt = v − (t − r)·du/dt equals the true u: the loss is zero there
    u_jvp, target = meanflow_target(field, z, r, t, field.velocity(z, t))
    torch.testing.assert_close(u_jvp, u, rtol=0, atol=1e-12)
    torch.testing.assert_close(target, u, rtol=0, atol=1e-12)
    assert float(adaptive_loss(u - target, 1.0, 1e-3).max()) < 1e-20


def tiny_net(name, shape):
    kwargs = TINY_MLP if name == "mlp" else {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MeanFlowNet(build_network(name, shape, **kwargs), time_scale=3.0).double()
        for p in net.parameters():  # a non-trivial function (the output layers start at 0)
            p.data += 0.1 * torch.randn_like(p)
    return net


# The U-Net's attention logits are float32 (songunet.py): a coarser step and tolerance there.
@pytest.mark.parametrize("name, shape, h, atol", [("mlp", (2,), 1e-5, 1e-7),
                                                  ("ddpmpp-small", (1, 8, 8), 1e-3, 1e-4)])
def test_jvp_total_derivative_equals_finite_difference_along_the_trajectory(name, shape, h,
                                                                             atol):
    net = tiny_net(name, shape)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, *shape, dtype=torch.float64, generator=g)
    v = torch.randn(3, *shape, dtype=torch.float64, generator=g)
    r, t = random_times(3)
    _, target = meanflow_target(net, z, r, t, v)
    du_dt = (v - target) / (t - r).view(-1, *[1] * len(shape))
    # d/dt u(z + τ·v, r, t + τ) at τ = 0, central difference
    fd = (net(z + h * v, (r, t + h)) - net(z - h * v, (r, t - h))) / (2 * h)
    torch.testing.assert_close(du_dt, fd, rtol=0, atol=atol)


def test_time_sampler_orders_the_times_and_keeps_the_ratio():
    noise = BatchNoise(0, 0, 20_000)
    r, t = sample_times(noise, -0.4, 1.0, 0.25)
    assert bool((r <= t).all()) and bool((r >= 0).all()) and bool((t <= 1).all())
    assert abs(float((r < t).double().mean()) - 0.25) < 0.015
    r, t = sample_times(BatchNoise(0, 0, 100), -0.4, 1.0, 0.0)
    assert torch.equal(r, t)


def meanflow():
    return zoo.plugins.get("methods", "meanflow")


def test_r_equal_t_reduces_the_loss_to_flow_matching():
    method = meanflow()
    config = method.configure("toy", ratio=0.0, norm_p=0.0, network_kwargs=TINY_MLP)
    task = method.make_task(config, type("D", (), {"shape": (2,)}))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    loss = task.loss(task.net, x, None, BatchNoise(0, 5, 32))
    noise = BatchNoise(0, 5, 32)  # the same draws, by hand: ‖u_θ(z_t, t, t) − (ε − x)‖²
    _, t = sample_times(noise, config.p_mean, config.p_std, 0.0)
    eps = noise.randn_like(x)
    u = task.net(x + t[:, None] * (eps - x), (t, t))
    torch.testing.assert_close(loss, (u - (eps - x)).square().sum(1))
    loss.mean().backward()  # the gradient reaches the network
    assert all(p.grad is not None for p in task.net.parameters())


def test_adaptive_weight_scales_the_gradient_not_the_value():
    delta = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    loss = adaptive_loss(delta, 1.0, 1e-3)
    torch.testing.assert_close(loss, torch.tensor([25.0, 1.0]))  # the value: ‖Δ‖²
    loss.sum().backward()  # the gradient: 2Δ/(‖Δ‖² + c)
    torch.testing.assert_close(delta.grad, 2 * delta.detach() / torch.tensor([[25.001], [1.001]]))


def toy_run(denoiser):
    config = meanflow().configure("toy", network_kwargs=TINY_MLP)
    record = {"name": "toy", "checksum": "", "shape": [2], "kind": "points"}
    return Run(None, config, denoiser, record, 0)


@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_nfe_is_counted_exactly_and_samples_do_not_depend_on_the_batch_size(nfe):
    run = toy_run(tiny_net("mlp", (2,)).float().eval())
    a = meanflow().sample(run, 7, seed=3, batch_size=7, nfe=nfe)
    b = meanflow().sample(run, 7, seed=3, batch_size=3, nfe=nfe)
    assert a.nfe == b.nfe == nfe and a.info["times"][0] == 1 and a.info["times"][-1] == 0
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-6)  # matmul blocking only
    _, counted = run_sampler(sample_meanflow, run.denoiser, torch.zeros(5, 2),
                             a.info["times"])
    assert counted == nfe


def test_one_step_on_the_closed_form_reproduces_the_data_distribution():
    field = gaussian()
    one = meanflow().sample(toy_run(field), 20_000, batch_size=5000, nfe=1).x.double()
    mu, cov = field.mu, field.q @ torch.diag(field.lam) @ field.q.T
    torch.testing.assert_close(one.mean(0), mu, rtol=0, atol=0.03)
    torch.testing.assert_close(one.T.cov(), cov, rtol=0, atol=0.05)
    # the exact average velocity composes: k steps land where one step does (Eq. 12)
    two = meanflow().sample(toy_run(field), 50, nfe=2).x.double()
    torch.testing.assert_close(two, one[:50], rtol=0, atol=1e-5)


def test_a_short_toy_run_lowers_the_loss(tmp_path):
    method = meanflow()
    config = method.configure("toy", iterations=80, batch_size=128, lr_warmup=0,
                              network_kwargs={"hidden": 32, "num_layers": 1}, log_every=10,
                              checkpoint_every=80)
    run_dir = method.train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < 0.9 * sum(losses[:2])  # measured: 4.96 -> 4.12


def test_wrapper_refuses_a_network_without_a_noise_embedding():
    with pytest.raises(ValueError, match="map_noise"):
        MeanFlowNet(nn.Linear(2, 2))


def test_plugin_comes_through_its_entry_point():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="zoo")}
    assert points["meanflow"] == "zoo_meanflow"
    assert "meanflow" in zoo.plugins.registry("methods").names()
    assert "zoo_meanflow" not in [f.name for f in zoo.plugins.failures()]


def test_zoo_bench_trains_and_tables_meanflow(tmp_path):
    sets = ["iterations=20", "batch_size=64", "lr_warmup=0", "checkpoint_every=20",
            "log_every=10", json.dumps(TINY_MLP).join(["network_kwargs=", ""])]
    result = CliRunner().invoke(main, [
        "bench", "--models", "meanflow", "--dataset", "toy", "--train-missing", "--runs-root",
        str(tmp_path / "runs"), "--n", "64", "--batch-size", "32", "--out", str(tmp_path / "out"),
        "--no-progress", *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert [(r["method"], r["label"], r["nfe"]) for r in rows] == [
        ("meanflow", "MeanFlow", 1), ("meanflow", "MeanFlow", 2)]
    assert all(math.isfinite(r["metrics"]["W2"]) for r in rows)


def test_resuming_through_the_trainer_refuses_another_time_scale(tmp_path):
    """Trainer.restore (the Python API's resume) checks the method's own run-defining settings,
    not only the shared ones: a MeanFlow run resumed with another time_scale is refused."""
    from zoo.data import load_dataset
    from zoo.training import CheckpointError, Trainer

    method = meanflow()
    settings = dict(iterations=2, batch_size=32, lr_warmup=0, checkpoint_every=2,
                    network_kwargs={"hidden": 16, "num_layers": 1})
    run_dir = method.train(method.configure("toy", **settings), tmp_path / "run", progress=False)
    config = method.configure("toy", **{**settings, "iterations": 4, "time_scale": 1.0})
    config.method = "meanflow"
    assert config.time_scale != load_checkpoint_config(run_dir)["time_scale"]
    data = load_dataset("toy", **config.dataset_options)
    trainer = Trainer(method.make_task(config, data), config, data, run_dir, progress=False)
    with pytest.raises(CheckpointError, match="time_scale="):
        trainer.fit(resume=True)


def load_checkpoint_config(run_dir):
    from zoo.training import load_checkpoint

    return load_checkpoint(run_dir)["config"]
