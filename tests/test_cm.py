"""The cm plugin: what the Consistency Models paper states, checked on tiny CPU models."""

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from zoo_cm.loss import (
    ConsistencyDistillation,
    ConsistencyTraining,
    ContinuousConsistency,
    LPIPSDistance,
    ct_num_scales,
    ct_target_ema,
    karras_time,
    l1_distance,
    l2_distance,
    make_distance,
    metric_hvp,
)
from zoo_cm.method import CMConfig

from zoo.cli import main
from zoo.data import load_dataset
from zoo.diffusion import Denoiser, karras_sigmas
from zoo.diffusion.random import PhiloxGenerator
from zoo.diffusion.samplers import heun_step
from zoo.methods import Run
from zoo.metrics.w2 import wasserstein2
from zoo.nets import MLPDenoiserNet
from zoo.plugins import get
from zoo.training import load_checkpoint

TINY = '{"hidden": 32, "num_layers": 1}'


def consistency_fn(dtype=torch.float32, seed=0, parameterization="consistency"):
    """A small MLP consistency function whose output layer is not zero (F ≢ 0)."""
    torch.manual_seed(seed)
    net = MLPDenoiserNet(2, hidden=32, num_layers=2)
    torch.nn.init.normal_(net.out.weight, std=0.5)
    return Denoiser(net, parameterization).to(dtype)


class FixedNoise:
    """A BatchNoise stand-in returning given values (n, u, z)."""

    def __init__(self, n=None, u=None, z=None):
        self.n, self.u, self.z = n, u, z

    def randint(self, low, high):
        return self.n

    def rand(self):
        return self.u

    def randn_like(self, x):
        return self.z


def record_calls(module):
    """Forward hook storing (inputs, output) of every call of ``module``."""
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    return calls


def cm_config(**kw):
    return CMConfig(dataset="toy", teacher="t", **kw)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cm")


