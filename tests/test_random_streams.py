"""The per-sample noise streams: Philox4x32-10 computed across the batch with tensor operations
(against Random123's known answers and a scalar reference), a sample the same alone and in any
batch, normals that pass a distribution test, and the torch stream kept for EDM's samplers."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from zoo.diffusion.random import (
    DEFAULT_STREAM,
    STREAMS,
    PhiloxGenerator,
    StackedGenerator,
    current_stream,
    noise_stream,
    philox4x32,
)
from zoo.diffusion.samplers import generate, sample_euler

M0, M1, W0, W1, MASK = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def philox_reference(counter, key):
    """Philox4x32-10 on Python integers, word by word (Salmon et al. 2011)."""
    c, k = list(counter), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + W0) & MASK, (k[1] + W1) & MASK]
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & MASK, p1 & MASK, ((p0 >> 32) ^ c[3] ^ k[1]) & MASK,
             p0 & MASK]
    return c


#: Random123's known-answer vectors for philox4x32_10 (its kat_vectors file).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK,) * 4, (MASK,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_gives_random123s_known_answers_and_the_scalar_reference():
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS])
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS])
    assert philox4x32(counters, keys).tolist() == [list(a) for _, _, a in KNOWN_ANSWERS]
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, (500, 4))
    keys = rng.integers(0, 2**32, (500, 2))
    got = philox4x32(torch.from_numpy(counters), torch.from_numpy(keys)).tolist()
    assert got == [philox_reference(c.tolist(), k.tolist()) for c, k in zip(counters, keys)]


def test_philox_normals_are_box_muller_of_the_counter_words():
    """Sample b's draw d, block j is Philox4x32-10 of counter (j, d mod 2³², d div 2³², 0) under
    key (seed mod 2³², seed div 2³²); its four words give the uniforms u = (w + ½)/2³² and the
    normals √(−2 ln u0)·cos 2πu1, √(−2 ln u2)·cos 2πu3, then the sines (Box–Muller), computed
    here on Python integers and floats."""
    seeds = [0, 7, 2**33 + 1]
    gen = PhiloxGenerator(seeds)
    gen.randn([1])
    second = gen.randn([6]).double()  # draw 1: two blocks, the last two normals unused
    for b, seed in enumerate(seeds):
        expected = []
        for block in range(2):
            w = philox_reference([block, 1, 0, 0], [seed & MASK, seed >> 32])
            u = [(x + 0.5) / 2**32 for x in w]
            r0, r2 = math.sqrt(-2 * math.log(u[0])), math.sqrt(-2 * math.log(u[2]))
            a1, a3 = 2 * math.pi * u[1], 2 * math.pi * u[3]
            expected += [r0 * math.cos(a1), r2 * math.cos(a3), r0 * math.sin(a1),
                         r2 * math.sin(a3)]
        torch.testing.assert_close(second[b], torch.tensor(expected[:6], dtype=torch.float64),
                                   rtol=1e-6, atol=1e-6)  # float32 draws


@pytest.mark.parametrize("stream", [PhiloxGenerator, StackedGenerator])
def test_a_sample_is_the_same_alone_and_in_any_batch(stream):
    seeds = [3, 17, 2**40 + 5, 99]
    together = stream(seeds)
    draws = [together.randn([3, 5]), together.randn([7])]
    for i, seed in enumerate(seeds):
        alone = stream([seed])
        torch.testing.assert_close(alone.randn([3, 5])[0], draws[0][i], rtol=0, atol=0)
        torch.testing.assert_close(alone.randn([7])[0], draws[1][i], rtol=0, atol=0)
    assert not torch.equal(draws[0][0], draws[0][1])  # other seeds, other numbers


def test_philox_normals_pass_a_distribution_test_and_draws_are_independent():
    gen = PhiloxGenerator(range(200))
    first, second = gen.randn([1000]), gen.randn([1000])
    values = first.flatten().double().numpy()
    assert scipy.stats.kstest(values, "norm").pvalue > 1e-3
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    # neither successive draws nor neighbouring seeds are correlated
    for a, b in ((first, second), (first[:-1], first[1:])):
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(r) < 0.01
    # a sample's elements are not correlated with their neighbours either (Box–Muller pairs)
    pairs = first.reshape(200, -1, 2).double().numpy()
    assert abs(np.corrcoef(pairs[..., 0].ravel(), pairs[..., 1].ravel())[0, 1]) < 0.02


def test_generate_takes_either_stream_and_refuses_another():
    """With D(x, σ) = x the ODE stands still: the sample is its initial noise z·σ_0, z the
    stream's."""
    denoiser = lambda x, sigma, *args, **kwargs: x  # noqa: E731
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    a, _ = generate(denoiser, sample_euler, sigmas, (2,), range(6), batch_size=4,
                    stream="philox")
    b, _ = generate(denoiser, sample_euler, sigmas, (2,), range(6), batch_size=6,
                    stream="philox")
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # batch size does not matter
    torch.testing.assert_close(a, PhiloxGenerator(range(6)).randn([2]) * 2.0)
    c, _ = generate(denoiser, sample_euler, sigmas, (2,), range(6))
    torch.testing.assert_close(c, a, rtol=0, atol=0)  # Philox is the default
    d, _ = generate(denoiser, sample_euler, sigmas, (2,), range(6), stream="torch")
    torch.testing.assert_close(d, StackedGenerator(range(6)).randn([2]) * 2.0)  # EDM's stream
    with pytest.raises(ValueError, match="stream 'numpy'; accepted: torch, philox"):
        generate(denoiser, sample_euler, sigmas, (2,), range(2), stream="numpy")


