"""The CLI's typed options: samplers and their options from the registry, config choices, preset
values in the help, and `zoo edit`'s output."""

import types
from typing import Annotated

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import zoo.plugins
from zoo.cli import main
from zoo.hookspecs import hookimpl
from zoo.plugins import get

TOY_NET = {"hidden": 16, "num_layers": 1}


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    edm = get("methods", "edm")
    config = edm.configure("toy", iterations=2, batch_size=16, network_kwargs=TOY_NET,
                           dataset_options={"n": 200})
    return edm.train(config, tmp_path_factory.mktemp("edm") / "run", progress=False)


@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the settings were checked")

    monkeypatch.setattr("zoo.diffusion.samplers.NFECounter.__call__", refuse)


def test_an_option_the_sampler_does_not_take_names_its_options(edm_run, tmp_path, no_sampling):
    result = cli("sample", "edm", "--run", edm_run, "--sampler", "deis-3", "--sampler-options",
                 '{"eta": 1}', "--out", tmp_path / "s.png")
    assert result.exit_code == 1
    assert "sampler 'deis-3' takes no option eta; its options: degree (int)" in result.output
    result = cli("sample", "edm", "--run", edm_run, "--sampler", "euler", "--s-noise", "2",
                 "--out", tmp_path / "s.png")
    assert "sampler 'euler' takes no option S_noise; its options: (none)" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, message", [
    ('{"S_churn": "lots"}', "sampler 'edm-stochastic': option S_churn must be float, got 'lots'"),
    ('{"S_churn": true}', "option S_churn must be float, got True"),
    ('[1]', "--sampler-options must be a JSON object, got [1]"),
    ('{S_churn', "--sampler-options must be JSON"),
])
def test_a_sampler_option_of_the_wrong_type_is_refused(edm_run, tmp_path, no_sampling, options,
                                                       message):
    result = cli("sample", "edm", "--run", edm_run, "--sampler", "edm-stochastic",
                 "--sampler-options", options, "--out", tmp_path / "s.png")
    assert result.exit_code == 1 and message in result.output, result.output


