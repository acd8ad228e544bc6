"""ECT (Geng et al. 2024): the shrinking-Δt schedule against the paper's formula by hand, the
loss and its stop-gradient against a hand computation, the student starting as its teacher, the
boundary condition, sampling NFE, refusals, and a tiny ``zoo bench --models edm,ect`` whose
trained ECT beats its step-0 weights."""

import json
import math
import shutil
from importlib import metadata

import pytest
import torch
from click.testing import CliRunner
from zoo_ect import EasyConsistencyTuning, ECTConfig, ect_dt, ect_stage, pseudo_huber

import zoo.plugins
from zoo.cli import main
from zoo.data import load_dataset
from zoo.diffusion import Denoiser
from zoo.diffusion.samplers import NFECounter
from zoo.methods import Run
from zoo.nets import MLPDenoiserNet
from zoo.training import load_checkpoint, save_checkpoint
from zoo.training.cost import run_cost

TINY = {"hidden": 16, "num_layers": 1}
SCHEDULE = dict(q=2.0, stage_iterations=10, k=8.0, b=1.0)


def ect():
    return zoo.plugins.get("methods", "ect")


def consistency_fn(sigma_min=0.0, seed=0):
    """A small MLP consistency function whose output layer is not zero (F ≢ 0)."""
    torch.manual_seed(seed)
    net = MLPDenoiserNet(2, hidden=32, num_layers=2)
    torch.nn.init.normal_(net.out.weight, std=0.5)
    return Denoiser(net, "consistency", sigma_min=sigma_min).double()


class FixedNoise:
    """A BatchNoise stand-in: ``randn()`` gives the normal draws of ln t, ``randn_like`` z."""

    def __init__(self, n, z):
        self.n, self.z = n, z

    def randn(self):
        return self.n

    def randn_like(self, x):
        return self.z


