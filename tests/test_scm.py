"""sCM (Lu & Song 2024): TrigFlow ↔ EDM, the teacher's PF-ODE in TrigFlow time, the boundary
condition, the JVP tangent against finite differences, the tangent and the gradient at the
closed-form consistency function of Gaussian data, the surrogate's gradient against Eq. (2),
tangent normalisation and warm-up, the adaptive weight's optimum, sampling NFE, a short toy run
and the bench, bad inputs."""

import json
import math
from importlib import metadata

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from zoo_scm import (
    AdaptiveWeight,
    SCMConfig,
    SCMLoss,
    TrigFlowConsistency,
    adaptive_weighted_loss,
    edm_from_trigflow,
    normalize_tangent,
    sample_times,
    scm_tangent,
    tangent_warmup,
    teacher_velocity,
    trigflow_from_edm,
)

import zoo.plugins
from zoo.cli import main
from zoo.data import load_dataset
from zoo.diffusion import Denoiser
from zoo.diffusion.precond import ode_derivative
from zoo.methods import Run
from zoo.metrics import wasserstein2
from zoo.nets import build_network
from zoo.training import BatchNoise, load_checkpoint

TINY = {"hidden": 32, "num_layers": 1}
SD = 0.5


def scm():
    return zoo.plugins.get("methods", "scm")


def random_mlp(seed=0, **kw):
    """A tiny MLP with a random (not zero) output layer, so that F is not identically 0."""
    torch.manual_seed(seed)
    net = build_network("mlp", (2,), **{**TINY, **kw})
    nn.init.normal_(net.out.weight, std=0.5)
    return net.double()


# ------------------------------------------------------------------ TrigFlow and EDM (Eq. 30)

def test_trigflow_edm_conversions_match_a_hand_computation():
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
    # σ = σ_d: t = π/4, x_t = x/√2; σ = σ_d·√3: t = π/3, x_t = x/2
    x_t, t = trigflow_from_edm(x, torch.tensor([SD, SD * 3**0.5], dtype=torch.float64), SD)
    torch.testing.assert_close(t, torch.tensor([math.pi / 4, math.pi / 3], dtype=torch.float64))
    torch.testing.assert_close(x_t, x * torch.tensor([[2**-0.5], [0.5]], dtype=torch.float64))
    x_back, sigma = edm_from_trigflow(x_t, t, SD)
    torch.testing.assert_close(sigma, torch.tensor([SD, SD * 3**0.5], dtype=torch.float64))
    torch.testing.assert_close(x_back, x)


def test_teacher_velocity_is_the_edm_pf_ode_by_the_chain_rule():
    denoiser = Denoiser(random_mlp(), "edm", sigma_data=SD)
    torch.manual_seed(1)
    x_t, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.2
    x_sigma, sigma = x_t / t.cos()[:, None], SD * t.tan()
    # x_t = cos(t)·x_σ(σ(t)): dx_t/dt = −sin t·x_σ + cos t·σ'(t)·dx_σ/dσ, σ'(t) = σ_d/cos² t
    expected = (-t.sin()[:, None] * x_sigma + (SD / t.cos())[:, None]
                * ode_derivative(denoiser(x_sigma, sigma), x_sigma, sigma))
    torch.testing.assert_close(teacher_velocity(denoiser, x_t, t, SD), expected)
    # F ≡ 0 is the exact denoiser of N(0, σ_d²) data, whose TrigFlow marginals do not move
    zero = Denoiser(build_network("mlp", (2,), **TINY).double(), "edm", sigma_data=SD)
    torch.testing.assert_close(teacher_velocity(zero, x_t, t, SD), torch.zeros_like(x_t))


def test_a_student_from_the_teacher_is_the_teacher_denoiser_and_f_x_0_is_x():
    net = random_mlp()
    teacher = Denoiser(net, "edm", sigma_data=SD)
    student = TrigFlowConsistency(net, SD, "edm")
    x, sigma = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0])
    torch.testing.assert_close(student(x, sigma.double()), teacher(x, sigma.double()))
    for label in ("edm", "trigflow"):
        model = TrigFlowConsistency(random_mlp(), SD, label)
        assert torch.equal(model(x, 0.0), x) and torch.equal(model.consistency(x, 0.0), x)


