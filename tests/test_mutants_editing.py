"""zoo.editing's image and mask reading and its rows against pixel values written by hand,
written against cosmic-ray's survivors (issue 16; docs/testing.md)."""

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.diffusion import Denoiser
from zoo.editing import denoise, edit_files, interpolate, read_image, read_mask, super_resolve


def test_read_image_scales_to_minus_one_one_and_refuses_grey_only_when_asked(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 0, 51  # red above green and blue: not grey
    Image.fromarray(rgb).save(tmp_path / "red.png")
    x = read_image(tmp_path / "red.png", 3, (2, 3), allow_grey=False)
    assert x.shape == (3, 2, 3)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, 51 / 127.5 - 1]))
    grey = np.full((2, 3), 102, np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="grey image but the model makes colour"):
        read_image(tmp_path / "grey.png", 3, (2, 3), allow_grey=False)
    torch.testing.assert_close(read_image(tmp_path / "grey.png", 1, (2, 3)),
                               torch.full((1, 2, 3), 102 / 127.5 - 1))
    with pytest.raises(ValueError, match="is 2×3 but this task needs 4×3; pass --resize"):
        read_image(tmp_path / "grey.png", 1, (4, 3))
    assert read_image(tmp_path / "grey.png", 1, (4, 6), resize=True).shape == (1, 4, 6)


def test_read_mask_marks_pixels_at_least_half_grey(tmp_path):
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", (1, 4)).tolist() == [[[0.0, 0.0, 1.0, 1.0]]]
    with pytest.raises(ValueError, match="mask .* is 1×4 but the image is 2×4"):
        read_mask(tmp_path / "m.png", (2, 4))


def test_inpaint_row_shows_the_input_the_mask_in_minus_one_one_and_the_result(tmp_path):
    """The panels: the image read, 2ω − 1 for the mask ω (white = 1: generated), the result."""
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    (tmp_path / "in").mkdir()
    Image.fromarray(pixels).save(tmp_path / "in" / "a.png")
    mask = np.zeros((4, 4), np.uint8)
    mask[:, 2:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    f = Denoiser(lambda x, c_noise, labels=None: torch.zeros_like(x), "consistency")
    names, rows = edit_files(f, "inpaint", tmp_path / "in", shape=(1, 4, 4), sigmas=[80.0, 1.0],
                             sigma_min=0.002, sigma_max=80.0, mask=tmp_path / "mask.png")
    (row,) = rows
    assert names == ["a"] and row.shape == (3, 1, 4, 4)
    torch.testing.assert_close(row[0, 0], torch.from_numpy(pixels / 127.5 - 1).float())
    assert row[1, 0].tolist() == [[-1.0, -1.0, 1.0, 1.0]] * 4


def test_denoise_and_interpolate_clip_only_when_asked():
    """denoise = f(y, σ), interpolate = f(σ_max·z_α, σ_max), clamped to ``clip`` unless None."""
    f = lambda x, sigma, labels=None: 3 * x + sigma
    y = torch.tensor([[[[0.5, -0.5]]]])
    assert denoise(f, y, 0.1, clip=None).flatten().tolist() == pytest.approx([1.6, -1.4])
    assert denoise(f, y, 0.1).flatten().tolist() == [1.0, -1.0]
    z0, z1 = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    ends = interpolate(f, z0, z1, [0.0, 1.0], sigma_max=2.0, clip=None)
    assert ends.flatten().tolist() == pytest.approx([8.0, 2.0, 2.0, 8.0])
    assert interpolate(f, z0, z1, [0.0, 1.0], sigma_max=2.0).abs().max() == 1.0


def test_super_resolution_needs_a_batch_of_images():
    f = lambda x, sigma, labels=None: x
    for shape in ((1, 4, 4), (1, 1, 1, 4, 4)):
        with pytest.raises(ValueError, match="images must be \\[B, C, H, W\\], got shape"):
            super_resolve(f, torch.zeros(shape), 2, [80.0], generator=None)


def test_colorize_row_shows_the_luma_the_model_was_given(tmp_path):
    """The observed panel is Y = 0.2989·R + 0.587·G + 0.114·B (ITU-R BT.601) of the input, in
    every channel."""
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[...] = (204, 51, 153)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "a.png")
    f = Denoiser(lambda x, c_noise, labels=None: torch.zeros_like(x), "consistency")
    _, (row,) = edit_files(f, "colorize", tmp_path / "in", shape=(3, 4, 4), sigmas=[80.0],
                           sigma_min=0.002, sigma_max=80.0)
    r, g, b = (v / 127.5 - 1 for v in (204, 51, 153))
    torch.testing.assert_close(row[0], torch.full((3, 4, 4), 0.2989 * r + 0.587 * g + 0.114 * b))


def test_an_unreadable_image_is_refused_with_its_path(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*a.png"):
        read_image(tmp_path / "a.png", 1, (2, 2))
