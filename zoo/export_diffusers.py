"""A consistency-model run of the ``adm`` network as a diffusers ``ConsistencyModelPipeline``.

``zoo export RUN --format diffusers`` writes, with ``save_pretrained``, a directory that
``diffusers.ConsistencyModelPipeline.from_pretrained`` loads: the network as a ``UNet2DModel``
and the sampler as a ``CMStochasticIterativeScheduler``. Both compute what zoo computes (Song et
al. 2023, Algorithm 1 with the parameterisation of Appendix C):

- the scheduler scales the network's input by c_in = 1/√(σ² + σ_d²) (``scale_model_input``) and
  its output by zoo's consistency c_skip, c_out with ε = σ_min
  (``get_scalings_for_boundary_condition``), with the run's σ_d, σ_min, σ_max and ρ;
- it feeds the network t = 1000·¼·ln σ (``sigma_to_t``, openai's noise label), which ``adm``
  embeds as ``noise_label_scale``·c_noise with zoo's c_noise = ¼·ln σ: only
  ``noise_label_scale = 1000`` (adm's default, openai's checkpoints) maps;
- it starts from σ_max·z, clips each denoised estimate to [−1, 1] and re-noises to the next σ
  with √(σ² − σ_min²)·z, one draw per step from the pipeline's generator: given one generator
  per sample seeded like zoo's per-sample streams, it draws zoo's noise.

The scheduler's σ are points of a Karras grid of ``num_train_timesteps`` points, chosen as the
smallest grid that holds the run's default sample σ (``pipe(timesteps=...)`` then samples them;
:func:`karras_grid`). The U-Net's weights are renamed block by block, in forward order, from
ADM's layout (guided-diffusion's ``UNetModel``) onto diffusers' (as diffusers'
scripts/convert_consistency_to_diffusers.py maps openai's released checkpoints).
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from zoo.export import ExportError, run_weights
from zoo.importers import karras_sigma
from zoo.nets.adm import ADMUNet, AttentionBlock, Downsample, ResBlock, Upsample

SUPPORTED = ("a consistency-model run (method cm) of the adm network, exported as "
             "UNet2DModel + CMStochasticIterativeScheduler")
#: The noise-label scale at which diffusers' t = 1000·¼·ln σ is what adm embeds.
NOISE_LABEL_SCALE = 1000.0
#: Largest Karras grid searched for the run's default σ; without one, the scheduler's default.
MAX_GRID_POINTS = 1000
DEFAULT_GRID_POINTS = 40

_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESAMPLE = {"op": "conv", "conv": "conv"}  # Downsample's / Upsample's convolution
_OUTER = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
          "label_emb": "class_embedding", "input_blocks.0.0": "conv_in",
          "out.0": "conv_norm_out", "out.2": "conv_out"}


def karras_grid(sigmas, sigma_min: float, sigma_max: float, rho: float,
                max_points: int = MAX_GRID_POINTS) -> tuple[int, list[int]] | None:
    """``(N, indices)``: the smallest N ≤ ``max_points`` whose Karras grid (EDM Eq. 5,
    σ_i for i = 0 … N−1 from σ_max to σ_min) holds every σ of ``sigmas`` (to 1e-6 relative),
    and their indices; ``None`` if there is none."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    for n in range(max(2, len(sigmas)), max_points + 1):
        indices = [round((s ** (1 / rho) - hi) / (lo - hi) * (n - 1)) for s in sigmas]
        if all(0 <= i < n and abs(karras_sigma(i, n, sigma_min, sigma_max, rho) - s) <= 1e-6 * s
               for i, s in zip(indices, sigmas)):
            return n, indices
    return None


def _adm_options(config, data_shape) -> dict:
    """Every argument of the run's ``ADMUNet``, its defaults filled in."""
    channels, resolution = data_shape[0], data_shape[1]
    bound = inspect.signature(ADMUNet).bind(
        img_resolution=resolution, in_channels=channels, label_dim=config.num_classes,
        **{"out_channels": channels, **config.network_kwargs})
    bound.apply_defaults()
    return dict(bound.arguments)


