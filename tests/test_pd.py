"""Progressive distillation: the target, grids and stages, training, sampling, and its errors."""

import json

import pytest
import torch
from click.testing import CliRunner
from zoo_pd import PDLoss, pd_sigmas, pd_target, sample_pd_euler, stage_plan, truncated_snr_weight

import zoo.plugins
from zoo.cli import main
from zoo.diffusion import Denoiser
from zoo.diffusion.samplers import euler_step
from zoo.nets import MLPDenoiserNet
from zoo.training import BatchNoise, CheckpointError

TINY_NET = {"hidden": 16, "num_layers": 1, "noise_channels": 16}


def tiny_denoiser(seed=0):
    torch.manual_seed(seed)
    net = MLPDenoiserNet(2, hidden=16, num_layers=1, noise_channels=16)
    torch.nn.init.normal_(net.out.weight, std=0.3)  # not the zero-initialised output: D ≠ c_skip·x
    return Denoiser(net, "edm").eval().requires_grad_(False)


class Constant(torch.nn.Module):
    """A denoiser whose D(x, σ) is a fixed tensor: here the PD target x̃."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, sigma, class_labels=None):
        return self.value


def test_one_student_step_on_the_target_lands_on_the_teachers_two_steps():
    teacher = tiny_denoiser()
    sigmas = pd_sigmas(8)
    x = torch.randn(64, 2) * 0.5
    i = torch.randint(0, 4, (64,))
    sigma_t, sigma_mid, sigma_s = (sigmas[2 * i + k].float() for k in range(3))
    x_t = x + sigma_t[:, None] * torch.randn_like(x)
    x_s = euler_step(teacher, euler_step(teacher, x_t, sigma_t, sigma_mid), sigma_mid, sigma_s)
    target = pd_target(x_t, x_s, sigma_t, sigma_s)
    one_step = euler_step(Constant(target), x_t, sigma_t, sigma_s)
    torch.testing.assert_close(one_step, x_s, rtol=1e-4, atol=1e-4)
    # the teacher's own one-step result is not the two-step one (the test has teeth)
    assert not torch.allclose(euler_step(teacher, x_t, sigma_t, sigma_s), x_s, atol=1e-3)


def test_target_algebra_in_float64():
    x_t, x_s = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    sigma_t = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.01], dtype=torch.float64)
    sigma_s = sigma_t / 3
    d = pd_target(x_t, x_s, sigma_t, sigma_s)
    r = (sigma_s / sigma_t)[:, None]
    # one Euler step: x_s = (σ_s/σ_t)·x_t + (1 − σ_s/σ_t)·D
    torch.testing.assert_close(r * x_t + (1 - r) * d, x_s)


def test_truncated_snr_weight_is_max_of_inverse_sigma_squared_and_one():
    sigma = torch.tensor([0.002, 0.5, 1.0, 2.0, 80.0])
    torch.testing.assert_close(truncated_snr_weight(sigma), torch.tensor([250_000.0, 4, 1, 1, 1]))


def test_stage_halving_and_grids_nest():
    assert stage_plan(8) == [4, 2, 1]
    assert stage_plan(64) == [32, 16, 8, 4, 2, 1]
    assert stage_plan(2) == [1]
    for bad in (0, 1, 3, 12, -4):
        with pytest.raises(ValueError, match="power of two"):
            stage_plan(bad)
    for n in (64, 8, 2):
        grid = pd_sigmas(n)
        assert len(grid) == n + 1 and grid[0] == 80.0 and grid[-1] == pytest.approx(0.002)
        assert torch.equal(grid[::2], pd_sigmas(n // 2))  # the student's grid is every other point


def test_loss_uses_the_student_step_grid_and_the_weight():
    teacher = tiny_denoiser()
    grid = pd_sigmas(4)  # student: 2 steps, σ_t ∈ {σ_0, σ_2}
    task = PDLoss(tiny_denoiser(1).train().requires_grad_(True), teacher, grid)
    x = torch.randn(32, 2) * 0.5
    loss = task.loss(task.net, x, None, BatchNoise(0, 3, 32))
    noise = BatchNoise(0, 3, 32)
    i = noise.randint(0, 2)
    sigma_t, sigma_mid, sigma_s = (grid[2 * i + k].float() for k in range(3))
    x_t = x + sigma_t[:, None] * noise.randn_like(x)
    x_s = euler_step(teacher, euler_step(teacher, x_t, sigma_t, sigma_mid), sigma_mid, sigma_s)
    error = (task.net(x_t, sigma_t) - pd_target(x_t, x_s, sigma_t, sigma_s)).square().mean(1)
    torch.testing.assert_close(loss, truncated_snr_weight(sigma_t) * error)
    loss.mean().backward()
    assert all(p.grad is not None for p in task.net.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="2M \\+ 1"):
        PDLoss(task.net, teacher, pd_sigmas(1)[:1])


def test_sampler_takes_one_euler_step_per_grid_interval():
    denoiser = tiny_denoiser()
    x = torch.randn(8, 2) * 80
    out = sample_pd_euler(denoiser, x, pd_sigmas(2))
    grid = pd_sigmas(2)
    expected = euler_step(denoiser, euler_step(denoiser, x, grid[0], grid[1]), grid[1], grid[2])
    torch.testing.assert_close(out, expected)
    for bad in ([80.0], [80.0, 1.0, 0.0], [1.0, 80.0]):
        with pytest.raises(ValueError, match="strictly decreasing positive"):
            sample_pd_euler(denoiser, x, torch.tensor(bad))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    zoo.plugins.reset()
    root = tmp_path_factory.mktemp("pd")
    edm = zoo.plugins.get("methods", "edm")
    config = edm.configure("toy", iterations=20, batch_size=64, lr_warmup=0,
                           network_kwargs=TINY_NET, checkpoint_every=20, log_every=10)
    return edm.train(config, root / "edm", progress=False)


@pytest.fixture(scope="module")
def pd_run(teacher_run):
    zoo.plugins.reset()
    pd = zoo.plugins.get("methods", "pd")
    config = pd.configure("toy", teacher=str(teacher_run), teacher_steps=8, iterations=6,
                          batch_size=64, checkpoint_every=6, log_every=2)
    return pd.train(config, teacher_run.parent / "pd", progress=False)


def test_stages_are_kept_with_their_nfe_and_sample_with_it(pd_run, teacher_run):
    pd = zoo.plugins.get("methods", "pd")
    assert sorted(p.name for p in pd_run.glob("stage-*")) == [
        "stage-0-nfe-4", "stage-1-nfe-2", "stage-2-nfe-1"]
    assert [(r.label, r.nfe, r.run_dir.name) for r in pd.bench_rows(pd_run)] == [
        ("PD", 4, "stage-0-nfe-4"), ("PD", 2, "stage-1-nfe-2"), ("PD", 1, "stage-2-nfe-1")]
    teachers = []
    for row in pd.bench_rows(pd_run):
        run = pd.load(row.run_dir)
        assert run.config.teacher_steps == 2 * row.nfe and run.step == 6
        samples = pd.sample(run, 5, seed=3)
        assert samples.nfe == row.nfe and samples.x.shape == (5, 2)
        teachers.append(run.config.teacher)
        # the learning rate restarts at its peak in every stage and decays linearly to 0
        log = (row.run_dir / "log.jsonl").read_text().splitlines()
        lrs = [row["lr"] for row in map(json.loads, log) if "lr" in row]
        assert lrs[0] == pytest.approx(run.config.lr * (1 - 1 / 6)) and lrs == sorted(lrs)[::-1]
    stages = ("stage-0-nfe-4", "stage-1-nfe-2")
    assert teachers == [str(teacher_run), *(str(pd_run / s) for s in stages)]
    # the run's folder loads its last stage; --nfe picks another, sample for sample the same
    last = pd.load(pd_run)
    assert last.path.name == "stage-2-nfe-1"
    via_nfe = pd.sample(last, 5, seed=3, nfe=4)
    assert via_nfe.nfe == 4
    torch.testing.assert_close(via_nfe.x, pd.sample(pd.load(pd_run / "stage-0-nfe-4"), 5, seed=3).x)
    with pytest.raises(ValueError, match="no PD stage with 8 steps .* trained: 4, 2, 1"):
        pd.sample(last, 5, nfe=8)


def test_student_starts_as_the_teachers_copy(teacher_run):
    pd = zoo.plugins.get("methods", "pd")
    from zoo.data import load_dataset

    config = pd.stage_config(pd.configure("toy", teacher=str(teacher_run), teacher_steps=8),
                             0, teacher_run)
    task = pd.make_task(config, load_dataset("toy"))
    teacher_state = task.teacher.state_dict()
    for name, value in task.net.state_dict().items():
        torch.testing.assert_close(value, teacher_state[name])
    assert task.net is not task.teacher and all(p.requires_grad for p in task.net.parameters())
    assert task.net.training and not task.teacher.training


def test_resume_keeps_finished_stages_and_refuses_without_resume(pd_run, teacher_run):
    pd = zoo.plugins.get("methods", "pd")
    config = pd.configure("toy", teacher=str(teacher_run), teacher_steps=8, iterations=6,
                          batch_size=64)
    with pytest.raises(CheckpointError, match="already holds PD stages"):
        pd.train(config, pd_run, progress=False)
    before = {p: p.stat().st_mtime_ns for p in pd_run.glob("stage-*/checkpoint.pt")}
    pd.train(config, pd_run, resume=True, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in pd_run.glob("stage-*/checkpoint.pt")}


def test_errors_name_what_is_wrong(tmp_path, teacher_run):
    pd = zoo.plugins.get("methods", "pd")
    with pytest.raises(ValueError, match="power of two"):
        pd.configure("toy", teacher_steps=12)
    config = pd.configure("toy", teacher=str(tmp_path / "none"), iterations=2)
    with pytest.raises(FileNotFoundError, match="zoo train edm --dataset toy"):
        pd.train(config, tmp_path / "pd", progress=False)
    with pytest.raises(CheckpointError, match="no PD stage"):
        pd.load(tmp_path)
    # a teacher trained on other data
    other = pd.configure("toy", teacher=str(teacher_run), teacher_steps=2, iterations=2,
                         dataset_options={"n": 1000})
    with pytest.raises(ValueError, match="other data"):
        pd.train(other, tmp_path / "pd-other", progress=False)
    # an architecture other than the teacher's
    from zoo.data import load_dataset

    config = pd.configure("toy", teacher=str(teacher_run), network_kwargs={"hidden": 8})
    with pytest.raises(ValueError, match="differs from the teacher"):
        pd.make_task(config, load_dataset("toy"))


def test_cli_samples_a_stage_by_run_or_by_nfe(pd_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s.png"
    stage = str(pd_run / "stage-1-nfe-2")
    result = runner.invoke(main, ["sample", "pd", "--run", stage, "--n", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "NFE 2" in result.output and out.exists()
    result = runner.invoke(main, ["sample", "pd", "--run", str(pd_run), "--nfe", "4", "--n", "16",
                                  "--out", str(out), "--overwrite"])
    assert result.exit_code == 0 and "NFE 4" in result.output, result.output
    result = runner.invoke(main, ["sample", "pd", "--run", str(pd_run), "--nfe", "3"])
    assert result.exit_code == 1 and "no PD stage with 3 steps" in result.output


def test_dry_run_projects_every_stage_and_writes_nothing(teacher_run, tmp_path):
    pd = zoo.plugins.get("methods", "pd")
    config = pd.configure("toy", teacher=str(teacher_run), teacher_steps=8, iterations=10,
                          batch_size=64)
    report = pd.dry_run(config, tmp_path / "pd", steps=2)
    assert report["iterations"] == 3 * 10  # stages 8→4, 4→2, 2→1
    per_stage = 10 * 64 / report["samples_per_s"]
    assert report["projected_s"] == pytest.approx(3 * per_stage)
    assert not (tmp_path / "pd").exists()