# ------------------------------------------------------------------ the tangent

@pytest.mark.parametrize("label", ["edm", "trigflow"])
@pytest.mark.parametrize("name,shape", [("mlp", (2,)), ("ddpmpp-small", (1, 8, 8))])
def test_jvp_tangent_equals_a_central_finite_difference(label, name, shape):
    torch.manual_seed(0)
    kwargs = TINY if name == "mlp" else {"model_channels": 8}
    model = TrigFlowConsistency(build_network(name, shape, **kwargs).double(), SD, label)
    if name == "mlp":
        nn.init.normal_(model.net.out.weight, std=0.5)
    x_t, v = torch.randn(3, *shape, dtype=torch.float64), torch.randn(3, *shape).double()
    t = torch.tensor([0.05, 0.8, 1.5], dtype=torch.float64)
    F, g = scm_tangent(model.velocity_field, x_t, t, v, SD, r=1.0)
    h = 1e-6
    shift = lambda s: model.velocity_field(x_t + s * h * v, t + s * h)  # noqa: E731
    dF = (shift(1) - shift(-1)) / (2 * h)
    ct, st = (f(t).view(-1, *[1] * len(shape)) for f in (torch.cos, torch.sin))
    expected = -ct**2 * (SD * F - v) - ct * st * (x_t + SD * dF)
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-8)


