"""The paper's CIFAR-10 Flax checkpoints (openai/consistency_models_cifar10) imported without JAX.

tests/fixtures/jcm_checkpoint_4 is a training State written by the repository's own
``checkpoints.save_checkpoint`` for a small NCSN++ of the released configuration, and
jcm_reference.npz that network's outputs through the repository's ``get_denoiser_fn`` and
``get_distiller_fn`` (tests/fixtures/make_jcm_fixture.py ran the upstream code unmodified, on
JAX; its parameters are seeded random values, so no layer is a no-op).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zoo.plugins
from zoo.cli import main
from zoo.importers import (
    JAX_PRESETS,
    ImportFileError,
    import_jax_run,
    ncsnpp_state_dict,
    read_flax_checkpoint,
)
from zoo.nets import NCSNPP_CIFAR10
from zoo.nets.songunet import SongUNet

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "jcm_checkpoint_4"
#: make_jcm_fixture.py's network: the released NCSN++ with nf 4, ch_mult (1, 2, 3), one block per
#: resolution, attention at 4×4, 8×8 images.
TINY = dict(model_channels=4, channel_mult=[1, 2, 3], num_blocks=1, attn_resolutions=[4])


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "jcm_reference.npz", allow_pickle=False) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files}


@pytest.fixture(scope="module")
def state():
    return read_flax_checkpoint(CHECKPOINT)


def test_the_training_state_reads_without_jax(state):
    assert set(state) == {"step", "lr", "ema_rate", "params", "params_ema", "model_state",
                          "opt_state", "rng_state"}
    assert state["step"] == 4 and state["ema_rate"] == pytest.approx(0.9999)
    assert state["params_ema"]["Conv_0"]["kernel"].shape == (3, 3, 3, 4)  # HWIO


def test_ncsnpp_holds_the_official_network_and_gives_its_outputs(state, reference):
    net = SongUNet(img_resolution=8, in_channels=3, out_channels=3,
                   **{**NCSNPP_CIFAR10, **TINY, "dropout": 0.0}).eval()
    net.load_state_dict(ncsnpp_state_dict(state["params_ema"], TINY, 8), strict=True)
    x, t = reference["x"], reference["t"]
    with torch.no_grad():  # the network's own input: c_in·x and c_noise = ¼·ln t
        out = net(x / torch.sqrt(t**2 + 0.25)[:, None, None, None], 0.25 * t.log())
    torch.testing.assert_close(out, reference["raw"], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("preset, output", [("edm-cifar10", "denoiser"),
                                            ("cd-lpips", "consistency"),
                                            ("ct-lpips", "consistency"),
                                            ("cd-cont-l2-stopgrad", "consistency")])
def test_imported_runs_give_the_official_denoiser_and_consistency_function(
        reference, tmp_path, preset, output):
    """EDM's preconditioning for the teacher, f(x, t) with t_min = 0.002 for CD/CT, at six
    noise levels from t_min (where f is the identity) to t_max = 80 (one-step sampling)."""
    run_dir = import_jax_run(CHECKPOINT, tmp_path / "run", preset, check_data=False,
                             network_kwargs={**TINY, "img_resolution": 8})
    run = zoo.plugins.get("methods", JAX_PRESETS[preset].method).load(run_dir)
    with torch.no_grad():
        out = run.denoiser(reference["x"], reference["t"])
    torch.testing.assert_close(out, reference[output], rtol=1e-5, atol=2e-5)
    if output == "consistency":
        torch.testing.assert_close(out[0], reference["x"][0], rtol=0, atol=1e-6)  # f(x, ε) = x
    assert run.config.method == JAX_PRESETS[preset].method


def test_the_cli_imports_the_ema_or_the_online_weights(state, tmp_path):
    args = ["import-openai-jax", str(CHECKPOINT), "--preset", "cd-l2", "--network-kwargs",
            '{"model_channels": 4, "channel_mult": [1, 2, 3], "num_blocks": 1, '
            '"attn_resolutions": [4], "img_resolution": 8}', "--no-check-data"]
    runner = CliRunner()
    for weights in ("ema", "online"):
        result = runner.invoke(main, [*args, "--out", str(tmp_path / weights),
                                      "--weights", weights])
        assert result.exit_code == 0, result.output
        assert f"imported the {weights} weights" in result.output
    cm = zoo.plugins.get("methods", "cm")
    ema, online = cm.load(tmp_path / "ema"), cm.load(tmp_path / "online")
    expected = ncsnpp_state_dict(state["params"], TINY, 8)
    for key, value in online.denoiser.net.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    conv = "enc.8x8_conv.weight"
    assert not torch.equal(ema.denoiser.net.state_dict()[conv],
                           online.denoiser.net.state_dict()[conv])
    assert ema.config.distance == "l2" and ema.config.mode == "cd"


def test_flax_chunked_arrays_are_joined():
    """Flax writes arrays over 1 GiB in chunks (the fixture: its layout at a 40-byte limit)."""
    tree = read_flax_checkpoint(FIXTURES / "flax_chunked.msgpack")
    np.testing.assert_array_equal(tree["a"], np.arange(30, dtype=np.float32).reshape(5, 6))
    assert tree["b"] == np.float32(2.5)


def _ext_array(shape, dtype, buffer):
    return msgpack.ExtType(1, msgpack.packb((shape, dtype, buffer), use_bin_type=True))


@pytest.mark.parametrize("content, message", [
    (CHECKPOINT.read_bytes()[:200_000], "Unpack failed: incomplete input"),
    (msgpack.packb({"params_ema": {"W": _ext_array([2], "complex64", b"\0" * 16)}}),
     "an array of dtype 'complex64'"),
    (msgpack.packb({"params_ema": {"W": _ext_array([3], "float32", b"\0" * 8)}}),
     r"shape \(3,\) \(float32\) with 8 bytes instead of 12 \(damaged\)"),
    (msgpack.packb({"params": {}}), "has no 'params_ema' parameter tree"),
    (msgpack.packb([1, 2]), "holds a msgpack list"),
    (b"", "is empty"),
], ids=["truncated", "complex", "short-array", "no-ema", "a-list", "empty"])
def test_damaged_or_other_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "checkpoint_80"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=message) as info:
        import_jax_run(path, tmp_path / "run", "cd-lpips", check_data=False)
    assert str(path) in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_pytorch_file_points_to_the_other_importers(tmp_path):
    with pytest.raises(ImportFileError, match="zip archive.*zoo import-openai"):
        read_flax_checkpoint(FIXTURES / "adm_reference.pt")


def test_another_network_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"channel_mult=\[2, 2, 2\].*--network-kwargs.*missing "
                                         r"AttnBlockpp_3"):
        import_jax_run(CHECKPOINT, tmp_path / "run", "cd-lpips", check_data=False)
    with pytest.raises(ValueError, match="unknown preset 'cd'; valid: edm-cifar10, cd-l1"):
        import_jax_run(CHECKPOINT, tmp_path / "run", "cd", check_data=False)
    with pytest.raises(ValueError, match="embedding_type='positional'"):
        import_jax_run(CHECKPOINT, tmp_path / "run", "cd-lpips", check_data=False,
                       network_kwargs={**TINY, "img_resolution": 8,
                                       "embedding_type": "positional"})


def test_every_released_file_has_a_preset_of_the_released_network():
    """README.md of openai/consistency_models_cifar10 lists ten files: the EDM teacher, CD with
    three metrics, CT, and five continuous-time models."""
    assert len(JAX_PRESETS) == 10
    assert {p.method for p in JAX_PRESETS.values()} == {"edm", "cm"}
    modes = sorted(p.method_fields.get("mode", "edm") for p in JAX_PRESETS.values())
    assert modes == ["cd", "cd", "cd", "cd-cont", "cd-cont", "cd-cont", "ct", "ct-cont",
                     "ct-cont", "edm"]


@pytest.mark.skipif(not os.environ.get("ZOO_JCM_RELEASED"),
                    reason="set ZOO_JCM_RELEASED=DIR, made by make_jcm_fixture.py --released-size")
def test_the_released_configuration_imports_with_its_preset_and_gives_jaxs_outputs(tmp_path):
    """The released NCSN++ (56.4 M parameters) at its own size, through the CLI with the
    cd-lpips preset and no --network-kwargs."""
    folder = Path(os.environ["ZOO_JCM_RELEASED"])
    result = CliRunner().invoke(main, ["import-openai-jax", str(folder / "checkpoint_80"),
                                       "--preset", "cd-lpips", "--out", str(tmp_path / "run"),
                                       "--no-check-data"])
    assert result.exit_code == 0, result.output
    run = zoo.plugins.get("methods", "cm").load(tmp_path / "run")
    with np.load(folder / "released_reference.npz") as f:
        x, t, expected = (torch.from_numpy(f[k]) for k in ("x", "t", "consistency"))
    with torch.no_grad():
        out = run.denoiser(x, t)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-5)


def test_the_papers_cifar10_runs_bench_against_a_reference_without_the_training_set(
        tmp_path, monkeypatch):
    """CD and CT imported from the fixture's Flax file on a machine without CIFAR-10 (and
    without an EDM run) bench against a reference batch (a pixel feature space stands in for
    Inception): every row of `zoo bench --models cm --dataset cifar10 --ref FILE` finite."""
    from test_metrics import PixelFD

    from zoo.bench import run_bench

    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "no-data"))
    root = tmp_path / "runs"
    for run, preset in (("cm-cd-lpips", "cd-lpips"), ("cm-ct", "ct-lpips")):
        with pytest.warns(UserWarning, match="cifar10's files are not here"):
            import_jax_run(CHECKPOINT, root / "cifar10" / run, preset,
                           network_kwargs={**TINY, "img_resolution": 8})
    np.savez(tmp_path / "VIRTUAL_tiny.npz", arr_0=np.random.default_rng(0).integers(
        0, 256, (64, 8, 8, 3), dtype=np.uint8))
    zoo.plugins.register_plugin(PixelFD("jcm"), "pixels-jcm")
    try:
        report = run_bench(["cm"], "cifar10", runs_root=root, n=32, batch_size=16,
                           metrics=["fd-pixels-jcm"], ref=tmp_path / "VIRTUAL_tiny.npz",
                           out=tmp_path / "bench", progress=False, echo=lambda m: None)
    finally:
        zoo.plugins.unregister_plugin("pixels-jcm")
    assert [(r.row.label, r.row.nfe) for r in report.results] == [
        ("CD (LPIPS)", 1), ("CD (LPIPS)", 2), ("CT (LPIPS)", 1), ("CT (LPIPS)", 2)]
    assert not (root / "cifar10" / "edm").exists()
    assert all(np.isfinite(r.metrics["FD-pixels"]) for r in report.results)
