"""Rectified flow (Liu, Gong & Liu 2022): the interpolation, the loss's minimiser on Gaussian
data, Euler sampling and its NFE, reflow's straight coupling, exact resume of a reflow run, and
the plugin through its entry point and ``zoo bench``."""

import json

import pytest
import torch
from click.testing import CliRunner
from zoo_rf import (
    RectifiedFlowLoss,
    ReflowPairs,
    euler_grid,
    interpolate,
    make_pairs,
    sample_rf_euler,
    velocity_target,
)

import zoo
import zoo.plugins
from zoo.cli import main
from zoo.diffusion.random import noise_stream
from zoo.diffusion.samplers import NFECounter
from zoo.training import BatchNoise, load_checkpoint

MU, S = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5  # X_1 ~ N(μ, s²I)
TINY = {"batch_size": 64, "lr_warmup": 0, "network_kwargs": {"hidden": 16, "num_layers": 1},
        "checkpoint_every": 2, "log_every": 1, "dataset_options": {"n": 512}}


class GaussianVelocity(torch.nn.Module):
    """v*(x, t) = E[X_1 − X_0 | X_t = x] for X_0 ~ N(0, I), X_1 ~ N(μ, s²I) independent.

    X_t ~ N(tμ, (t²s² + (1−t)²)I) and Cov(X_1 − X_0, X_t) = (ts² − (1−t))I, jointly Gaussian, so
    v*(x, t) = μ + (ts² − (1−t)) / (t²s² + (1−t)²) · (x − tμ): linear in x. At t = 0 it is μ − x
    (from X_0 = x), at t = 1 it is x (X_1 = x, E X_0 = 0). ``delta`` adds a perturbation."""

    def __init__(self, delta=lambda x, t: 0):
        super().__init__()
        self.delta = delta

    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        gain = (t * S**2 - (1 - t)) / (t**2 * S**2 + (1 - t) ** 2)
        return MU + gain * (x - t * MU) + self.delta(x, t)


class StraightVelocity(torch.nn.Module):
    """The velocity of the deterministic coupling X_1 = μ + s·X_0, whose paths are straight:
    X_t = tμ + (1 + t(s − 1))·X_0, so v(x, t) = μ + (s − 1)·X_0, X_0 = (x − tμ)/(1 + t(s − 1))."""

    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return MU + (S - 1) * (x - t * MU) / (1 + t * (S - 1))


def fixed_pairs(z, x1):
    pairs = ReflowPairs(None, {}, batch_size=1)
    pairs.z, pairs.x1, pairs.labels = z, x1, None
    return pairs


def test_interpolation_is_noise_at_0_data_at_1_and_moves_at_the_target_velocity():
    x0, x1 = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    assert torch.equal(interpolate(x0, x1, 0.0), x0)
    assert torch.equal(interpolate(x0, x1, 1.0), x1)
    t, h = torch.rand(8, dtype=torch.float64), 1e-6
    derivative = (interpolate(x0, x1, t + h) - interpolate(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(derivative, velocity_target(x0, x1))


def gaussian_loss(field, n=200_000):
    """Eq. (1) on N(μ, s²I) data with the same noise for every field (t ~ U[0, 1])."""
    x1 = MU + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=MU.dtype)
    return RectifiedFlowLoss(field, t_eps=0.0).loss(field, x1, None, BatchNoise(0, 0, n)).mean()


@pytest.mark.parametrize("delta", [lambda x, t: 0.1, lambda x, t: 0.1 * x,
                                   lambda x, t: 0.2 * t * (1 - t) * x.flip(1)])
def test_the_closed_form_gaussian_field_minimises_the_loss(delta):
    """loss(v* + δ) − loss(v*) = E‖δ‖² (per dimension): v* is the minimiser."""
    best, worse = gaussian_loss(GaussianVelocity()), gaussian_loss(GaussianVelocity(delta))
    n = 200_000
    x1 = MU + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=MU.dtype)
    noise = BatchNoise(0, 0, n)
    t = noise.rand().to(x1.dtype)
    x_t = interpolate(noise.randn_like(x1), x1, t)
    gap = (torch.as_tensor(delta(x_t, t[:, None]), dtype=x1.dtype) + 0 * x_t).square().mean()
    assert worse > best
    torch.testing.assert_close(worse - best, gap, rtol=0.05, atol=1e-4)