class GaussianTrigFlow(nn.Module):
    """Data N(μ, diag(s²)) in TrigFlow: x_t ~ N(cos t·μ, diag(S_t²)), S_t² = cos² t·s² +
    sin² t·σ_d². The PF-ODE keeps (x_t − cos t·μ)/S_t fixed, so its velocity is
    v*(x_t, t) = −sin t·μ + (x_t − cos t·μ)·S_t'/S_t and its consistency function
    f*(x_t, t) = μ + (x_t − cos t·μ)·s/S_t; F* = (cos t·x_t − f*)/(σ_d·sin t) (Eq. 5)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def _std(self, t):
        return ((t.cos()[:, None] * self.s) ** 2 + (t.sin()[:, None] * SD) ** 2).sqrt()

    def consistency(self, x_t, t):
        return self.mu + (x_t - t.cos()[:, None] * self.mu) * self.s / self._std(t)

    def velocity_field(self, x_t, t):
        return (t.cos()[:, None] * x_t - self.consistency(x_t, t)) / (SD * t.sin()[:, None])

    def ode_velocity(self, x_t, t):
        std = self._std(t)
        d_std = (t.sin() * t.cos())[:, None] * (SD**2 - self.s**2) / std
        return -t.sin()[:, None] * self.mu + (x_t - t.cos()[:, None] * self.mu) * d_std / std


GAUSS = GaussianTrigFlow(torch.tensor([0.7, -0.3], dtype=torch.float64),
                         torch.tensor([0.2, 0.9], dtype=torch.float64))


def test_at_the_closed_form_the_scd_tangent_vanishes():
    """sCD with the exact teacher: the exact consistency function has df/dt = 0 along the
    PF-ODE, so g = cos t·df/dt = 0 (and a 10 % wrong F does not give 0)."""
    torch.manual_seed(0)
    x_t, t = torch.randn(50, 2, dtype=torch.float64), torch.rand(50, dtype=torch.float64) + 0.05
    v = GAUSS.ode_velocity(x_t, t)
    _, g = scm_tangent(GAUSS.velocity_field, x_t, t, v, SD, r=1.0)
    assert g.abs().max() < 1e-12
    _, wrong = scm_tangent(lambda y, s: 0.9 * GAUSS.velocity_field(y, s), x_t, t, v, SD, r=1.0)
    assert wrong.abs().max() > 1e-2


@pytest.mark.parametrize("c", [0.0, 0.1])
def test_at_the_closed_form_the_expected_sct_gradient_vanishes(c):
    """sCT: dx_t/dt = cos t·z − sin t·x_0 is unbiased for the PF-ODE and g is affine in it, so
    E[g·h(x_t)] = 0 for any h (the gradient of a model F_θ(x_t) vanishes in expectation at F*);
    normalised g too (g given x_t is symmetric about 0). Checked for h = 1 and h = x_t within 5
    standard errors of the mean, and a 10 % wrong F is rejected by a wide margin."""
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = GAUSS.mu + GAUSS.s * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    z = SD * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    x_t = t.cos()[:, None] * x0 + t.sin()[:, None] * z
    v = t.cos()[:, None] * z - t.sin()[:, None] * x0

    def zscores(field):
        _, g = scm_tangent(field, x_t, t, v, SD, r=1.0)
        g = normalize_tangent(g, c)
        products = torch.cat([g, g * x_t[:, :1], g * x_t[:, 1:]], 1)
        return (products.mean(0) / (products.std(0) / n**0.5)).abs()

    assert zscores(GAUSS.velocity_field).max() < 5
    assert zscores(lambda y, s: 0.9 * GAUSS.velocity_field(y, s)).max() > 50


def test_the_surrogate_gradient_is_the_continuous_consistency_gradient():
    """Without normalisation and with r = 1, the loss's gradient in θ is
    −(2/D)·e^w·cos t·(df_θ⁻/dt)ᵀ·∂F_θ/∂θ = (2/D)·e^w·∇θ[w(t)·f_θᵀ·df_θ⁻/dt] with the prior
    weighting w(t) = 1/(σ_d·tan t) (Eq. 2, Sec. 4.2), df/dt by a central difference of f along
    the sCT trajectory (x_t + h·dx_t/dt, t + h)."""
    method = scm()
    config = SCMConfig(dataset="toy", init="random", time_label="trigflow", tangent_norm=0.0,
                       tangent_warmup=0, batch_size=8, network_kwargs=TINY)
    torch.manual_seed(0)
    model = method.build_denoiser(config, (2,)).double()
    nn.init.normal_(model.net.out.weight, std=0.5)
    nn.init.normal_(model.adaptive_weight.linear.weight, std=0.3)
    loss_task = SCMLoss(model, config)
    x = torch.randn(8, 2, dtype=torch.float64)
    noise = BatchNoise(0, 0, 8)
    loss = loss_task.loss(model, x, None, noise).sum()
    got = torch.autograd.grad(loss, list(model.net.parameters()))

    noise = BatchNoise(0, 0, 8)  # the same draws, in the loss's order
    t = sample_times(noise, config.p_mean, config.p_std, SD).double()
    z = noise.randn_like(x) * SD
    ct, st = t.cos()[:, None], t.sin()[:, None]
    x_t, v = ct * x + st * z, ct * z - st * x
    h = 1e-6
    with torch.no_grad():
        df = (model.consistency(x_t + h * v, t + h)
              - model.consistency(x_t - h * v, t - h)) / (2 * h)
        w = model.adaptive_weight(t)
    f = model.consistency(x_t, t)  # ∂f/∂θ = −σ_d·sin t·∂F/∂θ
    prior = 1 / (SD * t.tan())
    objective = 2 / x.shape[1] * (w.exp() * prior)[:, None] * f * df
    expected = torch.autograd.grad(objective.sum(), list(model.net.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_tangent_normalisation_and_warmup():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, 0.4]])
    out = normalize_tangent(g, 0.1)
    torch.testing.assert_close(out.norm(dim=1), torch.tensor([5 / 5.1, 0.0, 0.5 / 0.6]))
    torch.testing.assert_close(out[0] / out[0].norm(), g[0] / 5)  # the direction is kept
    assert torch.equal(normalize_tangent(g, 0.0), g)
    assert [tangent_warmup(k, 100) for k in (0, 50, 100, 200)] == [0.0, 0.5, 1.0, 1.0]
    assert tangent_warmup(0, 0) == 1.0
    # r = 0 keeps the first term only: −cos² t·(σ_d·F − dx_t/dt)
    x_t, v, t = torch.randn(4, 2).double(), torch.randn(4, 2).double(), torch.rand(4).double()
    F, g0 = scm_tangent(GAUSS.velocity_field, x_t, t + 0.1, v, SD, r=0.0)
    torch.testing.assert_close(g0, -((t + 0.1).cos() ** 2)[:, None] * (SD * F - v))


def test_adaptive_weight_learns_minus_the_log_of_the_expected_squared_error():
    """min_w E[e^w·a − w] over w(t) is w* = −ln E[a | t] (App. D): trained on fixed per-sample
    errors a (mean squares 0.04 at one t, 2.5 at another, each the mean of two values), w_φ
    reaches −ln of their means."""
    torch.manual_seed(0)
    weight = AdaptiveWeight(SD).double()
    opt = torch.optim.Adam(weight.parameters(), lr=0.05)
    t = torch.tensor([0.1, 0.1, 1.2, 1.2], dtype=torch.float64)
    a = torch.tensor([0.02, 0.06, 1.0, 4.0], dtype=torch.float64)
    # the loss function itself, on errors whose per-sample mean square is a (one dimension)
    errors = a.sqrt()[:, None]
    by_hand = torch.tensor(0.3).exp() * a - 0.3
    assert torch.allclose(adaptive_weighted_loss(errors, torch.zeros_like(errors),
                                                 torch.full((4,), 0.3, dtype=a.dtype)), by_hand)
    for _ in range(600):
        w = weight(t)
        loss = adaptive_weighted_loss(errors, torch.zeros_like(errors), w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(weight(t[[0, 2]]).detach(),
                               -torch.tensor([0.04, 2.5], dtype=torch.float64).log(),
                               rtol=0, atol=1e-3)


def test_the_proposal_is_edm_s_log_normal_sigma():
    t = sample_times(BatchNoise(0, 0, 100_000), -1.0, 1.4, SD)
    log_sigma = (SD * t.tan()).log()
    assert abs(float(log_sigma.mean()) + 1.0) < 0.02 and abs(float(log_sigma.std()) - 1.4) < 0.02


def test_the_proposal_is_clamped_to_the_sampling_range_as_the_reference_does():
    """With the range, σ = e^τ is clamped to [0.002, 80] before t = arctan(σ/σ_d): exactly the
    unclamped draw inside, the bounds' times outside (a wide proposal reaches both)."""
    free = sample_times(BatchNoise(0, 0, 20_000), 0.0, 6.0, SD)
    clamped = sample_times(BatchNoise(0, 0, 20_000), 0.0, 6.0, SD, (0.002, 80.0))
    t_min, t_max = math.atan(0.002 / SD), math.atan(80.0 / SD)
    inside = (free >= t_min) & (free <= t_max)
    assert 0 < int(inside.sum()) < len(free)
    assert torch.equal(clamped[inside], free[inside])
    assert torch.allclose(clamped[free < t_min], torch.tensor(t_min, dtype=clamped.dtype))
    assert torch.allclose(clamped[free > t_max], torch.tensor(t_max, dtype=clamped.dtype))
    scm = zoo.plugins.get("methods", "scm")
    config = scm.configure("toy", teacher="runs/toy/edm")
    assert config.clamp_proposal and config.proposal_range == (0.002, config.sigma_max)


