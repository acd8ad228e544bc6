"""The EDM plugin: its loss against Table 1 and the train/sample command line end to end."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from zoo_edm import EDMConfig, EDMLoss

import zoo.plugins
from zoo.cli import main
from zoo.training import BatchNoise


class Spy(torch.nn.Module):
    """A 'denoiser' that records what it is called with and is off by exactly 1 everywhere."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, sigma, class_labels=None):
        self.calls.append((x.clone(), sigma.clone()))
        return self.clean + 1


def test_edm_loss_follows_table_1():
    spy = Spy()
    task = EDMLoss(spy, EDMConfig())
    x = torch.randn(20_000, 2) * 0.5
    spy.clean = x
    loss = task.loss(spy, x, None, BatchNoise(0, 0, len(x)))
    ((x_noisy, sigma),) = spy.calls
    # ln σ ~ N(P_mean, P_std²)
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.03)
    # the input is x + σ·n with n ~ N(0, I)
    n = (x_noisy - x) / sigma[:, None]
    assert n.mean().item() == pytest.approx(0, abs=0.02) and n.std().item() == pytest.approx(
        1, abs=0.02
    )
    # error 1 everywhere => the per-sample loss is the weight λ(σ) = (σ² + σ_d²)/(σ·σ_d)²
    torch.testing.assert_close(loss, (sigma**2 + 0.25) / (sigma * 0.5) ** 2)


@pytest.fixture
def tiny_edm_run(tmp_path):
    run = tmp_path / "edm"
    args = [
        "train",
        "edm",
        "--dataset",
        "toy",
        "--run-dir",
        str(run),
        "--iterations",
        "6",
        "--batch-size",
        "32",
        "--network-kwargs",
        '{"hidden": 16, "num_layers": 1}',
        "--dataset-options",
        '{"n": 500}',
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run


def test_cli_train_then_sample_records_sampler_and_nfe(tiny_edm_run, tmp_path):
    out = tmp_path / "s.png"
    result = CliRunner().invoke(
        main,
        [
            "sample",
            "edm",
            "--run",
            str(tiny_edm_run),
            "--steps",
            "3",
            "--n",
            "10",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
    npz = np.load(out.with_suffix(".npz"))
    info = json.loads(str(npz["info"]))
    assert npz["samples"].shape == (10, 2)
    assert (info["method"], info["sampler"], info["nfe"], info["steps"]) == ("edm", "heun", 5, 3)
    assert info["seeds"] == [0, 9]


def test_cli_sample_errors_are_clear(tiny_edm_run, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(main, ["sample", "edm", "--run", str(tiny_edm_run), "--sampler", "rk4"])
    assert bad.exit_code == 2 and "'rk4' is not one of 'ddim'," in bad.output
    missing = runner.invoke(main, ["sample", "edm", "--run", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "no checkpoint at" in missing.output
    data = runner.invoke(main, ["train", "edm", "--dataset", "mnist"])
    assert data.exit_code == 1 and "unknown dataset 'mnist'; valid:" in data.output
    net = runner.invoke(
        main,
        ["train", "edm", "--network", "resnet", "--run-dir", str(tmp_path / "r"), "--no-progress"],
    )
    assert net.exit_code == 1 and "unknown network 'resnet'; valid:" in net.output


def test_resume_from_cli_continues(tiny_edm_run):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "edm",
            "--run-dir",
            str(tiny_edm_run),
            "--resume",
            "--iterations",
            "8",
            "--batch-size",
            "32",
            "--network-kwargs",
            '{"hidden": 16, "num_layers": 1}',
            "--dataset-options",
            '{"n": 500}',
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert zoo.training.load_checkpoint(tiny_edm_run)["step"] == 8


def test_digits_sample_grid(tmp_path):
    run = tmp_path / "digits"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "edm",
            "--dataset",
            "digits",
            "--run-dir",
            str(run),
            "--iterations",
            "2",
            "--batch-size",
            "8",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        main, ["sample", "edm", "--run", str(run), "--steps", "2", "--n", "4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(out).size[0] > 64  # upscaled grid of 8×8 digits
    assert np.load(out.with_suffix(".npz"))["samples"].shape == (4, 1, 8, 8)