def test_euler_on_the_gaussian_field_transports_noise_to_the_data_and_one_step_gives_the_mean():
    z = torch.randn(1000, 2, dtype=torch.float64)
    # in 1-D per coordinate the flow map is monotone, hence the quantile map z ↦ μ + s·z
    torch.testing.assert_close(sample_rf_euler(GaussianVelocity(), z, euler_grid(2000)),
                               MU + S * z, atol=2e-3, rtol=0)
    # one step of 1-RF: z + v*(z, 0) = μ, the mean (its paths are not straight)
    torch.testing.assert_close(sample_rf_euler(GaussianVelocity(), z, euler_grid(1)),
                               MU.expand_as(z))


def test_one_euler_step_is_exact_on_a_straight_coupling_whose_loss_is_zero():
    z = torch.randn(500, 2, dtype=torch.float64)
    x1 = MU + S * z
    for steps in (1, 3):
        torch.testing.assert_close(sample_rf_euler(StraightVelocity(), z, euler_grid(steps)), x1)
    task = RectifiedFlowLoss(StraightVelocity(), t_eps=0.0, pairs=fixed_pairs(z, x1))
    assert task.loss(task.net, z, None, BatchNoise(0, 0, 500)).max() < 1e-20


def test_reflow_pairs_of_the_gaussian_flow_are_its_straight_coupling():
    """Reflow's coupling (Z_0, ODE(Z_0)) of the Gaussian 1-RF is X_1 = μ + s·X_0: straight."""
    field = GaussianVelocity()
    field.forward = lambda x, t, class_labels=None, f=field.forward: f(x.double(), t).float()
    z, x1 = make_pairs(field, (2,), range(100), 1000, batch_size=33)
    torch.testing.assert_close(x1.double(), MU + S * z.double(), atol=2e-3, rtol=0)
    z_again, _ = make_pairs(field, (2,), range(50, 100), 1, batch_size=7)
    assert torch.equal(z_again, z[50:])  # pair j from seed j alone, whatever the batch


def test_euler_counts_one_nfe_per_step_and_refuses_bad_grids():
    counter = NFECounter(GaussianVelocity())
    sample_rf_euler(counter, torch.zeros(4, 2, dtype=torch.float64), euler_grid(7))
    assert counter.nfe == 7
    for grid in ([1.0, 0.5], [1.0, 0.5, 0.6, 0.0], [2.0, 0.0]):
        with pytest.raises(ValueError, match="decreasing"):
            sample_rf_euler(counter, torch.zeros(1, 2), grid)
    with pytest.raises(ValueError, match=">= 1 step"):
        euler_grid(0)


@pytest.fixture(scope="module")
def method():
    zoo.plugins.reset()
    return zoo.plugins.get("methods", "rf")


@pytest.fixture(scope="module")
def teacher(method, tmp_path_factory):
    run = tmp_path_factory.mktemp("rf") / "rf"
    method.train(method.configure("toy", iterations=8, **TINY), run, progress=False)
    return run


def test_samples_count_nfe_and_do_not_depend_on_the_batch_size(method, teacher):
    run = method.load(teacher)
    for nfe in (1, 2, 5):
        samples = method.sample(run, 12, nfe=nfe, batch_size=5)
        assert samples.nfe == nfe and samples.x.shape == (12, 2)
        # the same noise; the MLP's fp32 rounding may differ between batches of 5 and 12
        torch.testing.assert_close(samples.x, method.sample(run, 12, nfe=nfe, batch_size=12).x,
                                   rtol=0, atol=1e-6)
    assert method.sample(run, 3).nfe == 100  # a 1-RF run samples its ODE by default
    assert torch.equal(method.sample(run, 12, seed=0, nfe=2).x[4:],
                       method.sample(run, 8, seed=4, nfe=2).x)


def reflow_config(method, teacher, **overrides):
    settings = {**TINY, "iterations": 6, "reflow_pairs": 96, "reflow_steps": 4, **overrides}
    return method.configure("toy", mode="reflow", teacher=str(teacher), **settings)