def test_noise_stream_sets_generates_default_and_a_call_may_name_its_own():
    denoiser = lambda x, sigma, *args, **kwargs: x  # noqa: E731
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    assert current_stream() == DEFAULT_STREAM == "philox"
    with noise_stream("torch"):
        assert current_stream() == "torch"
        a, _ = generate(denoiser, sample_euler, sigmas, (2,), range(5))
        b, _ = generate(denoiser, sample_euler, sigmas, (2,), range(5), stream="philox")
    assert current_stream() == "philox"
    torch.testing.assert_close(a, StackedGenerator(range(5)).randn([2]) * 2.0, rtol=0, atol=0)
    torch.testing.assert_close(b, PhiloxGenerator(range(5)).randn([2]) * 2.0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise stream 'numpy'; accepted: torch, philox"):
        with noise_stream("numpy"):
            pass
    # the CLI's choices (defined without importing torch) are the streams
    from zoo.cli.common import SHARED_OPTIONS

    option = SHARED_OPTIONS["noise_stream"][1]
    assert sorted(option["type"].choices) == sorted(STREAMS)
    assert option["default"] == DEFAULT_STREAM


def test_zoo_sample_noise_stream_philox_is_the_vectorised_stream_and_is_recorded(tmp_path):
    """A one-step toy CM through the CLI: --noise-stream philox gives Method.sample's samples
    under that stream, for every --batch-size, and the .npz says which stream made them."""
    import json

    from click.testing import CliRunner

    from zoo import plugins
    from zoo.cli import main

    cm = plugins.get("methods", "cm")
    config = cm.configure("toy", mode="ct", iterations=2, batch_size=16,
                          dataset_options={"n": 200})
    run = cm.train(config, tmp_path / "run", progress=False)
    outs = {}
    for stream, batch in (("philox", 7), ("philox", 64), ("torch", 64)):
        out = tmp_path / f"{stream}-{batch}.png"
        result = CliRunner().invoke(main, ["sample", "cm", "--run", str(run), "--n", "20",
                                           "--batch-size", str(batch), "--noise-stream", stream,
                                           "--out", str(out)])
        assert result.exit_code == 0, result.output
        with np.load(out.with_suffix(".npz")) as f:
            outs[stream, batch] = f["samples"]
            assert json.loads(str(f["info"]))["noise_stream"] == stream
    # the noise is the same; the network's batched matmuls round differently by batch size
    np.testing.assert_allclose(outs["philox", 7], outs["philox", 64], rtol=0, atol=1e-6)
    with noise_stream("philox"):
        expected = cm.sample(cm.load(run), 20, seed=0).x.numpy()
    np.testing.assert_allclose(outs["philox", 64], expected, rtol=0, atol=1e-6)
    assert np.abs(outs["philox", 64] - outs["torch", 64]).max() > 0.01