@pytest.fixture(scope="module")
def teacher(workdir):
    """A tiny EDM teacher trained for 20 iterations from the CLI."""
    run = workdir / "edm"
    result = CliRunner().invoke(main, [
        "train", "edm", "--dataset", "toy", "--iterations", "20", "--batch-size", "64",
        "--network-kwargs", TINY, "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    return run


# ------------------------------------------------------------------ the paper's definitions

def test_boundary_condition_is_exact():
    f = consistency_fn()
    x = torch.randn(16, 2) * 3
    assert torch.equal(f(x, f.sigma_min), x)
    assert not torch.allclose(f(x, 1.0), x)  # the network does act away from ε


def test_ct_schedules_match_appendix_c():
    K, s0, s1, mu0 = 800_000, 2, 150, 0.9
    assert ct_num_scales(0, K, s0, s1) == s0 == 2
    assert ct_num_scales(K, K, s0, s1) == s1 + 1 == 151
    # ⌈√(½·(151² − 4) + 4) − 1⌉ + 1 = ⌈105.78⌉ + 1
    assert ct_num_scales(K // 2, K, s0, s1) == 107
    assert ct_target_ema(0, K, s0, s1, mu0) == pytest.approx(0.9, abs=1e-12)
    assert ct_target_ema(K, K, s0, s1, mu0) == pytest.approx(math.exp(2 * math.log(0.9) / 151))
    assert ct_target_ema(K // 2, K, s0, s1, mu0) == pytest.approx(0.9 ** (2 / 107))


def test_cd_pairs_adjacent_points_target_without_gradient():
    student = consistency_fn(seed=1)
    edm = consistency_fn(seed=2, parameterization="edm").requires_grad_(False)
    task = ConsistencyDistillation(student, cm_config(num_scales=6), l2_distance, edm)
    online, target, teacher = record_calls(task.net), record_calls(task.target), record_calls(edm)
    x, z, n = torch.randn(5, 2), torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 4])
    task.loss(task.net, x, None, FixedNoise(n=n, z=z)).mean().backward()
    assert len(teacher) == 2  # Heun: two teacher evaluations

    sigmas = karras_sigmas(6).float()
    (x_next, t_next), online_out = online[0][0][:2], online[0][1]
    (x_hat, t), target_out = target[0][0][:2], target[0][1]
    assert torch.equal(t_next, sigmas[n]) and torch.equal(t, sigmas[n + 1])  # t_{n+1} > t_n
    assert torch.allclose(x_next, x + t_next[:, None] * z)
    assert torch.allclose(x_hat, heun_step(edm, x_next, t_next, t), atol=1e-6)  # one Heun step
    assert online_out.requires_grad
    assert not target_out.requires_grad and not any(out.requires_grad for _, out in teacher)
    assert all(p.grad is not None for p in task.net.parameters())
    assert all(p.grad is None for p in [*task.target.parameters(), *edm.parameters()])


def test_ct_points_share_z_and_target_ema_follows_mu_k():
    student = consistency_fn(seed=3)
    config = cm_config(mode="ct", init="random", iterations=100, s0=4, s1=20, mu0=0.9)
    task = ConsistencyTraining(student, config, l2_distance)
    online, target = record_calls(task.net), record_calls(task.target)
    x, z, n = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 2, 2])
    task.loss(task.net, x, None, FixedNoise(n=n, z=z))
    (x_next, t_next), (x_hat, t) = online[0][0][:2], target[0][0][:2]
    sigmas = karras_sigmas(ct_num_scales(0, 100, 4, 20)).float()
    assert torch.equal(t_next, sigmas[n]) and torch.equal(t, sigmas[n + 1])
    assert torch.allclose(x_next, x + t_next[:, None] * z)
    assert torch.allclose(x_hat, x + t[:, None] * z)  # the same z at both points
    # θ⁻ ← μ(k)·θ⁻ + (1 − μ(k))·θ, with k carried through the task state
    before = [p.clone() for p in task.target.parameters()]
    with torch.no_grad():
        for p in task.net.parameters():
            p.add_(1.0)
    task.after_step(0)
    mu = ct_target_ema(0, 100, 4, 20, 0.9)
    for p0, p_target, p in zip(before, task.target.parameters(), task.net.parameters()):
        assert torch.allclose(p_target, mu * p0 + (1 - mu) * p)
    assert task.state_dict()["k"] == 1 and task.num_scales(task.k) == ct_num_scales(1, 100, 4, 20)


def test_jvp_tangent_matches_float64_finite_differences():
    f = consistency_fn(torch.float64, seed=4)
    task = ContinuousConsistency(f, cm_config(mode="ct-cont", init="random"), l2_distance)
    x_t = torch.randn(6, 2, dtype=torch.float64) * 2
    t = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 40.0], dtype=torch.float64)
    v = torch.randn(6, 2, dtype=torch.float64)
    with torch.no_grad():
        out, tangent = task.tangent(x_t, t, v)
        h = 1e-6 * t[:, None]
        fd = (f(x_t + h * v, t + h[:, 0]) - f(x_t - h * v, t - h[:, 0])) / (2 * h)
    assert torch.allclose(out, f(x_t, t))
    assert torch.allclose(tangent, fd, rtol=1e-6, atol=1e-8)


