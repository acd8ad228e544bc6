"""The ``adm`` network against the upstream code it reimplements, and openai's imported runs.

The reference values in tests/fixtures/adm_reference.pt were made by
tests/fixtures/make_adm_fixture.py, which ran, unmodified, openai/consistency_models @ e32b69e
(cm/unet.py ``UNetModel``; cm/karras_diffusion.py ``KarrasDenoiser`` with ``distillation=True``
and ``karras_sample`` with sampler ``onestep`` and ``multistep``, ``ts=0,22,39``, ``steps=40``)
and NVlabs/edm @ 008a4e5 (training/networks.py ``DhariwalUNet``) on small random
configurations: class-conditional (10 classes), attention at two resolutions with several heads,
scale-shift norm, resblock up/down. flash_attn, mpi4py, blobfile, requests and piq were stubbed
(flash_attn by its documented softmax(q·kᵀ/√d)·v contract); the upstream parameters were filled by
``fixture_parameters`` (an integer hash, reproduced here) and loaded with ``strict=True``. The
fixture keeps the upstream parameter names and shapes, the inputs, the random draws of the
samplers and the upstream outputs.
"""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

import zoo.plugins
from zoo.diffusion.samplers import sample_consistency
from zoo.importers import OPENAI_PRESETS, import_openai_run, karras_sigma
from zoo.nets import build_network
from zoo.nets.adm import ADMUNet, dhariwal_state_dict_to_adm, dhariwal_to_adm_kwargs

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_adm_fixture",
                                               FIXTURES / "make_adm_fixture.py")
make_adm_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_adm_fixture)


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURES / "adm_reference.pt", weights_only=True)


def openai_adm_kwargs(kwargs: dict) -> dict:
    """``adm`` options for cm/unet.py ``UNetModel(**kwargs)`` (attention given there as
    downsampling rates, here as resolutions)."""
    return dict(model_channels=kwargs["model_channels"], channel_mult=kwargs["channel_mult"],
                num_res_blocks=kwargs["num_res_blocks"],
                attn_resolutions=[kwargs["image_size"] // ds
                                  for ds in kwargs["attention_resolutions"]],
                num_head_channels=kwargs["num_head_channels"],
                use_scale_shift_norm=kwargs["use_scale_shift_norm"],
                resblock_updown=kwargs["resblock_updown"], dropout=kwargs["dropout"],
                noise_label_scale=1000.0)


def openai_adm(reference) -> ADMUNet:
    ref = reference["openai"]
    net = build_network("adm", (3, 8, 8), ref["kwargs"]["num_classes"],
                        **openai_adm_kwargs(ref["kwargs"])).eval()
    net.load_state_dict(make_adm_fixture.fixture_parameters(ref["shapes"]), strict=True)
    return net


def test_adm_loads_openai_unetmodel_state_dict_strictly_and_matches_its_outputs(reference):
    ref = reference["openai"]
    net = openai_adm(reference)
    assert list(net.state_dict()) == list(ref["shapes"])  # openai's names, in openai's order
    sigmas = torch.exp(ref["timesteps"] / 250)  # the fixture fed UNetModel 1000·¼·ln σ
    c_noise = sigmas.log() / 4  # EDM's c_noise, as zoo's Denoiser passes it
    torch.testing.assert_close(c_noise * 1000, ref["timesteps"], rtol=1e-6, atol=1e-4)
    with torch.no_grad():
        out = net(ref["x"], ref["timesteps"] / 1000, ref["y"])
    torch.testing.assert_close(out, ref["out"], rtol=1e-5, atol=1e-5)


def test_dhariwal_key_map_gives_edm_dhariwalunet_outputs(reference):
    ref = reference["edm"]
    edm_state = {**make_adm_fixture.fixture_parameters(ref["shapes"]), **ref["buffers"]}
    net = ADMUNet(**dhariwal_to_adm_kwargs(ref["kwargs"])).eval()
    net.load_state_dict(dhariwal_state_dict_to_adm(edm_state), strict=True)
    with torch.no_grad():
        out = net(ref["x"], ref["noise_labels"], ref["class_labels"])
    torch.testing.assert_close(out, ref["out"], rtol=1e-5, atol=1e-5)


def test_dhariwal_without_64_channel_heads_is_refused():
    with pytest.raises(ValueError, match="attention on 32 channels"):
        dhariwal_to_adm_kwargs(dict(img_resolution=8, model_channels=32, channel_mult=[1, 1]))


