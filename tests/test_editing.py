"""Zero-shot editing (Algorithm 4 of Song et al. 2023): the algebra of every task on random inputs
and a tiny consistency function, the errors on wrong inputs, and ``zoo edit``."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from zoo.cli import main
from zoo.diffusion import SIGMA_MAX, SIGMA_MIN, Denoiser, StackedGenerator
from zoo.diffusion.random import per_sample_generator
from zoo.diffusion.samplers import sample_consistency
from zoo.editing import (
    LUMA,
    ColorTransform,
    Identity,
    PatchTransform,
    colorize,
    default_sigmas,
    denoise,
    edit,
    edit_files,
    inpaint,
    interpolate,
    read_image,
    read_mask,
    slerp,
    stroke_guided,
    super_resolve,
)
from zoo.plugins import get

SIGMAS = [80.0, 10.0, 1.0, 0.1]


class TinyNet(nn.Module):
    """F(c_in·x, c_noise): a 3×3 convolution, non-zero and σ-dependent."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, c_noise, class_labels=None):
        return torch.tanh(self.conv(x) + c_noise.reshape(-1, 1, 1, 1))


def consistency_fn(channels=1):
    torch.manual_seed(0)
    return Denoiser(TinyNet(channels), "consistency").eval()


def images(n=3, channels=1, size=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator) * 2 - 1


def gen(n, seed=0):
    return StackedGenerator(range(seed, seed + n))


@pytest.mark.parametrize("transform", [ColorTransform(), PatchTransform(2), PatchTransform(4)],
                         ids=repr)