def test_continuous_gradient_is_the_limit_of_the_discrete_one():
    """∇ of the CT∞ loss = τ'(u)·lim ∇d(f_θ(x + (t+Δ)z, t+Δ), sg f_θ(x + t·z, t))/Δ (λ ≡ 1)."""
    f = consistency_fn(torch.float64, seed=5)
    task = ContinuousConsistency(f, cm_config(mode="ct-cont", init="random"), l2_distance)
    x, z = torch.randn(1, 2, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    u = torch.tensor([0.6], dtype=torch.float64)
    task.loss(f, x, None, FixedNoise(u=u, z=z)).sum().backward()
    continuous = [p.grad.clone() for p in f.parameters()]

    f.zero_grad()
    t, dt_du = karras_time(u, 0.002, 80.0, 7.0)
    delta = 1e-6 * t
    with torch.no_grad():
        target = f(x + t * z, t)
    l2_distance(f(x + (t + delta) * z, t + delta), target).sum().backward()
    for g, p in zip(continuous, f.parameters()):
        assert torch.allclose(g, dt_du * p.grad / delta, rtol=1e-4, atol=1e-8)


class GroupNormNet(nn.Module):
    """F(x, c_noise) for 2D points with GroupNorm, the SongUNet's normalisation."""

    def __init__(self):
        super().__init__()
        self.inp, self.emb = nn.Linear(2, 16), nn.Linear(1, 16)
        self.norm, self.out = nn.GroupNorm(4, 16), nn.Linear(16, 2)

    def forward(self, x, noise_label, class_labels=None):
        h = self.norm(self.inp(x) + self.emb(noise_label[:, None].to(x.dtype)))
        return self.out(torch.nn.functional.silu(h))


def test_the_official_continuous_objective_refuses_layernorm_networks():
    """torch's LayerNorm gives wrong gradients through a JVP: the norm form refuses it loudly."""
    config = cm_config(mode="ct-cont", init="random", continuous_loss="norm")
    with pytest.raises(ValueError, match="LayerNorm"):
        ContinuousConsistency(consistency_fn(torch.float64), config, l2_distance)


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_the_official_continuous_objective_is_the_size_of_df_dt_through_the_jvp(distance):
    """continuous_loss="norm" (openai/consistency_models_cifar10, stopgrad=False): the value is
    λ·τ'(u)·‖df_θ/dt‖ (l2: unsquared Euclidean; l1: mean absolute), df/dt along the CT∞
    velocity z, and its gradient is the full derivative of that value in θ (central
    differences of the value), unlike the stop-gradient form's."""
    torch.manual_seed(6)
    f = Denoiser(GroupNormNet(), "consistency").double()
    config = cm_config(mode="ct-cont", init="random", continuous_loss="norm", distance=distance,
                       weighting="uniform-u")
    task = ContinuousConsistency(f, config, {"l2": l2_distance, "l1": l1_distance}[distance])
    x, z = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    u = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)

    def by_hand():
        """df/dt by reverse-mode double differentiation (torch.autograd.functional.jvp), not
        the forward mode the loss uses."""
        t, _ = karras_time(u, 0.002, 80.0, 7.0)
        x_t = x + t[:, None] * z
        _, df_dt = torch.autograd.functional.jvp(f, (x_t, t), (z, torch.ones_like(t)))
        if distance == "l2":
            return df_dt.square().sum(1).sqrt()  # λ·τ' = 1 under uniform-u
        return df_dt.abs().mean(1)

    value = task.loss(f, x, None, FixedNoise(u=u, z=z))
    with torch.no_grad():
        assert torch.allclose(value, by_hand(), rtol=1e-6)
    value.sum().backward()
    weight = f.net.inp.weight
    grad, eps = weight.grad[0, 0].item(), 1e-5
    with torch.no_grad():
        weight[0, 0] += eps
        up = by_hand().sum().item()
        weight[0, 0] -= 2 * eps
        down = by_hand().sum().item()
        weight[0, 0] += eps
    assert grad == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)


def test_the_cifar10_continuous_presets_take_the_official_objective():
    cm = get("methods", "cm")
    # launch.sh:36 (CD∞: stopgrad False, the norm through the JVP); :65 (CT∞: stopgrad True)
    assert cm.configure("cifar10", mode="cd-cont").continuous_loss == "norm"
    assert cm.configure("cifar10", mode="ct-cont").continuous_loss == "stopgrad"
    for mode in ("cd-cont", "ct-cont"):
        assert cm.configure("toy", mode=mode).continuous_loss == "stopgrad"
    assert cm.configure("toy", mode="ct-cont", distance="l1",
                        continuous_loss="norm").distance == "l1"


