"""ADM: the U-Net of Dhariwal & Nichol (2021) as openai/consistency_models configures it.

Dhariwal, Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021 (the "ablated
diffusion model"); Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023, whose
released ImageNet-64 and LSUN-256 checkpoints are state dicts of guided-diffusion's ``UNetModel``
(https://github.com/openai/consistency_models, cm/unet.py, configured by cm/script_util.py).

Parameter names follow that ``UNetModel`` (``time_embed``, ``label_emb``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``) so that those state dicts load with ``strict=True``.
:func:`dhariwal_state_dict_to_adm` maps the weights of EDM's reimplementation (``DhariwalUNet``,
https://github.com/NVlabs/edm, training/networks.py) onto the same layout.

Noise conditioning: the network embeds ``noise_label_scale · c_noise``. This repo's preconditioning
passes EDM's c_noise = ln(σ)/4; openai's ``KarrasDenoiser.denoise`` feeds its networks
1000·¼·ln σ (cm/karras_diffusion.py), so its checkpoints need ``noise_label_scale=1000``; EDM's
``DhariwalUNet`` embeds c_noise itself (``noise_label_scale=1``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nets.songunet import label_input

NORM_GROUPS = 32


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input's dtype (ADM's ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int, min_channels_per_group: int) -> GroupNorm32:
    """32 groups, or fewer so that each has ``min_channels_per_group`` channels (EDM's rule;
    openai's is always 32 groups, ``min_channels_per_group=1``)."""
    return GroupNorm32(min(NORM_GROUPS, channels // min_channels_per_group), channels, eps=1e-5)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t·ω_i), sin(t·ω_i)], ω_i = max_period^(−i/(dim/2)) (ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _resample(x: torch.Tensor, updown: str) -> torch.Tensor:
    """Nearest-neighbour ×2 upsampling (``"up"``) or 2×2 average pooling (``"down"``)."""
    if updown == "down":
        return F.avg_pool2d(x, 2)
    # F.interpolate(mode="nearest")'s numbers by broadcast views: each pixel doubled along the
    # row, then each row doubled (whole rows copied at once); ~10x faster on the CPU for NCHW
    b, c, h, w = x.shape
    rows = x[..., None].expand(b, c, h, w, 2).reshape(b, c, h, 2 * w)
    return rows[:, :, :, None].expand(b, c, h, 2, 2 * w).reshape(b, c, 2 * h, 2 * w)


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3×3 convolution (``op``) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if self.op is not None else _resample(x, "down")


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then an optional 3×3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resample(x, "up")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block h = skip(x) + conv(drop(silu(norm(conv(silu(norm(x))) ⊕ emb)))), where ⊕
    is FiLM ``norm(h)·(1 + scale) + shift`` with ``use_scale_shift_norm``, else ``h + emb``.
    ``up``/``down`` resample both branches (nearest / average) before the first convolution."""

    def __init__(self, channels, emb_channels, out_channels, *, dropout, use_scale_shift_norm,
                 min_channels_per_group, up=False, down=False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(channels, min_channels_per_group), nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = "up" if up else "down" if down else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if use_scale_shift_norm else 1)))
        self.out_layers = nn.Sequential(
            _norm(out_channels, min_channels_per_group), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # the layers by index: slicing an nn.Sequential builds a new module on every call
        in_norm, in_act, in_conv = self.in_layers
        out_norm, out_act, out_drop, out_conv = self.out_layers
        h = in_act(in_norm(x))
        if self.updown is not None:
            h, x = _resample(h, self.updown), _resample(x, self.updown)
        h = in_conv(h)
        emb = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb.chunk(2, dim=1)
            h = torch.addcmul(shift, out_norm(h), 1 + scale)
        else:
            h = out_norm(h + emb)
        # in place on the fresh conv output (no autograd needs it): one activation fewer
        return out_conv(out_drop(out_act(h))).add_(self.skip_connection(x))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels with a residual: x + proj_out(attn(qkv(norm(x)))).

    The qkv channels are ordered [q | k | v], each split into heads (the layout of cm/unet.py's
    ``QKVFlashAttention``, which ``AttentionBlock`` always uses in openai/consistency_models);
    weights are softmax(q·k/√d) over the keys.
    """

    def __init__(self, channels: int, num_heads: int, min_channels_per_group: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels, min_channels_per_group)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, -1)
        q, k, v = qkv.unbind(1)  # [B, heads, d, HW]
        if x.is_cuda:  # fused kernels (flash / memory-efficient attention)
            h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                               v.transpose(-1, -2)).transpose(-1, -2)
        else:  # two einsums in the channel-first layout, as EDM's DhariwalUNet: no transposed
            # copies, about half the time of the CPU's scaled_dot_product_attention here
            w = torch.einsum("bhcq,bhck->bhqk", q, k * q.shape[2] ** -0.5).softmax(dim=-1)
            h = torch.einsum("bhqk,bhck->bhcq", w, v)
        return self.proj_out(h.reshape(b, c, height, width)).add_(x)


class TimestepSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (Dhariwal & Nichol 2021) with its parameter names.

    ``forward(x, noise_labels, class_labels=None)``: ``noise_labels`` [B] is the preconditioning's
    c_noise, embedded as ``noise_label_scale · c_noise``; ``class_labels`` are integer indices [B]
    or one-hot rows [B, label_dim] (``None``: no class embedding), embedded through ``label_emb``.

    Settings (openai's flags in cm/script_util.py): ``model_channels`` (``num_channels``),
    ``channel_mult``, ``num_res_blocks``, ``attn_resolutions`` as pixel resolutions
    (``attention_resolutions``), ``num_heads`` or ``num_head_channels`` (> 0 overrides
    ``num_heads``), ``use_scale_shift_norm``, ``resblock_updown``, ``conv_resample``, ``dropout``,
    ``use_fp16`` (the torso in float16 autocast on CUDA, as openai converts it to float16);
    ``min_channels_per_group`` is 1 for openai's nets, 4 for EDM's ``DhariwalUNet``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        model_channels: int = 128,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks: int = 2,
        attn_resolutions=(32, 16, 8),
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        use_fp16: bool = False,
        noise_label_scale: float = 1000.0,
        min_channels_per_group: int = 1,
    ):
        super().__init__()
        self.model_channels, self.label_dim = model_channels, label_dim
        self.noise_label_scale, self.use_fp16 = noise_label_scale, use_fp16
        emb_channels = model_channels * 4
        block = dict(dropout=dropout, use_scale_shift_norm=use_scale_shift_norm,
                     min_channels_per_group=min_channels_per_group)

        def res_block(cin, cout, **updown):
            return ResBlock(cin, emb_channels, cout, **block, **updown)

        def attention(channels):
            if num_head_channels > 0 and channels % num_head_channels:
                raise ValueError(f"{channels} channels do not split into heads of "
                                 f"num_head_channels={num_head_channels}")
            heads = channels // num_head_channels if num_head_channels > 0 else num_heads
            return AttentionBlock(channels, heads, min_channels_per_group)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(),
                                        nn.Linear(emb_channels, emb_channels))
        self.label_emb = nn.Embedding(label_dim, emb_channels) if label_dim else None

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips, res = [ch], img_resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if res in attn_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down = res_block(ch, ch, down=True) if resblock_updown else Downsample(
                    ch, conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skips.append(ch)
                res //= 2

        self.middle_block = TimestepSequential(res_block(ch, ch), attention(ch), res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skips.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if res in attn_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(res_block(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample))
                    res *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(_norm(ch, min_channels_per_group), nn.SiLU(),
                                 nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x, noise_labels, class_labels=None):
        t = noise_labels.reshape(-1) * self.noise_label_scale
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        if self.label_emb is not None and class_labels is not None:
            labels = label_input(class_labels, self.label_dim, x.shape[0], emb)
            emb = emb + labels @ self.label_emb.weight.to(emb.dtype)
        with torch.autocast("cuda", torch.float16, enabled=self.use_fp16 and x.is_cuda):
            skips, h = [], x
            for module in self.input_blocks:
                h = module(h, emb)
                skips.append(h)
            h = self.middle_block(h, emb)
            for module in self.output_blocks:
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


def _dhariwal_block(edm: dict, prefix: str, res_block: str, attention: str | None,
                    num_heads: int) -> dict:
    """One EDM ``UNetBlock`` as an ADM ResBlock (and AttentionBlock): renamed, and the qkv rows
    reordered from EDM's [heads, d, q|k|v] to ADM's [q|k|v, heads, d]."""
    names = {"norm0": "in_layers.0", "conv0": "in_layers.2", "affine": "emb_layers.1",
             "norm1": "out_layers.0", "conv1": "out_layers.3", "skip": "skip_connection"}
    out = {}
    for key, value in edm.items():
        if not key.startswith(prefix):
            continue
        layer, param = key[len(prefix):].rsplit(".", 1)
        if param == "resample_filter":
            continue  # EDM's [1, 1] filter: nearest/average resampling, ADM's without weights
        if layer in names:
            out[f"{res_block}.{names[layer]}.{param}"] = value
        elif layer in ("norm2", "proj"):
            out[f"{attention}.{'norm' if layer == 'norm2' else 'proj_out'}.{param}"] = value
        elif layer == "qkv":
            channels = value.shape[0] // 3
            rows = value.reshape(num_heads, channels // num_heads, 3, *value.shape[1:])
            out[f"{attention}.qkv.{param}"] = rows.permute(2, 0, 1, *range(3, rows.ndim)).reshape(
                value.shape)
        else:
            raise ValueError(f"unexpected DhariwalUNet parameter {key}")
    return out


def dhariwal_to_adm_kwargs(kwargs: dict) -> dict:
    """``ADMUNet`` arguments equal to EDM's ``DhariwalUNet(**kwargs)`` (training/networks.py):
    resblock up/down, scale-shift norm, 64 channels per head, 4 channels per norm group, c_noise
    embedded as is. Refuses augmentation labels and attention on fewer than 64 channels (where
    DhariwalUNet silently has none)."""
    kwargs = dict(kwargs)
    if kwargs.pop("augment_dim", 0):
        raise ValueError("DhariwalUNet with augment_dim > 0 is not supported")
    if kwargs.pop("channel_mult_emb", 4) != 4:
        raise ValueError("DhariwalUNet with channel_mult_emb != 4 is not supported")
    kwargs.pop("label_dropout", None)
    mult = kwargs.get("channel_mult", [1, 2, 3, 4])
    model_channels = kwargs.get("model_channels", 192)
    attn = kwargs.pop("attn_resolutions", [32, 16, 8])
    resolution = kwargs["img_resolution"]
    for level, m in enumerate(mult):
        with_attention = (resolution >> level) in attn or level == len(mult) - 1
        if with_attention and (model_channels * m) % 64:
            raise ValueError(f"DhariwalUNet attention on {model_channels * m} channels (not a "
                             "multiple of 64) is not supported")
    return dict(kwargs, num_res_blocks=kwargs.pop("num_blocks", 3), channel_mult=mult,
                model_channels=model_channels, attn_resolutions=attn,
                dropout=kwargs.pop("dropout", 0.1), num_head_channels=64,
                use_scale_shift_norm=True, resblock_updown=True, noise_label_scale=1.0,
                min_channels_per_group=4)


def dhariwal_state_dict_to_adm(edm: dict) -> dict:
    """A state dict of EDM's ``DhariwalUNet`` renamed onto :class:`ADMUNet` (built with
    :func:`dhariwal_to_adm_kwargs`). EDM's blocks map one-to-one onto ADM's, in order:
    ``enc.*`` → ``input_blocks``, ``dec.*_in0/_in1`` → ``middle_block``, the rest of ``dec`` →
    ``output_blocks`` (an ``_up`` block closes the previous output block), ``map_label.weight``ᵀ
    → ``label_emb.weight``."""
    adm = {}
    for src, dst in (("map_layer0", "time_embed.0"), ("map_layer1", "time_embed.2"),
                     ("out_norm", "out.0"), ("out_conv", "out.2")):
        for param in ("weight", "bias"):
            if f"{src}.{param}" in edm:
                adm[f"{dst}.{param}"] = edm[f"{src}.{param}"]
    if "map_label.weight" in edm:
        adm["label_emb.weight"] = edm["map_label.weight"].t()
    heads = {}  # block prefix → number of heads (channels / 64), for blocks with attention
    for key, value in edm.items():
        if key.endswith(".qkv.weight"):
            heads[key[: -len("qkv.weight")]] = value.shape[0] // 3 // 64

    def blocks(part):
        names = dict.fromkeys(k.split(".")[1] for k in edm if k.startswith(f"{part}."))
        return [f"{part}.{name}." for name in names]

    for i, prefix in enumerate(blocks("enc")):
        if prefix.endswith("_conv."):
            adm.update({f"input_blocks.{i}.0.{k[len(prefix):]}": v
                        for k, v in edm.items() if k.startswith(prefix)})
        else:
            adm.update(_dhariwal_block(edm, prefix, f"input_blocks.{i}.0",
                                       f"input_blocks.{i}.1", heads.get(prefix, 0)))
    out_index = -1
    for prefix in blocks("dec"):
        if prefix.endswith("_in0."):
            adm.update(_dhariwal_block(edm, prefix, "middle_block.0", "middle_block.1",
                                       heads[prefix]))
        elif prefix.endswith("_in1."):
            adm.update(_dhariwal_block(edm, prefix, "middle_block.2", None, 0))
        elif prefix.endswith("_up."):
            last = max(int(k.split(".")[2]) for k in adm if k.startswith(
                f"output_blocks.{out_index}."))
            adm.update(_dhariwal_block(edm, prefix, f"output_blocks.{out_index}.{last + 1}",
                                       None, 0))
        else:
            out_index += 1
            adm.update(_dhariwal_block(edm, prefix, f"output_blocks.{out_index}.0",
                                       f"output_blocks.{out_index}.1", heads.get(prefix, 0)))
    known = ("map_layer0", "map_layer1", "map_label", "enc", "dec", "out_norm", "out_conv")
    unused = sorted(k for k in edm if k.split(".")[0] not in known)
    if unused:
        raise ValueError(f"DhariwalUNet parameters without an ADM counterpart: {unused}")
    return adm