def test_a_run_saved_before_the_clamp_keeps_its_unclamped_proposal():
    from zoo.training.config import config_from_dict, config_to_dict

    scm = zoo.plugins.get("methods", "scm")
    saved = config_to_dict(scm.configure("toy", teacher="runs/toy/edm"))
    del saved["clamp_proposal"]
    notes = []
    config = config_from_dict(scm.config_class, saved, notes)
    assert config.clamp_proposal is False and config.proposal_range is None
    assert notes == ["the run predates the setting clamp_proposal: it takes the value that "
                     "reproduces how it was trained, clamp_proposal=False"]


# ------------------------------------------------------------------ method: runs, sampling, bench

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("scm")


@pytest.fixture(scope="module")
def teacher(workdir):
    """A tiny EDM teacher trained for 200 iterations from the CLI."""
    run = workdir / "runs/toy/edm"
    result = CliRunner().invoke(main, [
        "train", "edm", "--dataset", "toy", "--iterations", "200", "--batch-size", "128",
        "--network-kwargs", json.dumps(TINY), "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("nfe", [1, 2])
def test_nfe_is_counted_exactly_and_samples_do_not_depend_on_the_batch_size(teacher, nfe):
    method = scm()
    config = method.configure("toy", teacher=str(teacher), network_kwargs=TINY)
    task = method.make_task(config, load_dataset("toy"))
    run = Run(teacher, config, task.net.eval(), {"shape": [2], "kind": "points"}, 0)
    a, b = method.sample(run, 40, nfe=nfe), method.sample(run, 40, nfe=nfe, batch_size=7)
    assert a.nfe == b.nfe == nfe and a.info["times"][0] == pytest.approx(math.atan(80 / SD))
    torch.testing.assert_close(a.x, b.x)
    assert method.sample(run, 8, times="1.1,0.5").nfe == 3


def test_short_runs_beat_their_step_0_weights_and_count_their_cost(workdir, teacher):
    """sCT and sCD from the 200-step teacher, 40 iterations each: one-step W2 (1024 samples,
    raw weights) against the same run's step-0 weights (the teacher as a consistency function,
    whose one step gives about the data mean). Measured over training seeds 0-2: sCT 0.46-0.47
    against 0.73 (ratio 0.64-0.65), sCD 0.44 (ratio 0.61); training off: ratio 1."""
    method = scm()
    reference = load_dataset("toy").sample_true(1024, 0)
    for mode, forward in (("sct", 3), ("scd", 4)):
        config = method.configure("toy", mode=mode, teacher=str(teacher), iterations=40,
                                   batch_size=128, tangent_warmup=10, checkpoint_every=40,
                                   log_every=20)
        run_dir = method.train(config, workdir / "runs/toy" / f"scm-{mode}", progress=False)
        w2 = [wasserstein2(method.sample(method.load(path, ema=False), 1024).x, reference)
              for path in (run_dir, run_dir / "checkpoint-prev.pt")]
        assert w2[0] < 0.8 * w2[1], (mode, w2)
        state = load_checkpoint(run_dir)
        assert state["cost"] == {"images": 40 * 128, "forward": forward * 40 * 128,
                                 "backward": 40 * 128}
        assert state["config"]["teacher"] == str(teacher)


def test_zoo_bench_tables_sct_and_scd_at_one_and_two_steps(workdir, teacher):
    """The bench trains what is missing (sCT, sCD; the edm teacher is there) and adds the
    teacher's cost to each row."""
    sets = ["scm.iterations=10", "scm.batch_size=64", "scm.checkpoint_every=10",
            "scm.tangent_warmup=5"]
    result = CliRunner().invoke(main, [
        "bench", "--models", "scm", "--dataset", "toy", "--train-missing", "--runs-root",
        str(workdir / "runs"), "--n", "64", "--batch-size", "32", "--out",
        str(workdir / "bench"), "--no-progress", *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    rows = json.loads((workdir / "bench" / "table.json").read_text())["rows"]
    assert [(r["label"], r["nfe"]) for r in rows] == [
        ("sCT", 1), ("sCT", 2), ("sCD", 1), ("sCD", 2)]
    assert all(math.isfinite(r["metrics"]["W2"]) for r in rows)
    teacher_images = 200 * 128
    assert all(r["training_cost"]["images"] > teacher_images for r in rows), rows


# ------------------------------------------------------------------ errors and discovery

@pytest.mark.parametrize("settings,match", [
    (dict(init="teacher", time_label="trigflow"), "time-label edm"),
    (dict(mode="scd", teacher=""), "needs --teacher"),
    (dict(mid_times="1.6"), "mid_times"),
    (dict(mid_times="0.5,1.1"), "decrease"),
    (dict(mid_times="a"), "numbers"),
    (dict(p_std=0.0), "p_std"),
    (dict(tangent_warmup=-1), "tangent_warmup"),
    (dict(mode="ict"), "mode"),
])
def test_bad_settings_are_refused_with_the_setting_named(settings, match):
    with pytest.raises(ValueError, match=match):
        scm().configure("toy", **settings)


def test_bad_sampling_and_teachers_are_refused(workdir, teacher, tmp_path):
    method = scm()
    run = method.load(workdir / "runs/toy/scm-scd")
    with pytest.raises(ValueError, match="pass --times"):
        method.sample(run, 4, nfe=3)
    with pytest.raises(ValueError, match="--times"):
        method.sample(run, 4, times="2.0")
    with pytest.raises(FileNotFoundError, match="zoo train edm"):
        method.make_task(method.configure("toy", teacher=str(tmp_path)), load_dataset("toy"))
    with pytest.raises(ValueError, match="sigma_data"):
        method.make_task(method.configure("toy", teacher=str(teacher), sigma_data=1.0),
                         load_dataset("toy"))
    with pytest.raises(ValueError, match="time_label"):
        TrigFlowConsistency(nn.Identity(), SD, "log")


def test_plugin_comes_through_its_entry_point():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="zoo")}
    assert points["scm"] == "zoo_scm"
    assert "scm" in zoo.plugins.registry("methods").names()
    assert scm().requires == ("edm",)


def test_iteration_k_uses_the_warm_up_factor_of_k_completed_iterations_also_after_resume(
        workdir, teacher, monkeypatch):
    """r at iteration k (0-based) is min(1, k/H) (Sec. 4.2), here H = 2: 0, ½, 1, 1; a run
    resumed after 2 iterations continues with 1, 1 (the count is in the checkpoint)."""
    import zoo_scm.loss

    seen = []
    real = zoo_scm.loss.scm_tangent
    monkeypatch.setattr(zoo_scm.loss, "scm_tangent",
                        lambda *args: seen.append(args[-1]) or real(*args))
    method = scm()
    settings = dict(mode="sct", teacher=str(teacher), batch_size=8, tangent_warmup=2,
                    checkpoint_every=2, log_every=1)
    method.train(method.configure("toy", iterations=4, **settings), workdir / "warmup",
                 progress=False)
    assert seen == [0.0, 0.5, 1.0, 1.0]
    seen.clear()
    run = method.train(method.configure("toy", iterations=2, **settings),
                       workdir / "warmup-resumed", progress=False)
    method.resume(run, {"iterations": 4}, progress=False)
    assert seen == [0.0, 0.5, 1.0, 1.0]


def test_time_to_sigma_is_sigma_data_tan_t_on_zero_to_half_pi():
    from zoo_scm.trigflow import PAPER_MID_TIME, time_to_sigma

    assert time_to_sigma(PAPER_MID_TIME, 0.5) == pytest.approx(0.5 * 1.9647596572486523)
    assert time_to_sigma(0.0, 0.5) == 0.0
    assert time_to_sigma(math.atan(80 / 0.5), 0.5) == pytest.approx(80.0)
    for t in (math.pi / 2, 2.0, -0.1):
        with pytest.raises(ValueError, match=r"must lie in \[0, π/2\)"):
            time_to_sigma(t, 0.5)


def test_adaptive_weight_features_are_cos_and_sin_of_the_label_at_frequencies_half_to_32():
    """w_φ(t) = linear([cos(ω·ℓ), sin(ω·ℓ)]), ℓ = ln(σ_d·tan t)/4, ω geometric from 1/2 to 32."""
    weight = AdaptiveWeight(SD, channels=8).double()
    torch.nn.init.normal_(weight.linear.weight)
    t = torch.tensor([0.3, 1.2], dtype=torch.float64)
    label = torch.log(SD * torch.tan(t)) / 4
    omega = torch.tensor([0.5, 2.0, 8.0, 32.0], dtype=torch.float64)
    features = torch.cat([torch.cos(label[:, None] * omega), torch.sin(label[:, None] * omega)], 1)
    torch.testing.assert_close(weight(t), features @ weight.linear.weight[0] + weight.linear.bias)