def hand_dt(t: float, a: int, q=2.0, k=8.0, b=1.0) -> float:
    """The paper's Δt = t·n(t)/q^a, n(t) = 1 + k/(1 + e^{bt}), r = t − Δt clamped at 0."""
    return min(t * (1 + k / (1 + math.exp(b * t))) / q**a, t)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny EDM teacher trained for 20 iterations from the CLI."""
    run = tmp_path_factory.mktemp("ect") / "edm"
    result = CliRunner().invoke(main, [
        "train", "edm", "--dataset", "toy", "--iterations", "20", "--batch-size", "64",
        "--network-kwargs", json.dumps(TINY), "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    return run


# ------------------------------------------------------------------ the schedule

def test_first_stage_is_the_papers_formula_computed_by_hand():
    t = torch.tensor([0.002, 0.1, 1.0, 1.95, 2.5, 5.0, 80.0], dtype=torch.float64)
    for step in (0, 9):  # the first stage, a = 1: iterations 0 … d − 1
        assert ect_stage(step, 10) == 1
        dt = ect_dt(t, step, q=2.0, stage_iterations=10, k=8.0, b=1.0)
        torch.testing.assert_close(dt, torch.tensor([hand_dt(v, 1) for v in t.tolist()],
                                                    dtype=torch.float64), rtol=1e-12, atol=0)
    # n(t)/2 >= 1 below t = ln 7 (8·sigmoid(−t) >= 1): r clamps at 0, the loss is diffusion's
    dt = ect_dt(t, 0, q=2.0, stage_iterations=10, k=8.0, b=1.0)
    assert torch.equal(dt[t < math.log(7)], t[t < math.log(7)])
    assert (dt[t > math.log(7)] < t[t > math.log(7)]).all()


def test_r_stays_in_0_t_and_approaches_t_as_the_stage_grows():
    t = torch.logspace(-3, math.log10(80), 200, dtype=torch.float64)
    previous = t.clone()
    for a in range(1, 16):
        step = (a - 1) * 10 + 3
        assert ect_stage(step, 10) == a and ect_stage(a * 10 - 1, 10) == a
        dt = ect_dt(t, step, q=2.0, stage_iterations=10, k=8.0, b=1.0)
        r = t - dt
        assert (r >= 0).all() and (r < t).all()  # 0 <= r < t
        assert (dt <= previous).all()  # Δt never grows
        # where r > 0 now and at the stage before, the stage halved Δt = t·n(t)/2^a
        both = (dt < t) & (previous < t)
        assert both.sum() > 50 or a == 1
        torch.testing.assert_close(dt[both], (previous / 2)[both], rtol=1e-12, atol=0)
        assert dt.div(t).max() <= (1 + 8 / 2) / 2**a + 1e-15  # n(t) <= 1 + k/2
        previous = dt
    assert (dt / t).max() < 2e-4  # r → t


def test_loss_is_the_weighted_pseudo_huber_distance_with_a_stopped_target():
    f = consistency_fn()
    x = torch.randn(6, 2, dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64)
    n = torch.tensor([-2.0, -0.5, 0.0, 0.8, 1.2, 2.0], dtype=torch.float64)  # ln t = -1.1 + 2n
    for c, step in ((0.0, 0), (0.0, 25), (0.3, 25)):
        config = ECTConfig(teacher="t", q=2.0, stage_iterations=10, huber_c=c)
        task = EasyConsistencyTuning(f, config, {})
        task.k = step
        loss = task.loss(f, x, None, FixedNoise(n, z))
        expected = []
        for i in range(6):
            t = math.exp(-1.1 + 2.0 * n[i].item())
            dt = hand_dt(t, step // 10 + 1)
            r = t - dt
            online = f(x[i:i + 1] + t * z[i:i + 1], t)
            with torch.no_grad():
                target = x[i:i + 1] if r == 0 else f(x[i:i + 1] + r * z[i:i + 1], r)
            distance = ((online - target).square().sum() + c * c).sqrt() - c
            expected.append(distance / dt)
        expected = torch.stack(expected)
        torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
        # the gradient goes through the online branch only (the target is under stop-gradient)
        params = list(f.parameters())
        for got, want in zip(torch.autograd.grad(loss.sum(), params),
                             torch.autograd.grad(expected.sum(), params)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_pseudo_huber_is_the_norm_at_c_0_with_a_zero_gradient_at_zero():
    delta = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    torch.testing.assert_close(pseudo_huber(delta, 0.0), torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(pseudo_huber(delta, 1.0), torch.tensor([26**0.5 - 1, 0.0]))
    (grad,) = torch.autograd.grad(pseudo_huber(delta, 0.0).sum(), delta)
    torch.testing.assert_close(grad, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))  # finite at Δ = 0


# ------------------------------------------------------------------ the consistency function

def test_boundary_condition_and_the_edm_limit():
    x = torch.randn(5, 2, dtype=torch.float64)
    f = consistency_fn(sigma_min=0.002)
    assert torch.equal(f(x, 0.002), x)  # f(x, ε) = x exactly
    # ε = 0 (ECT): c_skip and c_out are EDM's, f(x, σ) − x = O(σ) as σ → 0
    f0 = consistency_fn(sigma_min=0.0).requires_grad_(False)
    errors = [float((f0(x, s) - x).abs().max()) for s in (1e-4, 1e-5, 1e-6)]
    assert errors[0] < 1e-3 and 8 < errors[0] / errors[1] < 12 and 8 < errors[1] / errors[2] < 12
    edm = Denoiser(f0.net, "edm")
    for s in (0.01, 0.821, 80.0):
        assert torch.equal(f0(x, s), edm(x, s))


def test_student_starts_as_the_teacher(teacher):
    config = ect().configure("toy", teacher=str(teacher), network_kwargs={})
    task = ect().make_task(config, load_dataset("toy"))
    run = zoo.plugins.get("methods", "edm").load(teacher)
    student, state = task.net.state_dict(), run.denoiser.state_dict()
    assert student.keys() == state.keys()
    assert all(torch.equal(student[k], state[k]) for k in state)  # the teacher's EMA weights
    assert config.network_kwargs == run.config.network_kwargs and config.network == "mlp"
    x = torch.randn(32, 2)
    for sigma in (0.002, 0.5, 80.0):  # ε = 0: the student is the teacher's denoiser
        assert torch.equal(task.net(x, sigma), run.denoiser(x, sigma))
    raw = ect().make_task(ect().configure("toy", teacher=str(teacher), teacher_weights="raw"),
                          load_dataset("toy"))
    trained = load_checkpoint(teacher)["net"]
    assert all(torch.equal(raw.net.state_dict()[k], trained[k]) for k in trained)


def test_samplers_count_nfe_and_start_at_80_then_0_821():
    f = consistency_fn().float().eval()
    config = ect().configure("toy", sample_sigmas="80,0.821")  # the published CIFAR-10 steps
    run = Run(None, config, f, {"shape": (2,), "kind": "points"}, 0)
    seen = []
    f.register_forward_hook(lambda m, args, out: seen.append(float(torch.as_tensor(args[1])
                                                                   .flatten()[0])))
    for nfe in (1, 2):
        seen.clear()
        samples = ect().sample(run, 5, nfe=nfe, batch_size=5)
        assert samples.nfe == nfe and samples.x.shape == (5, 2)
        assert seen == pytest.approx([80.0, 0.821][:nfe])
    assert ect().sample(run, 4, sigmas="80,5,1").nfe == 3
    counter = NFECounter(f)
    ect().sample(Run(None, run.config, counter, run.dataset, 0), 3, nfe=2)
    assert counter.nfe == 2 * 1  # one batch of 3, two σ
    a = ect().sample(run, 7, seed=3, nfe=2, batch_size=7).x
    assert torch.allclose(a, ect().sample(run, 7, seed=3, nfe=2, batch_size=2).x, atol=1e-6)
    with pytest.raises(ValueError, match="up to 2 steps"):
        ect().sample(run, 2, nfe=3)


# ------------------------------------------------------------------ refusals

def test_bad_settings_and_missing_teachers_are_refused(teacher, tmp_path):
    for bad, match in ((dict(q=1.0), "q > 1"), (dict(stage_iterations=0), "stage_iterations"),
                       (dict(huber_c=-1.0), "huber_c"), (dict(p_std=0.0), "p_std"),
                       (dict(teacher=""), "needs --teacher"),
                       (dict(sample_sigmas="80,0"), "must be > sigma_min"),
                       (dict(sample_sigmas="1,80"), "decreasing"),
                       (dict(teacher_weights="best"), "teacher_weights")):
        with pytest.raises(ValueError, match=match):
            ect().configure("toy", **bad)
    with pytest.raises(FileNotFoundError, match="zoo train edm --dataset toy"):
        ect().make_task(ect().configure("toy", teacher=str(tmp_path / "none")),
                        load_dataset("toy"))
    with pytest.raises(ValueError, match="trained on other data"):
        ect().make_task(ect().configure("gmm", teacher=str(teacher)), load_dataset("gmm"))
    with pytest.raises(ValueError, match="sigma_data=0.7 differs from the teacher's 0.5"):
        ect().make_task(ect().configure("toy", teacher=str(teacher), sigma_data=0.7),
                        load_dataset("toy"))
    result = CliRunner().invoke(main, ["train", "ect", "--dataset", "toy", "--teacher",
                                       str(tmp_path / "none"), "--no-progress"])
    assert result.exit_code != 0
    assert "has no checkpoint: train it first (zoo train edm" in result.output


class Stop(Exception):
    pass


def test_resume_is_exact_and_refuses_a_changed_teacher(teacher, tmp_path):
    """The iteration k of the schedule goes through checkpoints (stages of 2 iterations)."""
    edm = tmp_path / "edm"
    shutil.copytree(teacher, edm)
    config = ect().configure("toy", teacher=str(edm), iterations=6, batch_size=32,
                             stage_iterations=2, checkpoint_every=2)

    def stop_at_3(step, loss):
        if step == 3:
            raise Stop

    straight = ect().train(config, tmp_path / "straight", progress=False)
    with pytest.raises(Stop):
        ect().train(config, tmp_path / "resumed", progress=False, on_step=stop_at_3)
    ect().train(config, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(tmp_path / "resumed")
    assert a["task"]["k"] == b["task"]["k"] == 6
    for key in ("net", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    state = load_checkpoint(edm)  # the teacher trains on: its step changes
    save_checkpoint({**state, "step": state["step"] + 1}, edm / "checkpoint.pt")
    with pytest.raises(ValueError, match="tuned from teacher"):
        ect().resume(straight, {"iterations": 8}, progress=False, echo=lambda msg: None)


# ------------------------------------------------------------------ the plugin end to end

def test_plugin_comes_through_its_entry_point():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="zoo")}
    assert points["ect"] == "zoo_ect"
    assert "ect" in zoo.plugins.registry("methods").names()
    assert ect().requires == ("edm",)


def bench(models, runs, out):
    sets = ["batch_size=128", "lr_warmup=0", "checkpoint_every=1000", "log_every=1000",
            "edm.iterations=300", "ect.iterations=150", "ect.stage_iterations=50",
            json.dumps({"hidden": 32, "num_layers": 2}).join(["network_kwargs=", ""])]
    result = CliRunner().invoke(main, [
        "bench", "--models", models, "--dataset", "toy", "--train-missing", "--runs-root",
        str(runs), "--n", "256", "--batch-size", "256", "--out", str(out), "--no-progress",
        *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return {(r["label"], r["nfe"]): r for r in
            json.loads((out / "table.json").read_text())["rows"]}


def test_zoo_bench_tunes_ect_from_edm_and_beats_its_step_0_weights(tmp_path):
    """Trained for 150 iterations, ECT's one- and two-step W2 must beat the same bench on its
    step-0 weights, which are the teacher's denoiser taken as a consistency function (one step
    from σ = 80 gives about the data mean)."""
    rows = bench("edm,ect", tmp_path / "runs", tmp_path / "out")
    assert [k for k in rows if k[0] == "ECT"] == [("ECT", 1), ("ECT", 2)]
    ect_run, edm_run = tmp_path / "runs/toy/ect", tmp_path / "runs/toy/edm"
    cost, teacher_cost = run_cost(ect_run), run_cost(edm_run)
    images = 150 * 128
    assert cost == {"images": teacher_cost["images"] + images,
                    "forward": teacher_cost["forward"] + 2 * images,
                    "backward": teacher_cost["backward"] + images}
    shutil.copytree(tmp_path / "runs", tmp_path / "untrained")
    run = tmp_path / "untrained/toy/ect"
    state = load_checkpoint(run / "checkpoint-prev.pt")
    assert state["step"] == 0
    save_checkpoint({**state, "step": 150}, run / "checkpoint.pt")  # benchable as finished
    rows_0 = bench("ect", tmp_path / "untrained", tmp_path / "out0")
    for nfe in (1, 2):
        w2, w2_0 = rows[("ECT", nfe)]["metrics"]["W2"], rows_0[("ECT", nfe)]["metrics"]["W2"]
        assert w2 < 0.8 * w2_0, (nfe, w2, w2_0)
