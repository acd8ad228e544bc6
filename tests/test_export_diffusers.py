"""`zoo export --format diffusers`: a cm run of the adm network sampled by diffusers' own
ConsistencyModelPipeline gives `zoo sample cm`'s samples on the same seeds, and an openai network
imported from upstream's own outputs gives openai's ``karras_sample`` samples."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo.plugins
from zoo.cli import main
from zoo.diffusion.random import noise_stream
from zoo.export import ExportError
from zoo.importers import OPENAI_PRESETS, import_openai_run, save_weights_run
from zoo.training import load_checkpoint

diffusers = pytest.importorskip("diffusers")
from diffusers.schedulers import scheduling_consistency_models  # noqa: E402

from zoo.export_diffusers import export_diffusers, karras_grid  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_adm_fixture",
                                               FIXTURES / "make_adm_fixture.py")
make_adm_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_adm_fixture)

#: A tiny ADM with openai's ImageNet-64 layout (residual up/down, scale-shift norm, attention at
#: the lower level and in the middle, 16-channel heads).
ADM_TINY = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                num_head_channels=16, resblock_updown=True, use_scale_shift_norm=True)


def karras(index: int, points: int) -> float:
    """σ_index of the Karras grid (EDM Eq. 5) with σ_min 0.002, σ_max 80, ρ 7, by hand."""
    hi, lo = 80 ** (1 / 7), 0.002 ** (1 / 7)
    return (hi + index / (points - 1) * (lo - hi)) ** 7


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """Three CT steps of a class-conditional adm on 8×8 digits; EMA ≠ trained weights. Its
    two-step σ are openai's CD ImageNet-64 ones: σ_0, σ_22 of the 40-point grid."""
    cm = zoo.plugins.get("methods", "cm")
    config = cm.configure("digits", mode="ct", init="random", network="adm",
                          network_kwargs=ADM_TINY, num_classes=10, iterations=3, batch_size=8,
                          lr=1e-3, lr_warmup=0, ema_rate=0.5, ema_halflife_kimg=0.0,
                          checkpoint_every=3, log_every=3, snapshot_every_kimg=0,
                          sample_sigmas=f"80,{karras(22, 40)!r}")
    return cm.train(config, tmp_path_factory.mktemp("runs") / "cm-ct", progress=False)


def weights_run(run_dir, method="cm", network="adm", network_kwargs=ADM_TINY, sample_sigmas=None,
                shape=(3, 8, 8)):
    """A step-0 run of ``method`` holding its network's random initialisation (no data)."""
    m = zoo.plugins.get("methods", method)
    fields = {"sample_sigmas": sample_sigmas} if sample_sigmas else {}
    config = m.config_class(method=method, dataset="imagenet64", network=network,
                            network_kwargs=network_kwargs, **fields)
    weights = m.build_denoiser(config, shape).state_dict()
    data = {"name": "imagenet64", "checksum": None, "shape": list(shape), "kind": "image"}
    return save_weights_run(run_dir, config, data, weights, {"file": "random"})


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory):
    """An unconditional RGB adm with convolutional resampling and additive noise embedding;
    σ 80 and openai's CT ImageNet-64 σ_106 of the 201-point grid (= σ_53 of 101 points)."""
    kwargs = dict(ADM_TINY, resblock_updown=False, use_scale_shift_norm=False)
    return weights_run(tmp_path_factory.mktemp("runs") / "cm", network_kwargs=kwargs,
                       sample_sigmas=f"80,{karras(106, 201)!r}")


def pipeline_samples(path, seeds, labels, **steps):
    """The exported pipeline's samples in [−1, 1], one generator per sample seeded by its seed."""
    pipe = diffusers.ConsistencyModelPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=len(seeds), class_labels=labels, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in seeds], **steps).images
    return images * 2 - 1  # the pipeline returns (x + 1)/2 clamped to [0, 1]


@pytest.mark.parametrize("which, timesteps", [("conditional_run", [22, 0]),
                                              ("unconditional_run", [53, 0])])