def test_class_labels_change_the_output_and_indices_equal_one_hot(reference):
    net = openai_adm(reference)
    x, noise = torch.randn(2, 3, 8, 8), torch.full((2,), 0.3)
    with torch.no_grad():
        a = net(x, noise, torch.tensor([1, 1]))
        b = net(x, noise, torch.tensor([7, 7]))
        one_hot = net(x, noise, torch.nn.functional.one_hot(torch.tensor([1, 1]), 10).float())
    assert (a - b).abs().max() > 1e-2
    torch.testing.assert_close(one_hot, a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="class_labels must be"):
        net(x, noise, torch.tensor([[1, 2, 3]]))


def fixture_checkpoint(ref: dict, path: Path) -> Path:
    """The fixture's openai network saved like a released file (a state dict)."""
    torch.save(make_adm_fixture.fixture_parameters(ref["shapes"]), path)
    return path


def shrunk_preset(ref: dict, name: str):
    """The released file's preset ``name`` shrunk to the fixture's architecture (8×8 images)."""
    return dataclasses.replace(OPENAI_PRESETS[name], shape=(3, 8, 8),
                               network_kwargs=openai_adm_kwargs(ref["kwargs"]),
                               num_classes=ref["kwargs"]["num_classes"])


@pytest.fixture
def imported_cd_run(reference, tmp_path):
    """The fixture's openai network saved like a released file (a state dict) and imported with
    the cd-imagenet64-l2 preset, shrunk to the fixture's architecture."""
    ref = reference["openai"]
    checkpoint = fixture_checkpoint(ref, tmp_path / "cd_tiny.pt")
    run = import_openai_run(checkpoint, tmp_path / "run", shrunk_preset(ref, "cd-imagenet64-l2"),
                            method="cm", check_data=False)
    return zoo.plugins.get("methods", "cm").load(run)