def test_a_reflow_run_resumed_after_a_crash_reproduces_the_uninterrupted_run(method, teacher,
                                                                             tmp_path):
    straight = method.train(reflow_config(method, teacher), tmp_path / "straight", progress=False)
    with pytest.raises(ZeroDivisionError):  # dies after step 5; the checkpoint is at step 4
        method.train(reflow_config(method, teacher), tmp_path / "crash", progress=False,
                     on_step=lambda step, _: step == 5 and 1 / 0)
    resumed = method.resume(tmp_path / "crash", progress=False, echo=lambda msg: None)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a["step"] == b["step"] == 6
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    pairs_a = load_checkpoint(straight / "reflow-pairs.pt")
    pairs_b = load_checkpoint(resumed / "reflow-pairs.pt")
    assert torch.equal(pairs_a["x1"], pairs_b["x1"]) and torch.equal(pairs_a["z"], pairs_b["z"])
    # pair j is the teacher's own reflow_steps-step sample from seed reflow_seed + j, its noise
    # from the torch stream whatever the sampling default (training data never follows it)
    config = reflow_config(method, teacher)
    with noise_stream("torch"):
        own = method.sample(method.load(teacher), 5, seed=config.reflow_seed, nfe=4).x
    torch.testing.assert_close(pairs_a["x1"][:5], own)
    # a reflowed run samples in one step by default
    assert method.sample(method.load(straight), 3).nfe == 1


def test_reflow_refuses_pairs_made_otherwise_and_a_mismatched_teacher(method, teacher, tmp_path):
    run = method.train(reflow_config(method, teacher), tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "reflow-pairs.pt").write_bytes((run / "reflow-pairs.pt").read_bytes())
    with pytest.raises(ValueError, match="reflow pairs made with"):
        method.train(reflow_config(method, teacher, reflow_steps=5), tmp_path / "b",
                     progress=False)
    with pytest.raises(ValueError, match="time_scale"):
        method.train(reflow_config(method, teacher, time_scale=1.0), tmp_path / "c",
                     progress=False)
    with pytest.raises(ValueError, match="mode="):
        method.configure("toy", mode="distil")


def test_the_plugin_is_found_through_its_entry_point():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert {"name": "rf", "distribution": zoo.DISTRIBUTION, "version": zoo.__version__,
            "hooks": ["register_methods", "register_samplers"]} in record["plugins"]
    assert record["registered"]["methods"]["rf"] == f"rf ({zoo.DISTRIBUTION})"
    assert not record["failures"]


def test_zoo_bench_trains_1rf_then_its_reflow_and_tables_both(tmp_path):
    settings = ["iterations=6", "batch_size=64", "checkpoint_every=6", "lr_warmup=0",
                'network_kwargs={"hidden": 16, "num_layers": 1}', "reflow_pairs=64",
                "reflow_steps=4"]
    args = ["bench", "--models", "rf", "--dataset", "toy", "--train-missing", "--n", "64",
            "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--no-progress", *[a for s in settings for a in ("--set", s)]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert [(r["label"], r["nfe"]) for r in rows] == (
        [("1-RF", k) for k in (1, 2, 4, 8, 16, 32, 100)] + [("2-RF", 1), ("2-RF", 2)])
    reflow = json.loads((tmp_path / "runs" / "toy" / "rf-reflow" / "config.json").read_text())
    assert reflow["mode"] == "reflow" and reflow["teacher"] == str(tmp_path / "runs/toy/rf")


class ClassVelocity(torch.nn.Module):
    """A class-conditional field: v(x, t, c) = c + 1 in every coordinate, so the exact flow moves
    a point by c + 1 and its pairs reveal the class they were made with."""

    def forward(self, x, t, class_labels=None):
        assert class_labels is not None, "a class-conditional flow needs its labels"
        return (class_labels.to(x.dtype)[:, None] + 1).expand_as(x)


def test_reflow_pairs_keep_their_class_labels_from_making_to_the_loss():
    """Class-conditional 2-RF: each pair is the teacher's sample *of its label*, draws return
    each pair with its own label, and the loss conditions on those labels (not the batch's):
    with the exact field the loss is 0, which any lost or swapped label would break."""
    seeds, labels = range(12), torch.arange(12) % 3
    z, x1 = make_pairs(ClassVelocity(), (2,), seeds, 4, labels=labels, batch_size=5)
    torch.testing.assert_close(x1 - z, (labels.float()[:, None] + 1).expand(12, 2))
    pairs = fixed_pairs(z, x1)
    pairs.labels = labels
    noise = BatchNoise(0, 0, 32)
    _, _, drawn = pairs.draw(BatchNoise(0, 0, 32), "cpu")
    i = noise.randint(0, 12)
    assert torch.equal(drawn, labels[i])
    loss = RectifiedFlowLoss(ClassVelocity(), pairs=pairs)
    batch_labels = torch.full((32,), 7)  # the data batch's labels, unused in a reflow step
    value = loss.loss(loss.net, torch.zeros(32, 2), batch_labels, BatchNoise(0, 0, 32))
    assert value.max() < 1e-12  # float rounding of the Euler sum (a wrong label errs by >= 1)