def test_transforms_are_orthogonal(transform):
    q = transform.matrix
    torch.testing.assert_close(q @ q.T, torch.eye(len(q), dtype=q.dtype), atol=1e-12, rtol=0)
    x = images(2, 3)
    c = transform.forward(x)
    assert c.shape == x.shape
    torch.testing.assert_close(c.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    torch.testing.assert_close(transform.inverse(c), x, atol=1e-6, rtol=0)
    x2 = Identity().forward(x)
    assert torch.equal(x2, x) and torch.equal(Identity().inverse(x), x)


def test_transforms_first_axis_is_luminance_and_patch_mean():
    x = images(2, 3)
    w = torch.tensor(LUMA)
    lum = torch.einsum("c,bchw->bhw", w, x)
    torch.testing.assert_close(ColorTransform().forward(x)[:, 0] * w.norm(), lum)
    c = PatchTransform(4).forward(x)
    means = nn.functional.avg_pool2d(x, 4)
    torch.testing.assert_close(c[:, :, ::4, ::4] / 4, means)


def test_inpainting_keeps_the_unmasked_pixels_exactly():
    y = images()
    mask = (torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    out = inpaint(consistency_fn(), y, mask, SIGMAS, generator=gen(3))
    keep = mask.expand_as(y) == 0
    assert torch.equal(out[keep], y[keep])
    assert not torch.allclose(out[~keep], y[~keep])


def test_colorization_keeps_the_luminance():
    y = images(channels=3)
    out = colorize(consistency_fn(3), y, SIGMAS, generator=gen(3))
    w = torch.tensor(LUMA)
    lum = lambda x: torch.einsum("c,bchw->bhw", w, x)  # noqa: E731
    torch.testing.assert_close(lum(out), lum(y), atol=1e-6, rtol=0)
    assert (out - y).abs().max() > 1e-2  # the chroma was generated
    grey = lum(y)[:, None]  # a grey image given as one channel is repeated over R, G, B
    torch.testing.assert_close(lum(colorize(consistency_fn(3), grey, SIGMAS, generator=gen(3))),
                               lum(grey.expand(-1, 3, -1, -1)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [2, 4])
def test_super_resolution_keeps_the_patch_means(k):
    low = images(size=8 // k, channels=3)
    out = super_resolve(consistency_fn(3), low, k, SIGMAS, generator=gen(3))
    assert out.shape == (3, 3, 8, 8)
    torch.testing.assert_close(nn.functional.avg_pool2d(out, k), low, atol=1e-6, rtol=0)


def test_stroke_guided_generation_is_consistency_sampling_from_noised_strokes():
    f, strokes, sigmas = consistency_fn(), images(), [2.0, 0.5, 0.1]
    out = stroke_guided(f, strokes, sigmas, generator=gen(3))
    g = gen(3)
    x = strokes + sigmas[0] * g.randn_like(strokes)
    expected = sample_consistency(f, x, sigmas, generator=g, clip=(-1, 1))
    torch.testing.assert_close(out, expected)


def test_denoising_is_one_evaluation_and_the_identity_at_sigma_min():
    f, x = consistency_fn(), images()
    torch.testing.assert_close(denoise(f, x, SIGMA_MIN), x, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(denoise(f, x, 1.0, clip=None), f(x, 1.0))


def test_interpolation_end_points_are_one_step_samples():
    f = consistency_fn()
    z = gen(2).randn((1, 8, 8))
    frames = interpolate(f, z[0], z[1], [0.0, 0.5, 1.0])
    with torch.no_grad():
        one_step = f(SIGMA_MAX * z, SIGMA_MAX).clamp(-1, 1)
    torch.testing.assert_close(frames[[0, 2]], one_step, atol=1e-6, rtol=0)
    mid = slerp(z[:1], z[1:], 0.5)  # the slerp keeps the norm of orthogonal-ish unit latents
    assert abs(mid.norm() / z[0].norm() - 1) < 0.2


def test_edits_are_reproducible_and_independent_of_the_batch():
    f, y = consistency_fn(), images(4)
    mask = torch.ones(1, 8, 8)
    mask[:, :4] = 0
    batch = inpaint(f, y, mask, SIGMAS, generator=gen(4, seed=10))
    alone = inpaint(f, y[2:3], mask, SIGMAS, generator=StackedGenerator([12]))
    torch.testing.assert_close(batch[2:3], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch, inpaint(f, y, mask, SIGMAS, generator=gen(4, seed=10)))


def test_default_sigmas_decrease_from_sigma_max_and_skip_sigma_min():
    sigmas = default_sigmas("digits")
    assert sigmas[0] == SIGMA_MAX and sigmas[-1] > SIGMA_MIN and len(sigmas) == 10
    assert all(b < a for a, b in zip(sigmas, sigmas[1:], strict=False))
    assert len(default_sigmas("cifar10")) == 40


def test_wrong_inputs_get_clear_errors(tmp_path):
    f, y = consistency_fn(), images()
    with pytest.raises(ValueError, match="does not match"):
        inpaint(f, y, torch.ones(1, 4, 4), SIGMAS, generator=gen(3))
    with pytest.raises(ValueError, match="does not divide"):
        PatchTransform(3).forward(y)
    with pytest.raises(ValueError, match="RGB"):
        colorize(f, images(channels=2), SIGMAS, generator=gen(3))
    with pytest.raises(ValueError, match="decreasing"):
        edit(f, y, Identity(), torch.ones(1, 8, 8), [1.0, 10.0], generator=gen(3))
    with pytest.raises(ValueError, match="sigma_min"):
        edit(f, y, Identity(), torch.ones(1, 8, 8), [1.0, 1e-4], generator=gen(3))

    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "mask6.png")
    with pytest.raises(ValueError, match="grey image but the model makes colour"):
        read_image(tmp_path / "grey.png", 3, (8, 8), allow_grey=False)
    assert read_image(tmp_path / "grey.png", 3, (8, 8)).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="pass --resize"):
        read_image(tmp_path / "grey.png", 1, (16, 16))
    assert read_image(tmp_path / "grey.png", 1, (16, 16), resize=True).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="must be the same size"):
        read_mask(tmp_path / "mask6.png", (8, 8))
    common = dict(sigmas=SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="colorization needs a colour"):
        edit_files(f, "colorize", tmp_path / "grey.png", shape=(1, 8, 8), **common)
    with pytest.raises(ValueError, match="scale factor 3 does not divide"):
        edit_files(f, "superres", tmp_path / "grey.png", shape=(1, 8, 8), scale=3, **common)
    with pytest.raises(ValueError, match="grey image"):
        edit_files(consistency_fn(3), "inpaint", tmp_path / "grey.png", shape=(3, 8, 8),
                   mask=tmp_path / "grey.png", **common)


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """A cm (CT) and an edm run on digits, trained for 2 iterations with a tiny network."""
    root = tmp_path_factory.mktemp("runs")
    tiny = dict(iterations=2, batch_size=8, network_kwargs={"model_channels": 8, "num_blocks": 1})
    cm, edm = get("methods", "cm"), get("methods", "edm")
    cm.train(cm.configure("digits", mode="ct", **tiny), root / "cm", progress=False)
    edm.train(edm.configure("digits", **tiny), root / "edm", progress=False)
    return root


def test_zoo_edit_command(digits_runs, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), np.uint8)).save(
            inputs / f"d{i}.png")
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (4, 4), np.uint8)).save(
        tmp_path / "low.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    run, runner = str(digits_runs / "cm"), CliRunner()

    def zoo_edit(*args):
        return runner.invoke(main, ["edit", run, *args])

    result = zoo_edit("--task", "inpaint", "--input", str(inputs / "d0.png"), "--mask",
                      str(tmp_path / "mask.png"), "--out", str(tmp_path / "a.png"), "--seed", "3")
    assert result.exit_code == 0, result.output
    again = zoo_edit("--task", "inpaint", "--input", str(inputs), "--mask",
                     str(tmp_path / "mask.png"), "--out", str(tmp_path / "batch"), "--seed", "3")
    assert again.exit_code == 0, again.output
    single, batched = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "batch" / "d0.png")
    # input | mask | result, upscaled 8×, under a 14-pixel strip of their labels
    assert single.size == (3 * 64 + 4 * 2, 14 + 64 + 2 * 2)
    assert np.array_equal(np.asarray(single), np.asarray(batched))  # seeds, not the batch
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["d0.png", "d1.png", "d2.png"]

    for args in (["--task", "superres", "--input", str(tmp_path / "low.png"), "--scale", "2"],
                 ["--task", "stroke", "--input", str(inputs / "d1.png"), "--sigma", "2"],
                 ["--task", "denoise", "--input", str(inputs / "d1.png"), "--sigma", "0.3"],
                 ["--task", "interpolate", "--frames", "5", "--sigmas", "80"]):
        result = zoo_edit(*args, "--out", str(tmp_path / f"{args[1]}.png"))
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"{args[1]}.png").exists()

    # what each task wrote (raw values, [panels, C, H, W]) against the task's defining property
    def panels(task):
        return torch.from_numpy(np.load(tmp_path / f"{task}.npz")["samples"][0]).float()

    loaded = get("methods", "cm").load(digits_runs / "cm")
    f, sigma_max = loaded.denoiser.eval(), loaded.config.sigma_max
    low = read_image(tmp_path / "low.png", 1, (4, 4))
    shown, result = panels("superres")
    torch.testing.assert_close(shown, low.repeat_interleave(2, 1).repeat_interleave(2, 2))
    # every 2×2 patch of the result averages to its low-resolution pixel
    torch.testing.assert_close(nn.functional.avg_pool2d(result, 2), low, atol=1e-5, rtol=0)
    assert result.std() > 0 and not torch.allclose(result, shown)
    y = read_image(inputs / "d1.png", 1, (8, 8))[None]
    noisy, clean = panels("denoise")
    with torch.no_grad():  # denoising is one evaluation f(y, σ) with the given σ
        torch.testing.assert_close(clean, f(y, torch.tensor([0.3]))[0].clamp(-1, 1),
                                   atol=1e-5, rtol=0)
    strokes, stroked = panels("stroke")
    torch.testing.assert_close(strokes, y[0])
    assert stroked.abs().max() <= 1 and not torch.allclose(stroked, y[0], atol=0.05)
    # from σ = σ_min, SDEdit is f(y + σ_min·z, σ_min) = y + σ_min·z by the boundary condition
    result = zoo_edit("--task", "stroke", "--input", str(inputs / "d1.png"), "--sigma",
                      str(loaded.config.sigma_min), "--out", str(tmp_path / "stroke.png"))
    assert result.exit_code == 0, result.output
    assert (panels("stroke")[1] - y[0]).abs().max() < 10 * loaded.config.sigma_min
    frames = panels("interpolate")  # the end frames are one-step samples of seeds 0 and 1
    z = per_sample_generator([0, 1]).randn((1, 8, 8))  # the stream `zoo sample` draws from
    with torch.no_grad():
        ends = f(sigma_max * z, torch.full((2,), sigma_max)).clamp(-1, 1)
    assert frames.shape == (5, 1, 8, 8)
    torch.testing.assert_close(frames[[0, -1]], ends, atol=1e-5, rtol=0)

    bad = {
        ("--task", "superres", "--input", str(tmp_path / "low.png"), "--scale", "3"):
            "scale factor 3 does not divide",
        ("--task", "inpaint", "--input", str(inputs / "d0.png"), "--mask", str(tmp_path /
                                                                             "low.png")):
            "must be the same size",
        ("--task", "colorize", "--input", str(inputs / "d0.png")): "colorization needs a colour",
        ("--task", "denoise", "--input", str(inputs / "d0.png")): "needs --sigma",
    }
    for args, message in bad.items():
        result = zoo_edit(*args, "--out", str(tmp_path / "bad.png"))
        assert result.exit_code == 1 and message in result.output, result.output

    result = runner.invoke(main, ["edit", str(digits_runs / "edm"), "--task", "denoise", "--input",
                                  str(inputs / "d0.png"), "--sigma", "1", "--out", "x.png"])
    assert result.exit_code == 1 and "without a consistency function" in result.output