def test_sampler_options_and_flags_reach_the_sampler(edm_run, tmp_path):
    out = tmp_path / "s.png"
    result = cli("sample", "edm", "--run", edm_run, "--n", 4, "--steps", 2, "--sampler",
                 "edm-stochastic", "--sampler-options", '{"S_churn": 5, "S_tmax": "Infinity"}',
                 "--s-noise", "0.5", "--out", out)
    assert result.exit_code == 1 and "option S_tmax must be float" in result.output
    result = cli("sample", "edm", "--run", edm_run, "--n", 4, "--steps", 2, "--sampler",
                 "edm-stochastic", "--sampler-options", '{"S_churn": 5, "S_tmax": Infinity}',
                 "--s-noise", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    import json

    info = json.loads(str(np.load(out.with_suffix(".npz"))["info"]))
    assert (info["S_churn"], info["S_tmax"], info["S_noise"]) == (5.0, float("inf"), 0.5)


def test_sampler_choices_come_from_the_registry():
    def sample_twice(denoiser, x, sigmas, *, generator=None, class_labels=None,
                     gain: Annotated[float, "Output gain."] = 2.0):
        return gain * x

    plugin = types.SimpleNamespace(
        register_samplers=hookimpl(lambda register: register("twice", sample_twice)))
    zoo.plugins.register_plugin(plugin, "test-twice")
    result = cli("sample", "edm", "--help")
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    assert "[ddim|deis-3|dpm-solver++2m|dpm-solver-2|dpm-solver-3|edm-stochastic|euler|heun|" \
           "ipndm|rhoab-deis-3|twice]" in flat
    assert "twice: gain (float, default 2.0)" in flat
    assert "consistency" not in flat.split("--sampler-options")[0]  # not for diffusion models


def test_a_config_choice_is_a_click_choice_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(type(get("methods", "cm")), "train",
                        lambda *a, **k: pytest.fail("training started"))
    result = cli("train", "cm", "--distance", "l3")
    assert result.exit_code == 2
    assert "Invalid value for '--distance': 'l3' is not one of 'l2', 'l1', 'lpips'" \
        in result.output
    assert "--distance [l2|l1|lpips]" in cli("train", "cm", "--help").output


def test_validate_uses_the_settings_choices():
    with pytest.raises(ValueError, match="lr_decay='cosine' is not one of constant, linear"):
        get("methods", "edm").configure("toy", lr_decay="cosine")


def test_train_help_shows_the_preset_values():
    """A value a study chose is marked, with the preset's as written (``--untuned``)."""
    flat = " ".join(cli("train", "edm", "--help").output.split())
    digits = get("methods", "edm").configure("digits")
    assert digits.tuned and digits.tuned["untuned"]["lr"] == 1e-3
    assert ("Peak learning rate. [presets: toy 0.002, digits "
            f"{digits.lr:g} (tuned; as written 0.001), cifar10 0.001]") in flat
    assert "--optimizer [adam|radam]" in flat


@pytest.fixture(scope="module")
def cm_run(tmp_path_factory):
    cm = get("methods", "cm")
    config = cm.configure("digits", mode="ct", iterations=2, batch_size=8,
                          network_kwargs={"model_channels": 8, "num_blocks": 1})
    return cm.train(config, tmp_path_factory.mktemp("cm") / "run", progress=False)


def test_edit_prints_only_the_sigmas_its_task_uses_and_labels_its_panels(cm_run, tmp_path):
    png = tmp_path / "d.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), np.uint8)).save(png)
    result = cli("edit", cm_run, "--task", "denoise", "--sigma", "0.5", "--input", png,
                 "--out", tmp_path / "den.png")
    assert result.exit_code == 0, result.output
    assert "sigma" not in result.output
    labelled = np.asarray(Image.open(tmp_path / "den.png").convert("L"))
    assert labelled.shape == (14 + 68, 2 + 2 * 66)  # a label strip above two 64-pixel panels
    assert (labelled[:14] < 128).any()  # the labels' text
    result = cli("edit", cm_run, "--task", "stroke", "--sigma", "5", "--input", png,
                 "--out", tmp_path / "st.png")
    assert result.exit_code == 0 and "sigmas [" in result.output, result.output


def test_the_command_line_imports_torch_only_for_a_command_that_needs_it():
    """``zoo --version`` and ``zoo --help`` answer without importing torch (seconds on a loaded
    machine); the commands import what they use when they run."""
    import subprocess
    import sys

    probe = ("import sys; from click.testing import CliRunner; from zoo.cli import main; "
             "result = CliRunner().invoke(main, sys.argv[1:]); assert result.exit_code == 0, "
             "result.output; print('torch' in sys.modules)")
    for args in (["--version"], ["--help"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                             text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "False", (args, out)


def test_a_jvp_trained_run_shows_the_user_no_warning_from_inside_torch(tmp_path):
    """A MeanFlow run's first JVP makes torch script its own decompositions, which warns of
    torch.jit.script's deprecation; the command line's warnings are the user's to act on, so that
    one is not shown (in a fresh process: the warning comes once per process)."""
    import subprocess
    import sys

    probe = ("import sys; from click.testing import CliRunner; from zoo.cli import main; "
             "result = CliRunner().invoke(main, sys.argv[1:]); "
             "assert result.exit_code == 0, result.output; print(result.output)")
    out = subprocess.run(
        [sys.executable, "-c", probe, "train", "meanflow", "--dataset", "toy", "--iterations",
         "1", "--batch-size", "8", "--network-kwargs", '{"hidden": 16, "num_layers": 1}',
         "--run-dir", str(tmp_path / "mf"), "--no-progress"],
        capture_output=True, text=True, check=True)
    assert (tmp_path / "mf" / "checkpoint.pt").exists()
    assert "jit.script" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_train_help_shows_each_modes_own_preset_values_and_the_real_defaults():
    """CT∞'s cifar10 learning rate and CT's μ form are their own, not CD's; settings no preset
    changes show their own default (``--device auto``, not this machine's resolution of it)."""
    cm = get("methods", "cm")
    text = " ".join(cli("train", "cm", "--help").output.split())
    ct, cd = cm.configure("cifar10", mode="ct"), cm.configure("cifar10", mode="cd")
    cd_cont, ct_cont = (cm.configure("cifar10", mode=m) for m in ("cd-cont", "ct-cont"))
    assert ct_cont.lr != cd_cont.lr and ct.ct_mu_form != cd.ct_mu_form
    assert (f"cifar10 cd {cd.lr:g} / ct {ct.lr:g} / cd-cont {cd_cont.lr:g} / "
            f"ct-cont {ct_cont.lr:g}") in text
    assert f"cd {cd.ct_mu_form} / ct {ct.ct_mu_form}" in text
    assert "or cuda:N. [default: auto]" in text and "cifar10 cpu" not in text
    assert "Adam β1. [default: 0.9]" in text
    assert "uniform-u (every u" in text  # every accepted weighting is described


def test_sample_help_gives_an_example_the_methods_own_sampler_takes():
    text = " ".join(cli("sample", "cm", "--help").output.split())
    assert "S_churn" not in text and "e.g. '{\"sigma_min\": 0.002}'" in text
    text = " ".join(cli("sample", "edm", "--help").output.split())
    assert "e.g. '{\"" in text


def test_a_settings_file_is_read_under_the_flags_and_written_by_a_dry_run(tmp_path):
    """--config FILE.toml: its settings over the preset, the flags over it; --dry-run
    --write-config writes the settings, which --config reads back to the same run."""
    import json

    def settings(*args):
        result = cli("train", "cm", *args, "--dry-run")
        lines = result.output.splitlines()
        end = next(i for i, line in enumerate(lines) if line.startswith("run directory:"))
        return json.loads("\n".join(lines[1:end]))

    (tmp_path / "ct.toml").write_text(
        'dataset = "toy"\nmode = "ct"\nlr = 0.0005\niterations = 300\n'
        'network_kwargs = { hidden = 24, num_layers = 2 }\n')
    from_file = settings("--config", tmp_path / "ct.toml", "--lr", "0.0007")
    assert (from_file["mode"], from_file["lr"], from_file["iterations"]) == ("ct", 0.0007, 300)
    assert from_file["network_kwargs"]["hidden"] == 24  # merged into the preset's
    written = tmp_path / "out.toml"
    cli("train", "cm", "--config", tmp_path / "ct.toml", "--lr", "0.0007", "--dry-run",
        "--write-config", written)
    assert settings("--config", written) == from_file
    (tmp_path / "bad.toml").write_text("lr = 0.1\nlearning_rate = 3\n")
    result = cli("train", "cm", "--config", tmp_path / "bad.toml", "--dry-run")
    assert result.exit_code == 1 and "learning_rate are not settings of CMConfig" in result.output
    result = cli("train", "cm", "--write-config", written)
    assert result.exit_code == 1 and "pass --dry-run too" in result.output