def test_distances_of_an_image_with_itself_are_zero():
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    lpips = LPIPSDistance(pnet_rand=True)
    for d in (l2_distance, l1_distance, lpips):
        assert torch.equal(d(x, x), torch.zeros(1))
        assert (d(x, -x) > 0).all()
    v = torch.randn(2, 2)
    assert torch.allclose(metric_hvp(l2_distance, torch.randn(2, 2), v), v)  # G = 2I/D, D = 2
    v = torch.randn_like(x)  # LPIPS's Hessian at x = y: positive semi-definite, and linear in v
    gv, g2v = metric_hvp(lpips, x, v), metric_hvp(lpips, x, 2 * v)
    assert (gv * v).sum() >= 0 and torch.allclose(g2v, 2 * gv, rtol=1e-3, atol=1e-7)


def test_lpips_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"vgg16-\w+\.pth"):
        LPIPSDistance()
    with pytest.raises(ValueError, match="2D points"):
        make_distance("lpips", "points")


def test_settings_are_checked():
    cm = get("methods", "cm")
    with pytest.raises(ValueError, match="target-ema 0"):
        cm.configure("toy", mode="cd-cont", target_ema=0.5)
    with pytest.raises(ValueError, match="distance l2 or lpips"):
        cm.configure("toy", mode="ct-cont", distance="l1")
    with pytest.raises(ValueError, match="mode"):
        cm.configure("toy", mode="cdx")
    with pytest.raises(ValueError, match="unknown CMConfig settings: nope"):
        cm.configure("toy", nope=1)


def test_cifar10_presets_are_the_papers():
    cm = get("methods", "cm")
    cd, ct = cm.configure("cifar10", mode="cd"), cm.configure("cifar10", mode="ct")
    for c in (cd, ct):
        assert (c.batch_size, c.iterations, c.optimizer, c.distance, c.ema_rate) == (
            512, 800_000, "radam", "lpips", 0.9999)
    # launch.sh's commands of the released runs (CT's overrides its config's 2e-4), Table 3
    assert (cd.lr, ct.lr) == (4e-4, 4e-4)
    assert (cd.num_scales, cd.target_ema, cd.solver, cd.init) == (18, 0.0, "heun", "teacher")
    assert (ct.s0, ct.s1, ct.mu0, ct.init) == (2, 150, 0.9, "random")
    assert cm.run_name(ct) == "cm-ct" and cd.teacher == str(Path("runs/cifar10/edm"))


# ------------------------------------------------------------------ sampling

def toy_run(denoiser):
    config = cm_config(sample_sigmas="80,0.8")
    return Run(Path("."), config, denoiser, {"kind": "points", "shape": [2]}, 0)


def test_multistep_with_one_sigma_is_one_step_sampling():
    f = consistency_fn(seed=6).eval()
    cm, run = get("methods", "cm"), toy_run(f)
    one = cm.sample(run, 5, seed=3, nfe=1)
    explicit = cm.sample(run, 5, seed=3, sigmas="80")
    with torch.no_grad():
        z = PhiloxGenerator(range(3, 8)).randn([2])  # the default per-sample stream
        direct = f(80.0 * z, 80.0)
    assert one.nfe == explicit.nfe == 1
    assert torch.equal(one.x, explicit.x) and torch.allclose(one.x, direct)
    two = cm.sample(run, 5, seed=3, nfe=2)
    assert two.nfe == 2 and two.info["sigmas"] == [80.0, 0.8]
    with pytest.raises(ValueError, match="--sigmas"):
        cm.sample(run, 5, nfe=3)


def test_samples_do_not_depend_on_batch_size():
    cm, run = get("methods", "cm"), toy_run(consistency_fn(seed=7).eval())
    a = cm.sample(run, 7, seed=11, sigmas="80,2,0.3", batch_size=7)
    b = cm.sample(run, 7, seed=11, sigmas="80,2,0.3", batch_size=3)
    assert torch.allclose(a.x, b.x, atol=1e-6)


# ------------------------------------------------------------------ end to end, from the CLI