def _one(values: set, what: str):
    """The single value of ``values`` (diffusers has one setting where ADM may vary it)."""
    if len(values) != 1:
        raise ExportError(f"the adm network has {what} {sorted(values)}; UNet2DModel takes one")
    return values.pop()


def unet2d_config(net: ADMUNet, options: dict) -> dict:
    """The ``UNet2DModel`` config of the ADM network ``net`` built with ``options``; an ADM
    without a diffusers equivalent is an :class:`ExportError` naming what differs."""
    if options["noise_label_scale"] != NOISE_LABEL_SCALE:
        raise ExportError(f"the adm network embeds {options['noise_label_scale']:g}·c_noise; "
                          f"diffusers feeds it 1000·¼·ln σ, which is noise_label_scale="
                          f"{NOISE_LABEL_SCALE:g}")
    mc, mult = options["model_channels"], options["channel_mult"]
    if int(mult[0] * mc) != mc:
        raise ExportError(f"channel_mult[0]={mult[0]}: UNet2DModel embeds the noise label in its "
                          "first block's channels, so channel_mult must start at 1")
    updown = options["resblock_updown"]
    if not updown and not options["conv_resample"]:
        raise ExportError("conv_resample=False without resblock_updown: UNet2DModel resamples "
                          "with convolutions or residual blocks, not bare pooling")
    attention = [options["img_resolution"] >> level in options["attn_resolutions"]
                 for level in range(len(mult))]
    groups = _one({m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)},
                  "GroupNorm group counts")
    head_dim = _one({m.qkv.in_channels // m.num_heads for m in net.modules()
                     if isinstance(m, AttentionBlock)}, "attention head widths")
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown else (
        "DownBlock2D", "UpBlock2D")
    return dict(
        sample_size=options["img_resolution"], in_channels=options["in_channels"],
        out_channels=options["out_channels"], block_out_channels=[int(m * mc) for m in mult],
        layers_per_block=options["num_res_blocks"],
        down_block_types=["AttnDownBlock2D" if a else plain_down for a in attention],
        up_block_types=["AttnUpBlock2D" if a else plain_up for a in reversed(attention)],
        downsample_type="resnet" if updown else "conv",
        upsample_type="resnet" if updown else "conv",
        resnet_time_scale_shift="scale_shift" if options["use_scale_shift_norm"] else "default",
        attention_head_dim=head_dim, norm_num_groups=groups, attn_norm_num_groups=groups,
        norm_eps=1e-5, dropout=options["dropout"], time_embedding_type="positional",
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
        num_class_embeds=options["label_dim"] or None,
    )


def _diffusers_layers(unet):
    """``(name, module)`` of the U-Net's residual, attention and resampling layers in the order
    its forward pass runs them."""
    names = {id(m): n for n, m in unet.named_modules()}
    for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
        attentions = getattr(block, "attentions", None) or ()
        for i, resnet in enumerate(block.resnets):
            yield names[id(resnet)], resnet
            if i < len(attentions):
                yield names[id(attentions[i])], attentions[i]
        for resample in (getattr(block, "downsamplers", None) or
                         getattr(block, "upsamplers", None) or ()):
            yield names[id(resample)], resample


