"""EDM's non-leaking augmentation (zoo.augment): identity, labels, p = 0, non-leaking."""

import math

import pytest
import torch

from zoo.augment import AUGMENT_DIM, ORIENTATION_FREE_LABELS, augment, forward_matrix, warp
from zoo.training import BatchNoise


def images(n=8, c=3, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_p_zero_is_a_no_op():
    x = images()
    out, labels = augment(x, 0.0, BatchNoise(0, 0, len(x)))
    assert torch.equal(out, x) and labels.shape == (len(x), AUGMENT_DIM)
    assert not labels.any()


def test_identity_warp_leaves_images_unchanged():
    x = images()
    eye = torch.eye(3).repeat(len(x), 1, 1)
    torch.testing.assert_close(warp(x, eye), x, atol=1e-5, rtol=0)


def test_quarter_turn_and_integer_shift_match_exact_pixel_moves():
    x = images(n=2)
    n = len(x)
    ones, zeros = torch.ones(n), torch.zeros(n)
    quarter = forward_matrix(ones, torch.full((n,), math.pi / 2), ones, zeros,
                             torch.zeros(n, 2))
    # a quarter turn of a square image maps the pixel grid onto itself: rot90, whichever way
    turned = warp(x, quarter)
    assert any(torch.allclose(turned, torch.rot90(x, k, (2, 3)), atol=1e-5) for k in (1, 3))
    shift = forward_matrix(ones, zeros, ones, zeros, torch.tensor([[3.0, -2.0]] * n))
    moved = warp(x, shift)
    # output pixel (row, col) shows input (row + 2, col - 3); compare away from the borders
    torch.testing.assert_close(moved[..., 2:12, 5:14], x[..., 4:14, 2:11], atol=1e-5, rtol=0)


def decoded_matrix(labels, size):
    """The affine map rebuilt from the labels alone (samples without anisotropic scaling)."""
    n = len(labels)
    theta = torch.atan2(labels[:, 4], labels[:, 3] + 1)
    return forward_matrix((0.2 * labels[:, 2]).exp2(), theta, torch.ones(n), torch.zeros(n),
                          labels[:, 7:9] * 0.125 * size)


def test_labels_encode_the_applied_transform():
    size = 16
    x = images(n=1, size=size).repeat(512, 1, 1, 1)
    out, labels = augment(x, 0.5, BatchNoise(3, 0, len(x)))
    flips_only = labels[:, 2:].eq(0).all(1)
    for i in range(len(x)):
        expected = x[i]
        if labels[i, 0]:
            expected = expected.flip(2)
        if labels[i, 1]:
            expected = expected.flip(1)
        if flips_only[i]:
            assert torch.equal(out[i], expected)
    assert {tuple(v) for v in labels[flips_only, :2].tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # a pure x-flip: the x-flip label and the mirrored image
    pure_x = flips_only & labels[:, 0].eq(1) & labels[:, 1].eq(0)
    assert pure_x.any() and torch.equal(out[pure_x], x[pure_x].flip(3))
    # geometric samples: the labels alone rebuild the image from the (flipped) input
    geometric = ~flips_only & labels[:, 5:7].eq(0).all(1)
    assert geometric.sum() > 20
    flipped = torch.where(labels[:, 0].view(-1, 1, 1, 1) > 0, x.flip(3), x)
    flipped = torch.where(labels[:, 1].view(-1, 1, 1, 1) > 0, flipped.flip(2), flipped)
    rebuilt = warp(flipped[geometric], decoded_matrix(labels[geometric], size))
    torch.testing.assert_close(rebuilt, out[geometric], atol=1e-4, rtol=0)


def test_non_leaking_untransformed_images_keep_their_share():
    """With p < 1, a share 0.5·(1 − p/2)·(1 − p)⁴ of the samples (x-flip is a fair coin; y-flip,
    scale, rotation, anisotropy, translation each happen with probability p) comes out exactly
    as it went in, with all-zero labels: the model still learns the untransformed data."""
    p, n = 0.12, 8000
    x = images(n=n, c=1, size=4)
    out, labels = augment(x, p, BatchNoise(1, 0, n))
    plain = labels.eq(0).all(1)
    expected = 0.5 * (1 - p / 2) * (1 - p) ** 4
    assert abs(plain.float().mean().item() - expected) < 4 * math.sqrt(expected / n)
    assert torch.equal(out[plain], x[plain])


def test_bad_p_is_refused():
    with pytest.raises(ValueError, match=r"augment p must be in \[0, 1\], got 1.5"):
        augment(images(), 1.5, BatchNoise(0, 0, 8))


def test_without_orientation_nothing_is_y_flipped_or_rotated_and_six_labels_say_the_rest():
    """MeanFlow's official pipeline (orientation=False): the same draws as EDM's pipeline with
    y-flips and rotations never applied, and the labels of the remaining transforms only."""
    size, n = 16, 512
    x = images(n=1, size=size).repeat(n, 1, 1, 1)
    out, labels = augment(x, 0.5, BatchNoise(3, 0, n), orientation=False)
    assert labels.shape == (n, len(ORIENTATION_FREE_LABELS)) == (n, 6)
    full = torch.zeros(n, AUGMENT_DIM)
    full[:, list(ORIENTATION_FREE_LABELS)] = labels  # y-flip 0, θ = 0: cos θ − 1 = sin θ = 0
    assert labels[:, 0].eq(1).any() and labels[:, 1:].ne(0).any(0).all()
    flipped = torch.where(full[:, 0].view(-1, 1, 1, 1) > 0, x.flip(3), x)
    rebuilt = warp(flipped, decoded_matrix(full, size))
    moved = full[:, 2:].ne(0).any(1)
    decodable = moved & full[:, 5:7].eq(0).all(1)  # decoded_matrix has no anisotropic scaling
    assert decodable.sum() > 20
    torch.testing.assert_close(rebuilt[decodable], out[decodable], atol=1e-4, rtol=0)
    assert torch.equal(out[~moved], flipped[~moved])
    # the EDM pipeline is unchanged by the option's existence: same draws, nine labels
    edm_out, edm_labels = augment(x, 0.5, BatchNoise(3, 0, n))
    assert edm_labels.shape == (n, AUGMENT_DIM) and edm_labels[:, 1].ne(0).any()