def test_cli_train_cd_ct_and_sample(workdir, teacher, monkeypatch):
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    common = ["--dataset", "toy", "--batch-size", "64", "--no-progress"]
    # CT from N = 10 scales: from the default N = 2 it first learns f(x, σ_max) = E[x], which the
    # untrained f = c_skip·x ≈ 0 already is, and its samples would not move in 60 steps
    result = runner.invoke(main, ["train", "cm", "--mode", "ct", "--network-kwargs", TINY,
                                  "--iterations", "60", "--s0", "10", "--s1", "20", *common])
    assert result.exit_code == 0, result.output
    for mode, iterations in (("cd", "20"), ("cd-cont", "60")):
        result = runner.invoke(main, ["train", "cm", "--mode", mode, "--teacher", str(teacher),
                                      "--iterations", iterations, *common])
        assert result.exit_code == 0, result.output
    # Training has to show in the samples: one-step W2 (1024 samples, raw weights, the EMA has
    # barely moved in 60 steps) of the trained student against its step-0 weights (the
    # checkpoint the trainer writes before the first step, kept as checkpoint-prev.pt). Measured
    # over training seeds 0-4: CT 0.658-0.667 against 0.817 (ratio 0.81-0.82), CD∞ 0.384-0.415
    # against 0.815 (its step 0 is the 20-step teacher; ratio 0.47-0.51); training off: 1.
    cm = get("methods", "cm")
    reference = load_dataset("toy").sample_true(1024, 0)
    for run, ratio in (("cm-ct", 0.9), ("cm-cd-cont", 0.7)):
        run_dir = workdir / "runs/toy" / run
        initial = cm.load(run_dir / "checkpoint-prev.pt", ema=False)
        assert initial.step == 0
        w2 = [wasserstein2(cm.sample(r, 1024, seed=0).x, reference)
              for r in (cm.load(run_dir, ema=False), initial)]
        assert w2[0] < ratio * w2[1], (run, w2)
    state = load_checkpoint(workdir / "runs/toy/cm-cd")
    teacher_state = load_checkpoint(teacher)
    assert set(state["net"]) == set(teacher_state["net"])  # the student only, no teacher inside
    assert state["task"]["teacher"] == {"path": str(teacher), "step": 20,
                                        "checksum": load_dataset("toy").checksum}
    assert state["config"]["network_kwargs"] == teacher_state["config"]["network_kwargs"]
    for nfe in ("1", "2"):
        out = workdir / f"cd{nfe}.png"
        result = runner.invoke(main, ["sample", "cm", "--run", "runs/toy/cm-cd", "--nfe", nfe,
                                      "--n", "16", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"NFE {nfe}" in result.output and out.exists()
    rows = get("methods", "cm").bench_rows(workdir / "runs/toy/cm-cd")
    assert [(r.label, r.nfe) for r in rows] == [("CD (L2)", 1), ("CD (L2)", 2)]


class Stop(Exception):
    pass


def test_resume_is_exact(workdir):
    """The target network θ⁻ and the iteration k of the CT schedules go through checkpoints."""
    cm = get("methods", "cm")
    config = cm.configure("toy", mode="ct", iterations=8, batch_size=32, s1=10,
                          checkpoint_every=4, network_kwargs={"hidden": 16, "num_layers": 1})

    def stop_at_4(step, loss):
        if step == 4:
            raise Stop

    straight = cm.train(config, workdir / "straight", progress=False)
    with pytest.raises(Stop):
        cm.train(config, workdir / "resumed", progress=False, on_step=stop_at_4)
    cm.train(config, workdir / "resumed", resume=True, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(workdir / "resumed")
    assert a["task"]["k"] == b["task"]["k"] == 8
    for key in ("net", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a["task"]["target"][k], b["task"]["target"][k]) for k in a["net"])


def test_teacher_trained_on_other_data_is_refused(workdir, teacher):
    result = CliRunner().invoke(main, [
        "train", "cm", "--mode", "cd", "--dataset", "gmm", "--teacher", str(teacher),
        "--iterations", "2", "--run-dir", str(workdir / "wrong"), "--no-progress"])
    assert result.exit_code == 1 and "trained on other data" in result.output
    result = CliRunner().invoke(main, [
        "train", "cm", "--mode", "cd", "--teacher", str(workdir / "nothing"),
        "--iterations", "2", "--run-dir", str(workdir / "wrong"), "--no-progress"])
    assert result.exit_code == 1 and "zoo train edm" in result.output