def unet2d_state_dict(net: ADMUNet, unet) -> dict[str, torch.Tensor]:
    """``net``'s weights under ``unet``'s names: the outer layers by :data:`_OUTER`, then ADM's
    ResBlock / AttentionBlock / Downsample / Upsample paired in forward order with diffusers'
    ResnetBlock2D / Attention / Downsample2D / Upsample2D; the attention's 1×1-convolution qkv
    ([q | k | v] rows) split into the linear to_q, to_k, to_v."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    kinds = {ResBlock: ResnetBlock2D, AttentionBlock: Attention, Downsample: Downsample2D,
             Upsample: Upsample2D}
    ours = [(n, m) for n, m in net.named_modules() if type(m) in kinds]
    theirs = list(_diffusers_layers(unet))
    if len(ours) != len(theirs) or any(not isinstance(d, kinds[type(a)])
                                       for (_, a), (_, d) in zip(ours, theirs)):
        raise ExportError("the adm network's blocks do not line up with UNet2DModel's")
    state = net.state_dict()
    out = {}

    def rename(src: str, dst: str, squeeze: bool = False):
        for param in ("weight", "bias"):
            if f"{src}.{param}" in state:
                value = state.pop(f"{src}.{param}")
                out[f"{dst}.{param}"] = value.flatten(1) if squeeze and param == "weight" else value

    for src, dst in _OUTER.items():
        rename(src, dst)
    for (a_name, a), (d_name, _) in zip(ours, theirs):
        if isinstance(a, AttentionBlock):
            rename(f"{a_name}.norm", f"{d_name}.group_norm")
            rename(f"{a_name}.proj_out", f"{d_name}.to_out.0", squeeze=True)
            for param in ("weight", "bias"):
                q, k, v = state.pop(f"{a_name}.qkv.{param}").chunk(3)
                for part, value in zip(("to_q", "to_k", "to_v"), (q, k, v)):
                    out[f"{d_name}.{part}.{param}"] = value.flatten(1) if param == "weight" \
                        else value
        else:
            for src, dst in (_RESBLOCK if isinstance(a, ResBlock) else _RESAMPLE).items():
                rename(f"{a_name}.{src}", f"{d_name}.{dst}")
    if state:
        raise ExportError(f"adm parameters without a UNet2DModel counterpart: {sorted(state)}")
    return out


def export_diffusers(run, out, *, weights: str = "ema") -> tuple[Path, list[int] | None]:
    """Write ``run``'s ``weights`` (``ema`` or ``raw``) as the ``ConsistencyModelPipeline``
    directory ``out`` (written complete or not at all). Returns ``(out, timesteps)``:
    ``pipe(timesteps=timesteps)`` samples the run's default σ (``None``: they lie on no Karras
    grid of at most :data:`MAX_GRID_POINTS` points; one step, σ_max, always matches)."""
    try:
        from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel
    except ImportError:
        raise ExportError("--format diffusers needs the diffusers package: pip install "
                          "'fewstep-zoo[diffusers]'") from None
    from zoo import plugins
    from zoo.diffusion.samplers import parse_sigmas
    from zoo.training.config import config_from_dict

    state, tensors = run_weights(run, weights)
    network = state["config"].get("network")
    if state["method"] != "cm" or network != "adm":
        raise ExportError(f"{run} is a {state['method']} run of the {network} network; "
                          f"--format diffusers supports {SUPPORTED}")
    config = config_from_dict(plugins.get("methods", "cm").config_class, state["config"])
    shape = state["dataset"]["shape"]
    denoiser = plugins.get("methods", "cm").build_denoiser(config, shape)
    denoiser.load_state_dict(tensors)
    unet = UNet2DModel(**unet2d_config(denoiser.net, _adm_options(config, shape)))
    unet.load_state_dict(unet2d_state_dict(denoiser.net, unet), strict=True)

    grid = karras_grid(parse_sigmas(config.sample_sigmas), config.sigma_min, config.sigma_max,
                       config.rho)
    scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=grid[0] if grid else DEFAULT_GRID_POINTS,
        sigma_min=config.sigma_min, sigma_max=config.sigma_max, sigma_data=config.sigma_data,
        rho=config.rho, s_noise=1.0, clip_denoised=state["dataset"]["kind"] == "image")

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists (and is not an empty directory); choose "
                          "another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, list(reversed(grid[1])) if grid else None
