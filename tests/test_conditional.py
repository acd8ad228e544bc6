"""Class-conditional models: labels through the losses (EDM, CD, CT, CD∞/CT∞, PD), the samplers,
``zoo sample --class`` and the run's ``num_classes`` (offline, CPU, seconds)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from zoo_cm.loss import ConsistencyDistillation, ConsistencyTraining, ContinuousConsistency
from zoo_edm.method import EDMLoss
from zoo_pd.method import PDLoss, pd_sigmas

from zoo.cli import main
from zoo.data import load_dataset
from zoo.diffusion import Denoiser
from zoo.diffusion.random import PhiloxGenerator
from zoo.methods import Run, check_num_classes, draw_labels
from zoo.plugins import get
from zoo.training import BatchNoise

DIGITS_NET = {"model_channels": 8, "num_blocks": 1}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))


class SpyNet(nn.Module):
    """F(x, c_noise, class_labels) = w·x that records the class labels of every call."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.seen.append(class_labels)
        return self.w * x


def spy(parameterization="edm"):
    return Denoiser(SpyNet(), parameterization)


def all_saw(denoiser, labels):
    seen = denoiser.net.seen
    return len(seen) > 0 and all(s is not None and torch.equal(s, labels) for s in seen)


def batch(n=6):
    x = torch.randn(n, 1, 4, 4)
    labels = torch.arange(n) % 3
    return x, labels, BatchNoise(0, 0, n)


def test_edm_loss_passes_the_labels_to_the_network():
    config = get("methods", "edm").configure("toy")
    student = spy()
    x, labels, noise = batch()
    EDMLoss(student, config).loss(student, x, labels, noise)
    assert all_saw(student, labels)


@pytest.mark.parametrize("mode", ["cd", "ct", "cd-cont", "ct-cont"])
def test_consistency_losses_pass_the_labels_to_student_target_and_teacher(mode):
    config = get("methods", "cm").configure("toy", mode=mode, teacher="t", init="random")
    student, teacher = spy("consistency"), spy()
    task_class = {"cd": ConsistencyDistillation, "ct": ConsistencyTraining}.get(
        mode, ContinuousConsistency)
    distiller = teacher if mode.startswith("cd") else None
    task = task_class(student, config, lambda a, b: (a - b).square().flatten(1).mean(1),
                      distiller, None)
    x, labels, noise = batch()
    task.loss(student, x, labels, noise)
    assert all_saw(student, labels)  # online pass (and the JVP's tangent pass: same module)
    if hasattr(task, "target"):
        assert all_saw(task.target, labels)
    if distiller is not None:  # CD: both Heun evaluations (or the ODE velocity) of the teacher
        assert all_saw(teacher, labels) and len(teacher.net.seen) >= 1


def test_pd_loss_passes_the_labels_to_student_and_teacher():
    student, teacher = spy(), spy()
    x, labels, noise = batch()
    PDLoss(student, teacher, pd_sigmas(4)).loss(student, x, labels, noise)
    assert all_saw(student, labels) and all_saw(teacher, labels)
    assert len(teacher.net.seen) == 2  # the teacher's two Euler steps


# ------------------------------------------------------------------ labels at sampling time

def test_drawn_labels_come_from_each_seed_alone_and_are_uniform():
    seeds = range(100, 4100)
    labels = draw_labels(seeds, 10)
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    assert torch.equal(draw_labels([1234], 10), labels[1134:1135])  # any subset, any order
    assert torch.equal(draw_labels(list(seeds)[::-1], 10), labels.flip(0))
    counts = torch.bincount(labels, minlength=10).double()
    chi2 = ((counts - 400) ** 2 / 400).sum()
    assert chi2 < 27.9  # the 99.9% quantile of χ² with 9 degrees of freedom
    assert draw_labels(seeds, 0) is None
    assert torch.equal(draw_labels(range(5), 10, 3), torch.full((5,), 3))


@pytest.mark.parametrize("num_classes, label, message", [
    (0, 2, "--class 2: this run is unconditional (num_classes=0)"),
    (10, 10, "--class 10 is out of range: this run has 10 classes, 0..9"),
    (10, -1, "--class -1 is out of range"),
])
def test_class_errors_name_the_range(num_classes, label, message):
    with pytest.raises(ValueError) as err:
        draw_labels(range(3), num_classes, label)
    assert message in str(err.value)


@pytest.fixture
def conditional_toy_run():
    """An untrained class-conditional MLP denoiser on 2D points (4 classes) as a loaded run."""
    edm = get("methods", "edm")
    config = edm.configure("toy", num_classes=4, network_kwargs={"hidden": 16, "num_layers": 1})
    denoiser = edm.build_denoiser(config, (2,))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights (the output layer starts at zero)
        for p in denoiser.net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return Run(None, config, denoiser.eval(), {"shape": [2], "kind": "points"}, 0)