def test_diffusers_pipeline_samples_like_zoo(request, which, timesteps, tmp_path):
    run = request.getfixturevalue(which)
    out = tmp_path / "pipe"
    result = CliRunner().invoke(main, ["export", str(run), "--format", "diffusers",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"timesteps={timesteps}" in result.output
    cm = zoo.plugins.get("methods", "cm")
    loaded = cm.load(run)
    seeds = list(range(5, 11))
    two_steps = {"num_inference_steps": None, "timesteps": timesteps}
    for nfe, steps in ((1, {"num_inference_steps": 1}), (2, two_steps)):
        with noise_stream("torch"):  # the pipeline's per-sample torch.Generators
            ours = cm.sample(loaded, len(seeds), seed=seeds[0], nfe=nfe)
        theirs = pipeline_samples(out, seeds, ours.labels, **steps)
        assert ours.x.abs().max() > 0.05 and (ours.x - ours.x.mean(0)).abs().max() > 0.05
        torch.testing.assert_close(theirs, ours.x, rtol=0, atol=1e-5)


def test_exported_configs_are_the_runs(conditional_run, tmp_path):
    path, timesteps = export_diffusers(conditional_run, tmp_path / "pipe")
    state = load_checkpoint(conditional_run)
    config, shape = state["config"], state["dataset"]["shape"]
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    unet = json.loads((path / "unet" / "config.json").read_text())
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "ConsistencyModelPipeline"
    assert scheduler["_class_name"] == "CMStochasticIterativeScheduler"
    for key in ("sigma_min", "sigma_max", "sigma_data", "rho"):
        assert scheduler[key] == config[key]
    assert scheduler["num_train_timesteps"] == 40 and timesteps == [22, 0]
    assert scheduler["clip_denoised"] is True
    assert unet["_class_name"] == "UNet2DModel"
    assert unet["num_class_embeds"] == config["num_classes"] == 10
    assert [unet["in_channels"], unet["sample_size"], unet["sample_size"]] == shape
    assert unet["block_out_channels"] == [32, 64] and unet["layers_per_block"] == 1


def test_ema_by_default_raw_on_request(conditional_run, tmp_path):
    state = load_checkpoint(conditional_run)
    name = "net.input_blocks.0.0.weight"  # the first convolution: UNet2DModel's conv_in
    assert not torch.equal(state["ema"][name], state["net"][name])
    for weights in ("ema", "raw"):
        path, _ = export_diffusers(conditional_run, tmp_path / weights, weights=weights)
        unet = diffusers.UNet2DModel.from_pretrained(str(path / "unet"))
        expected = state["ema" if weights == "ema" else "net"][name]
        assert torch.equal(unet.conv_in.weight.detach(), expected)


def test_karras_grid_is_the_smallest_holding_the_sigmas():
    assert karras_grid([80.0, karras(22, 40)], 0.002, 80.0, 7.0) == (40, [0, 22])
    assert karras_grid([80.0, karras(106, 201)], 0.002, 80.0, 7.0) == (101, [0, 53])
    assert karras_grid([80.0], 0.002, 80.0, 7.0) == (2, [0])
    assert karras_grid([80.0, 0.8 * (1 + 1e-3)], 0.002, 80.0, 7.0, max_points=50) is None


def test_runs_without_a_diffusers_equivalent_are_refused(tmp_path):
    edm = weights_run(tmp_path / "edm", method="edm")
    result = CliRunner().invoke(main, ["export", str(edm), "--format", "diffusers", "--out",
                                       str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "edm run of the adm network" in result.output
    assert "supports a consistency-model run (method cm) of the adm network" in result.output
    assert not (tmp_path / "x").exists()
    song = weights_run(tmp_path / "song", network="ddpmpp-small", network_kwargs={})
    with pytest.raises(ExportError, match="cm run of the ddpmpp-small network"):
        export_diffusers(song, tmp_path / "x")
    scale = weights_run(tmp_path / "scale", network_kwargs=dict(ADM_TINY, noise_label_scale=1.0))
    with pytest.raises(ExportError, match="noise_label_scale=1000"):
        export_diffusers(scale, tmp_path / "y")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_diffusers(weights_run(tmp_path / "ok"), tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


@pytest.fixture(scope="module")
def openai_pipe(tmp_path_factory):
    """tests/fixtures/adm_reference.pt's openai ``UNetModel`` (its parameters, made by upstream
    code; test_adm.py) imported with the cd-imagenet64-l2 preset and exported."""
    ref = torch.load(FIXTURES / "adm_reference.pt", weights_only=True)["openai"]
    tmp = tmp_path_factory.mktemp("openai")
    torch.save(make_adm_fixture.fixture_parameters(ref["shapes"]), tmp / "cd_tiny.pt")
    kwargs = ref["kwargs"]
    adm = dict(model_channels=kwargs["model_channels"], channel_mult=kwargs["channel_mult"],
               num_res_blocks=kwargs["num_res_blocks"],
               attn_resolutions=[kwargs["image_size"] // ds
                                 for ds in kwargs["attention_resolutions"]],
               num_head_channels=kwargs["num_head_channels"],
               use_scale_shift_norm=kwargs["use_scale_shift_norm"],
               resblock_updown=kwargs["resblock_updown"], dropout=kwargs["dropout"])
    preset = dataclasses.replace(OPENAI_PRESETS["cd-imagenet64-l2"], shape=(3, 8, 8),
                                 network_kwargs=adm, num_classes=kwargs["num_classes"])
    run = import_openai_run(tmp / "cd_tiny.pt", tmp / "run", preset, check_data=False)
    path, timesteps = export_diffusers(run, tmp / "pipe")
    assert timesteps == [22, 0]  # openai's --ts 0,22,39 --steps 40, as diffusers' docs pass it
    pipe = diffusers.ConsistencyModelPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe, ref


@pytest.mark.parametrize("sampler, steps", [
    ("onestep", {"num_inference_steps": 1}),
    ("multistep", {"num_inference_steps": None, "timesteps": [22, 0]}),
])
def test_exported_openai_network_samples_like_openai_karras_sample(openai_pipe, sampler, steps,
                                                                    monkeypatch):
    """The pipeline replays the draws upstream's sampler made (x_T, then one per step; the
    scheduler's last draw is scaled by √(σ_min² − σ_min²) = 0) and gives its samples."""
    pipe, ref = openai_pipe
    draws = list(ref["sampling"][sampler]["draws"])
    x_T = draws.pop(0)
    monkeypatch.setattr(scheduling_consistency_models, "randn_tensor",
                        lambda shape, **_: draws.pop(0) if draws else torch.zeros(shape))
    images = pipe(batch_size=len(ref["y"]), class_labels=ref["y"], latents=x_T,
                  output_type="pt", **steps).images
    assert not draws  # every upstream draw was used
    torch.testing.assert_close(images * 2 - 1, ref["sampling"][sampler]["sample"], rtol=0,
                               atol=1e-5)
