"""Speed settings of the trainer (bf16 and fp16 autocast, channels-last, torch.compile, TF32):
each one changes a training step's loss and the weights only within a tolerance."""

import pytest
import torch

import zoo.plugins
from zoo.data import load_dataset
from zoo.training import Trainer

TOY = dict(network_kwargs={"hidden": 32, "num_layers": 2}, batch_size=64, lr=1e-3,
           iterations=3, checkpoint_every=100, log_every=100, dataset_options={"n": 1000})
DIGITS = dict(network_kwargs={"model_channels": 16, "num_blocks": 1}, batch_size=8, lr=1e-3,
              iterations=2, checkpoint_every=100, log_every=100)


def run(tmp_path, dataset="toy", **settings):
    """Train a few steps; returns the losses, the final weights and the trainer."""
    method = zoo.plugins.get("methods", "edm")
    config = method.configure(dataset, **(TOY if dataset == "toy" else DIGITS), **settings)
    config.method = "edm"
    data = load_dataset(config.dataset, **config.dataset_options)
    trainer = Trainer(method.make_task(config, data), config, data,
                      tmp_path / "-".join(f"{k}={v}" for k, v in settings.items()) or "base",
                      progress=False)
    losses = []
    trainer.fit(on_step=lambda step, loss: losses.append(loss))
    return torch.tensor(losses), trainer.net.state_dict(), trainer


def assert_close_runs(a, b, loss_rtol, weight_atol):
    torch.testing.assert_close(a[0], b[0], rtol=loss_rtol, atol=0)
    for key in a[1]:
        torch.testing.assert_close(a[1][key].float(), b[1][key].float(), rtol=0, atol=weight_atol)


def test_bf16_autocast_stays_within_tolerance(tmp_path):
    fp32, bf16 = run(tmp_path), run(tmp_path, precision="bf16")
    assert not torch.equal(fp32[0], bf16[0])  # bf16 did run
    assert_close_runs(fp32, bf16, loss_rtol=3e-2, weight_atol=1e-4)
    assert all(p.dtype == torch.float32 for p in bf16[2].net.parameters())  # fp32 master weights


def test_fp16_with_loss_scaling_stays_within_tolerance_and_keeps_its_scale(tmp_path):
    """fp16 autocast with dynamic loss scaling (openai's checkpoints were trained in fp16): the
    run matches fp32 within fp16's tolerance, keeps fp32 master weights, and checkpoints the
    loss scale, which a resumed run takes up."""
    from zoo.training import load_checkpoint

    fp32, fp16 = run(tmp_path), run(tmp_path, precision="fp16")
    assert not torch.equal(fp32[0], fp16[0])  # fp16 did run
    assert_close_runs(fp32, fp16, loss_rtol=3e-2, weight_atol=1e-3)
    assert all(p.dtype == torch.float32 for p in fp16[2].net.parameters())
    scaler = load_checkpoint(fp16[2].run_dir)["scaler"]
    assert scaler["scale"] == fp16[2].scaler.get_scale() > 1
    assert load_checkpoint(fp32[2].run_dir)["scaler"] == {}  # fp32: no scaler


def test_channels_last_stays_within_tolerance(tmp_path):
    base, cl = run(tmp_path, "digits"), run(tmp_path, "digits", channels_last=True)
    conv = cl[2].net.net.enc["8x8_conv"].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert_close_runs(base, cl, loss_rtol=1e-4, weight_atol=1e-5)


def precisions():
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


def test_tf32_is_applied_during_training_and_restored(tmp_path):
    """What a CPU can check: the trainer switches matmuls and convolutions to TF32 for the steps
    (a spy reads both settings at every step) and restores what was set before. Both start at
    "ieee", a value neither the trainer nor PyTorch's defaults ("none" and, for cuDNN, "tf32")
    would put back by accident."""
    before = precisions()
    seen = []
    method = zoo.plugins.get("methods", "edm")
    config = method.configure("toy", **TOY, tf32=True)
    config.method = "edm"
    data = load_dataset("toy", n=1000)
    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        Trainer(method.make_task(config, data), config, data, tmp_path / "tf32",
                progress=False).fit(on_step=lambda *_: seen.append(precisions()))
        after = precisions()
        seen_off = []
        config_off = method.configure("toy", **TOY)
        config_off.method = "edm"
        Trainer(method.make_task(config_off, data), config_off, data, tmp_path / "fp32",
                progress=False).fit(on_step=lambda *_: seen_off.append(precisions()))
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
    assert len(seen) == TOY["iterations"] and set(seen) == {("tf32", "tf32")}
    assert after == ("ieee", "ieee")
    assert set(seen_off) == {("ieee", "ieee")}  # tf32=False leaves the settings alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 only changes numbers on CUDA")
def test_tf32_changes_results_only_within_tolerance_on_cuda(tmp_path):
    base, tf32 = run(tmp_path, device="cuda"), run(tmp_path, device="cuda", tf32=True)
    # Adam moves a weight by at most lr a step whatever its gradient, so 3 steps bound the gap
    assert_close_runs(base, tf32, loss_rtol=1e-2, weight_atol=6e-3)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision='fp8' is not one of fp32, bf16, fp16"):
        zoo.plugins.get("methods", "edm").configure("toy", precision="fp8")


@pytest.mark.slow
def test_torch_compile_stays_within_tolerance(tmp_path):
    pytest.importorskip("torch._inductor")
    base, compiled = run(tmp_path), run(tmp_path, compile=True)
    assert_close_runs(base, compiled, loss_rtol=1e-4, weight_atol=1e-5)