def test_labels_change_the_samples_and_are_reproducible_from_the_seed(conditional_toy_run):
    edm, run = get("methods", "edm"), conditional_toy_run
    drawn = edm.sample(run, 12, seed=40, batch_size=5, steps=3)
    alone = edm.sample(run, 1, seed=47, batch_size=1, steps=3)
    # the same noise and label; the MLP's fp32 rounding differs between batches of 1 and 5
    torch.testing.assert_close(alone.x[0], drawn.x[7], rtol=1e-5, atol=1e-5)
    assert alone.labels[0] == drawn.labels[7]
    assert torch.equal(drawn.labels, draw_labels(range(40, 52), 4))
    by_class = [edm.sample(run, 12, seed=40, batch_size=12, steps=3, class_label=k)
                for k in range(4)]
    for k, samples in enumerate(by_class):
        assert samples.labels.tolist() == [k] * 12
        mine = drawn.labels == k  # the drawn-label samples are the same as asking for the class
        torch.testing.assert_close(samples.x[mine], drawn.x[mine], rtol=1e-4, atol=1e-5)  # fp32
    assert not torch.allclose(by_class[0].x, by_class[1].x, atol=1e-3)  # labels matter


def test_unconditional_samples_are_unchanged_by_the_label_plumbing():
    """Sample i of an unconditional model is EDM's deterministic sampler from z of seed SEED+i,
    computed here without generate(): the label path leaves it bit for bit as it was."""
    edm = get("methods", "edm")
    config = edm.configure("toy", network_kwargs={"hidden": 16, "num_layers": 1})
    denoiser = edm.build_denoiser(config, (2,)).eval()
    generator = torch.Generator().manual_seed(1)  # not the global one: other tests move it
    with torch.no_grad():
        for p in denoiser.net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    run = Run(None, config, denoiser, {"shape": [2], "kind": "points"}, 0)
    samples = edm.sample(run, 3, seed=9, batch_size=2, steps=3)
    assert samples.labels is None
    sigmas = [float(s) for s in edm.sigmas(config, 3)]
    # the batches sample() draws (2, then 1): the MLP's fp32 rounding depends on the batch
    for batch in ([0, 1], [2]):
        x = PhiloxGenerator([9 + i for i in batch]).randn([2]) * sigmas[0]  # the default stream
        with torch.no_grad():
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                d = (x - denoiser(x, s)) / s
                x_next = x + (s_next - s) * d
                if s_next:
                    d2 = (x_next - denoiser(x_next, s_next)) / s_next
                    x_next = x + (s_next - s) * (d + d2) / 2
                x = x_next
        torch.testing.assert_close(samples.x[batch], x)


# ------------------------------------------------------------------ the run records its classes

def test_num_classes_must_be_the_datasets():
    digits, toy = load_dataset("digits"), load_dataset("toy", n=10)
    edm = get("methods", "edm")
    check_num_classes(edm.configure("digits", num_classes=10), digits)
    check_num_classes(edm.configure("digits"), digits)  # unconditional on labelled data: fine
    with pytest.raises(ValueError, match="dataset 'digits' has 10 classes; use num_classes=10"):
        check_num_classes(edm.configure("digits", num_classes=7), digits)
    with pytest.raises(ValueError, match="dataset 'checkerboard' has no class labels"):
        check_num_classes(edm.configure("toy", num_classes=3), toy)


def test_training_refuses_another_number_of_classes(tmp_path):
    edm = get("methods", "edm")
    config = edm.configure("digits", num_classes=7, iterations=1, network_kwargs=DIGITS_NET)
    with pytest.raises(ValueError, match="has 10 classes; use num_classes=10"):
        edm.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_conditional_digits_run_trains_and_samples_a_class(tmp_path):
    runner = CliRunner()
    common = ["--dataset", "digits", "--iterations", "3", "--batch-size", "8",
              "--checkpoint-every", "3", "--network-kwargs",
              '{"model_channels": 8, "num_blocks": 1}', "--no-progress"]
    cond, plain = tmp_path / "cond", tmp_path / "plain"
    result = runner.invoke(main, ["train", "edm", *common, "--num-classes", "10",
                                  "--run-dir", str(cond)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "edm", *common, "--run-dir", str(plain)])
    assert result.exit_code == 0, result.output
    run = get("methods", "edm").load(cond)
    assert run.config.num_classes == 10 and run.denoiser.net.label_dim == 10
    assert get("methods", "edm").load(plain).denoiser.net.label_dim == 0

    def sample(run_dir, *args):
        return runner.invoke(main, ["sample", "edm", "--run", str(run_dir), "--n", "4",
                                    "--steps", "2", "--out", str(tmp_path / "s.png"),
                                    "--overwrite", *args])

    result = sample(cond, "--class", "3")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "s.npz") as f:
        assert json.loads(str(f["info"]))["labels"] == [3, 3, 3, 3]
    result = sample(cond, "--class", "10")
    assert result.exit_code == 1
    assert "--class 10 is out of range: this run has 10 classes, 0..9" in result.output
    result = sample(plain, "--class", "3")
    assert result.exit_code == 1 and "this run is unconditional" in result.output
    assert sample(plain).exit_code == 0


def test_cd_student_of_a_conditional_teacher_is_conditional(tmp_path):
    edm, cm = get("methods", "edm"), get("methods", "cm")
    teacher = tmp_path / "edm"
    edm.train(edm.configure("digits", num_classes=10, iterations=1, batch_size=4,
                            network_kwargs=DIGITS_NET), teacher, progress=False)
    config = cm.configure("digits", mode="cd", teacher=str(teacher), iterations=1,
                          batch_size=4)
    assert config.num_classes == 0  # the preset; the teacher decides
    task = cm.make_task(config, load_dataset("digits"))
    assert config.num_classes == 10 and task.net.net.label_dim == 10
