"""GPU throughput of CIFAR-10 DDPM++ (EDM's configuration, Karras et al. 2022): one-step
sampling (a consistency model's f(σ_max·z, σ_max), Song et al. 2023) and EDM training steps of
the shared trainer, in fp32, TF32, bf16 autocast and bf16 + torch.compile, with the achieved
fraction of the GPU's peak FLOP rate.

FLOPs are counted, not assumed: ``torch.utils.flop_counter`` on one 32×32 forward (≈21 GMACs
for DDPM++); a training step costs ≈3× the forward (forward + backward). Peaks are the dense
spec-sheet numbers of the detected GPU (H100 SXM/PCIe/NVL, H200), or ``--peak-tflops``.
Training data are random images of CIFAR-10's shape (no download on the GPU machine).
Then the per-sample noise streams' overhead on one-step sampling (paired.py): the torch stream
(a generator per sample) and the vectorised Philox stream against one torch.randn for the batch;
and the ADM forward (openai's ImageNet-64 network, the one every released checkpoint uses) in
images/s, with ``--edm PATH`` (a checkout of NVlabs/edm) paired against EDM's own DhariwalUNet
with the same weights (target ≤ 1.00). Meant to finish in < 5 minutes on an H100 (compile
~1-2 min of it; ``--no-compile`` skips it):

    python benchmarks/gpu_throughput.py [--edm PATH]          # on the GPU machine
    python benchmarks/gpu_throughput.py --device cpu --network ddpmpp-small --batch 4 \\
        --train-batch 4 --steps 2 --no-compile --adm-batch 1  # smoke test of the script
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo.plugins
from zoo.data.datasets import Dataset
from zoo.diffusion import Denoiser
from zoo.nets import build_network
from zoo.training import Trainer

#: Dense peak TFLOP/s from NVIDIA's data sheets: (fp32, tf32, bf16).
PEAKS = {
    "H100 SXM": (66.9, 494.7, 989.4),
    "H100 PCIe": (51.2, 378.0, 756.0),
    "H100 NVL": (60.0, 417.5, 835.5),
    "H200": (66.9, 494.7, 989.4),
}
MODES = {  # name: (precision, tf32, compile)
    "fp32": ("fp32", False, False),
    "tf32": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16+compile": ("bf16", False, True),
}


def detect_peaks(device) -> tuple[str, tuple[float, float, float] | None]:
    if torch.device(device).type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in ("H200", "H100 PCIe", "H100 NVL"):
        if all(part in name for part in key.split()):
            return name, PEAKS[key]
    return name, PEAKS["H100 SXM"] if "H100" in name else None


def forward_macs(net, shape, device) -> float:
    x, noise = torch.randn(1, *shape, device=device), torch.zeros(1, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, noise)
    return counter.get_total_flops() / 2


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def set_tf32(on: bool):
    value = "tf32" if on else "ieee"
    torch.backends.cuda.matmul.fp32_precision = value
    torch.backends.cudnn.conv.fp32_precision = value


def sampling_rate(denoiser, shape, batch, device, precision, compiled, steps) -> float:
    """Images/s of one-step consistency sampling f(σ_max·z, σ_max)."""
    f = torch.compile(denoiser) if compiled else denoiser
    z = torch.randn(batch, *shape, device=device) * 80.0
    autocast = torch.autocast(torch.device(device).type, torch.bfloat16,
                              enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        for _ in range(3):  # warm-up (and compilation)
            f(z, 80.0)
        sync(device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            f(z, 80.0)
            sync(device)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def training_rate(network, shape, batch, device, precision, tf32, compiled, steps, root) -> float:
    """Images/s of EDM training steps of the shared trainer (median step, the checkpoint-writing
    last step excluded)."""
    edm = zoo.plugins.get("methods", "edm")
    data = Dataset("random-cifar10-shape", torch.rand(4 * batch, *shape) * 2 - 1, None,
                   "random", "image")
    config = edm.configure("cifar10", network=network, batch_size=batch, device=device,
                           iterations=steps + 4, checkpoint_every=10**9, log_every=10**9,
                           precision=precision, tf32=tf32, compile=compiled, lr_warmup=0)
    config.method = "edm"
    stamps = []
    trainer = Trainer(edm.make_task(config, data), config, data,
                      Path(root) / f"{precision}-{tf32}-{compiled}",
                      progress=False)
    trainer.fit(on_step=lambda step, loss: stamps.append(time.perf_counter()))  # syncs: .item()
    return batch / statistics.median(b - a for a, b in zip(stamps[2:-2], stamps[3:-1], strict=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--network", default="ddpmpp")
    parser.add_argument("--batch", type=int, default=1024, help="Sampling batch.")
    parser.add_argument("--train-batch", type=int, default=256, help="Training global batch.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per measurement.")
    parser.add_argument("--no-compile", action="store_true", help="Skip the compiled rows.")
    parser.add_argument("--peak-tflops", type=float, nargs=3, metavar=("FP32", "TF32", "BF16"),
                        help="Dense peak TFLOP/s (default: from the detected GPU).")
    parser.add_argument("--adm-batch", type=int, default=64,
                        help="ADM forward batch (64 px); 0 skips the ADM rows.")
    parser.add_argument("--edm", default=None,
                        help="A checkout of NVlabs/edm: ADM paired against its DhariwalUNet.")
    args = parser.parse_args()
    shape = (3, 32, 32)
    gpu, peaks = detect_peaks(args.device)
    peaks = tuple(args.peak_tflops) if args.peak_tflops else peaks
    torch.manual_seed(0)
    net = build_network(args.network, shape).to(args.device).eval()
    macs = forward_macs(net, shape, args.device)
    denoiser = Denoiser(net, "consistency").eval()
    print(f"{gpu}; {args.network} 32×32: {macs / 1e9:.2f} GMACs per forward (counted); peaks "
          f"fp32/tf32/bf16 = {peaks or 'unknown'} TFLOP/s; torch {torch.__version__}")
    print(f"{'mode':14s} {'sample img/s':>13s} {'peak %':>7s} {'train img/s':>12s} {'peak %':>7s}")
    root = tempfile.mkdtemp(prefix="zoo-gpu-throughput-")
    for mode, (precision, tf32, compiled) in MODES.items():
        if compiled and args.no_compile:
            continue
        set_tf32(tf32)
        sample = sampling_rate(denoiser, shape, args.batch, args.device, precision, compiled,
                               args.steps)
        train = training_rate(args.network, shape, args.train_batch, args.device, precision,
                              tf32, compiled, args.steps, root)
        set_tf32(False)
        peak = peaks[2 if precision == "bf16" else 1 if tf32 else 0] * 1e12 if peaks else None
        pct = [f"{100 * rate * 2 * macs * passes / peak:6.1f}%" if peak else "      -"
               for rate, passes in ((sample, 1), (train, 3))]
        print(f"{mode:14s} {sample:13.0f} {pct[0]} {train:12.0f} {pct[1]}", flush=True)
    noise_overhead(denoiser, shape, args.batch, args.device, args.steps)
    adm_forward(args.adm_batch, args.device, args.steps, args.edm)


#: EDM's DhariwalUNet for ImageNet-64 (its defaults: openai's ADM of the released checkpoints).
DHARIWAL_IMAGENET64 = dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000,
                           model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3,
                           attn_resolutions=[32, 16, 8], dropout=0.0)


def adm_forward(batch, device, rounds, edm_checkout) -> None:
    """The ImageNet-64 ADM forward in images/s, fp32 and bf16 autocast; with ``edm_checkout``,
    ÷ EDM's DhariwalUNet of the same configuration and weights (paired, fp32)."""
    from paired import describe, paired_ratio

    from zoo.nets.adm import ADMUNet, dhariwal_state_dict_to_adm, dhariwal_to_adm_kwargs

    if batch == 0:
        return
    torch.manual_seed(0)
    adm = ADMUNet(**dhariwal_to_adm_kwargs(DHARIWAL_IMAGENET64)).to(device).eval()
    x = torch.randn(batch, 3, 64, 64, device=device)
    noise = torch.rand(batch, device=device)
    labels = torch.nn.functional.one_hot(torch.randint(1000, (batch,)), 1000).float().to(device)
    for precision in ("fp32", "bf16") if torch.device(device).type == "cuda" else ("fp32",):
        with torch.no_grad(), torch.autocast(torch.device(device).type, torch.bfloat16,
                                             enabled=precision == "bf16"):
            adm(x, noise, labels)
            sync(device)
            start = time.perf_counter()
            for _ in range(rounds):
                adm(x, noise, labels)
            sync(device)
        rate = batch * rounds / (time.perf_counter() - start)
        print(f"ADM ImageNet-64 forward, {precision}, batch {batch}: {rate:.4g} img/s", flush=True)
    if edm_checkout is None:
        return
    import sys

    sys.path.insert(0, edm_checkout)
    from training.networks import DhariwalUNet

    edm = DhariwalUNet(**DHARIWAL_IMAGENET64).to(device).eval()
    for p in edm.parameters():  # EDM zero-initialises some layers: make every path count
        p.data.normal_(0, 0.05)
    adm.load_state_dict(dhariwal_state_dict_to_adm(edm.state_dict()))

    @torch.no_grad()
    def ours():
        adm(x, noise, labels)
        sync(device)

    @torch.no_grad()
    def theirs():
        edm(x, noise, labels)
        sync(device)

    print(describe(f"ADM / EDM's DhariwalUNet forward, batch {batch}",
                   paired_ratio(theirs, ours, rounds=max(5, rounds))), flush=True)


def noise_overhead(denoiser, shape, batch, device, rounds) -> None:
    """One-step sampling through ``generate`` with each per-sample noise stream ÷ the same call
    on noise from one ``torch.randn`` for the batch (paired, interleaved: paired.py)."""
    from paired import describe, paired_ratio

    from zoo.diffusion.samplers import generate, sample_consistency

    @torch.no_grad()
    def bare():
        z = torch.randn(batch, *shape, device=device) * 80.0
        denoiser(z, torch.full((batch,), 80.0, device=device))
        sync(device)

    for stream in ("torch", "philox"):
        def sampled(stream=stream):
            generate(denoiser, sample_consistency, [80.0], shape, range(batch), batch_size=batch,
                     device=device, stream=stream, sigma_min=0.002)
            sync(device)

        print(describe(f"one-step sampling, {stream} noise stream / one torch.randn",
                       paired_ratio(bare, sampled, rounds=max(5, rounds))), flush=True)


if __name__ == "__main__":
    main()