class Replay:
    """Hands out the random draws openai's sampler made, in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def randn_like(self, x):
        return self.draws.pop(0)


@pytest.mark.parametrize("sampler", ["onestep", "multistep"])
def test_imported_cd_run_samples_like_openai_karras_sample(reference, imported_cd_run, sampler):
    ref = reference["openai"]
    draws = ref["sampling"][sampler]["draws"]
    x_T = draws[0] * 80.0  # karras_sample: generator.randn(*shape) * sigma_max
    if sampler == "onestep":  # sample_onestep: f(x_T, σ_0) at σ_0 of the fp32 40-point grid
        sigmas = [float(torch.tensor(karras_sigma(0, ref["steps"]), dtype=torch.float32))]
    else:  # stochastic_iterative_sampler with ts = 0, 22, 39: the run's default 2-step σ
        sigmas = zoo.plugins.get("methods", "cm").step_sigmas(imported_cd_run.config, 2)
        assert sigmas == [karras_sigma(t, ref["steps"]) for t in ref["ts"][:2]]
    with torch.no_grad():
        x = sample_consistency(imported_cd_run.denoiser, x_T, sigmas, generator=Replay(draws[1:]),
                               class_labels=ref["y"], sigma_min=0.002, clip=(-1.0, 1.0))
    torch.testing.assert_close(x, ref["sampling"][sampler]["sample"], rtol=1e-5, atol=1e-5)


def test_imported_run_records_the_data_without_needing_it(imported_cd_run):
    assert imported_cd_run.dataset == {"name": "imagenet64", "checksum": None,
                                       "shape": [3, 8, 8], "kind": "image"}
    c = imported_cd_run.config
    assert (c.network, c.network_kwargs["noise_label_scale"], c.mode, c.distance) == (
        "adm", 1000.0, "cd", "l2")
    assert imported_cd_run.denoiser.parameterization == "consistency"


def test_presets_follow_openai_launch_script():
    imagenet, bedroom = OPENAI_PRESETS["cd-imagenet64-lpips"], OPENAI_PRESETS["ct-lsun-bedroom256"]
    assert imagenet.num_classes == 1000 and imagenet.shape == (3, 64, 64)
    assert bedroom.num_classes == 0
    assert bedroom.network_kwargs["use_scale_shift_norm"] is False
    assert OPENAI_PRESETS["edm-imagenet64"].network_kwargs["dropout"] == 0.1
    assert OPENAI_PRESETS["ct-imagenet64"].method_fields["sample_sigmas"] == (
        f"{karras_sigma(0, 201)!r},{karras_sigma(106, 201)!r}")
    # the ImageNet-64 network has openai's parameter count for these flags (296M for 192 ch.)
    with torch.device("meta"):
        net = build_network("adm", imagenet.shape, imagenet.num_classes,
                            **imagenet.network_kwargs)
    assert 290e6 < sum(p.numel() for p in net.parameters()) < 300e6


def test_released_runs_bench_against_a_reference_batch_without_data_or_teacher(reference,
                                                                               tmp_path,
                                                                               monkeypatch):
    """openai's CD and CT imagenet64 checkpoints (the fixture network, imported without the
    data) bench against an openai-format reference batch on a machine without ImageNet-64 and
    without an EDM run: sampling them needs no teacher, the --ref file no training set. A
    reference batch of another resolution is refused, naming both."""
    import numpy as np
    from test_metrics import PixelFD

    from zoo.bench import run_bench

    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "no-data"))
    ref = reference["openai"]
    checkpoint = fixture_checkpoint(ref, tmp_path / "tiny.pt")
    root = tmp_path / "runs"
    for run, preset in (("cm-cd-l2", "cd-imagenet64-l2"), ("cm-ct", "ct-imagenet64")):
        shrunk = shrunk_preset(ref, preset)
        with pytest.warns(UserWarning, match="imagenet64's files are not here"):
            import_openai_run(checkpoint, root / "imagenet64" / run, shrunk, method="cm")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "VIRTUAL_tiny.npz",
             arr_0=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "VIRTUAL_16.npz",
             arr_0=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))
    zoo.plugins.register_plugin(PixelFD("adm"), "pixels-adm")
    try:
        report = run_bench(["cm"], "imagenet64", runs_root=root, n=32, batch_size=16,
                           metrics=["fd-pixels-adm"], ref=tmp_path / "VIRTUAL_tiny.npz",
                           out=tmp_path / "bench", progress=False, echo=lambda m: None)
        assert [(r.row.label, r.row.nfe) for r in report.results] == [
            ("CD (L2)", 1), ("CD (L2)", 2), ("CT (LPIPS)", 1), ("CT (LPIPS)", 2)]
        assert all(np.isfinite(r.metrics["FD-pixels"]) for r in report.results)
        assert not (root / "imagenet64" / "edm").exists()
        import hashlib
        import json

        table = json.loads((tmp_path / "bench" / "table.json").read_text())
        assert table["reference_sha256"] == hashlib.sha256(
            (tmp_path / "VIRTUAL_tiny.npz").read_bytes()).hexdigest()  # the file measured against
        with pytest.raises(ValueError, match=r"--ref .*VIRTUAL_16.npz holds 16×16 images, but "
                                             r"the samples of dataset 'imagenet64' are 8×8"):
            run_bench(["cm"], "imagenet64", runs_root=root, n=32, metrics=["fd-pixels-adm"],
                      ref=tmp_path / "VIRTUAL_16.npz", out=tmp_path / "bench16", progress=False)
    finally:
        zoo.plugins.unregister_plugin("pixels-adm")


def test_a_preset_file_describes_another_openai_checkpoint(reference, tmp_path):
    """``--preset FILE.toml``: the fixture network described in a file imports the same run as
    the built-in preset shrunk to it; a file missing what a preset needs is refused naming it."""
    from click.testing import CliRunner

    from zoo.cli import main
    from zoo.settings_file import write_settings

    ref = reference["openai"]
    checkpoint = fixture_checkpoint(ref, tmp_path / "tiny.pt")
    built_in = shrunk_preset(ref, "cd-imagenet64-l2")
    expected = import_openai_run(checkpoint, tmp_path / "built-in", built_in, check_data=False)
    write_settings({k: v for k, v in dataclasses.asdict(built_in).items() if k != "file"},
                   tmp_path / "mine.toml")
    result = CliRunner().invoke(main, ["import-openai", str(checkpoint), "--preset",
                                       str(tmp_path / "mine.toml"), "--out",
                                       str(tmp_path / "mine"), "--no-check-data"])
    assert result.exit_code == 0, result.output
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (expected,
                                                                          tmp_path / "mine"))
    import json

    same = lambda c: json.loads(json.dumps(c))  # noqa: E731 - tuples and lists alike
    assert same(a["config"]) == same(b["config"]) and a["ema"].keys() == b["ema"].keys()
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    (tmp_path / "bad.toml").write_text('method = "cm"\nshape = [3, 8, 8]\n')
    result = CliRunner().invoke(main, ["import-openai", str(checkpoint), "--preset",
                                       str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "missing dataset, network_kwargs" in result.output
