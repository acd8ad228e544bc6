"""SongUNet: the DDPM++ and NCSN++ score networks of Song et al. (2021), as configured in EDM.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021; Karras, Aittala, Aila, Laine, "Elucidating the
Design Space of Diffusion-Based Generative Models", NeurIPS 2022 (Appendix F.2).

Parameter and buffer names follow EDM's ``SongUNet`` so that a state dict of EDM's published
networks (the ``model.*`` entries) loads into :class:`SongUNet` unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = math.sqrt(0.5)  # residual branches are summed and rescaled by 1/√2
INIT_ZERO = 1e-5  # gain of the last layer of every residual branch (near-zero init)
INIT_ATTN = math.sqrt(0.2)  # gain of the attention qkv projection
EPS = 1e-6  # GroupNorm epsilon


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A Linear layer with EDM's SongUNet init: Xavier-uniform weight, zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer so that each group has at least 4 channels."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=EPS)


def label_input(class_labels, label_dim: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Class labels as a float [B, label_dim] tensor: one-hot rows, integer indices [B], or
    ``None`` (all zeros: the unconditional input of classifier-free guidance)."""
    if class_labels is None:
        return like.new_zeros(batch, label_dim)
    class_labels = torch.as_tensor(class_labels, device=like.device)
    if class_labels.ndim == 1 and not class_labels.is_floating_point():
        class_labels = F.one_hot(class_labels.long(), label_dim)
    if class_labels.shape != (batch, label_dim):
        raise ValueError(
            f"class_labels must be integer indices [{batch}] or one-hot [{batch}, {label_dim}], "
            f"got shape {tuple(class_labels.shape)}"
        )
    return class_labels.to(like.dtype)


def label_embedding(net, class_labels, x):
    """``net.map_label`` of the one-hot labels scaled by √label_dim (EDM), with label dropout
    (rate ``net.label_dropout``) while training."""
    labels = label_input(class_labels, net.label_dim, x.shape[0], x)
    if net.training and net.label_dropout:
        keep = torch.rand(x.shape[0], 1, device=x.device) >= net.label_dropout
        labels = labels * keep.to(labels.dtype)
    return net.map_label(labels * math.sqrt(net.label_dim))


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (Vaswani et al. 2017; DDPM++):
    [sin(x·ω_i), cos(x·ω_i)] with ω_i = (1/max_positions)^(i/(n−1)) (``endpoint``) or i/n."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.num_channels // 2
        freqs = torch.arange(n, dtype=torch.float32, device=x.device) / (n - int(self.endpoint))
        x = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([x.sin(), x.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (Tancik et al. 2020; NCSN++):
    [sin(2π·x·ω_i), cos(2π·x·ω_i)] with fixed ω_i ~ N(0, scale²)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.sin(), x.cos()], dim=1)


class Conv2d(nn.Module):
    """Convolution (``kernel`` 0 = none) with optional up/downsampling by 2 through the FIR
    ``resample_filter`` (Zhang 2019; Karras et al. 2020). ``fused_resample`` (downsampling
    only) convolves at full resolution first, then filters and subsamples."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        up: bool = False,
        down: bool = False,
        resample_filter=(1, 1),
        fused_resample: bool = False,
        init_weight: float = 1.0,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a Conv2d resamples up or down, not both")
        if fused_resample and not (down and kernel):
            raise ValueError("fused_resample needs down=True and a kernel")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = self.bias = None
        if kernel:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
            nn.init.xavier_uniform_(self.weight, gain=init_weight)
            self.bias = nn.Parameter(torch.zeros(out_channels))
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum() ** 2 if up or down else None
        self.register_buffer("resample_filter", f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, f = self.weight, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            c = self.out_channels
            x = F.conv2d(x, f.tile(c, 1, 1, 1), groups=c, stride=2)
        else:
            c = self.in_channels
            if self.up:
                x = F.conv_transpose2d(
                    x, (4 * f).tile(c, 1, 1, 1), groups=c, stride=2, padding=f_pad
                )
            if self.down:
                x = F.conv2d(x, f.tile(c, 1, 1, 1), groups=c, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x


class UNetBlock(nn.Module):
    """Residual block of DDPM++/NCSN++ (BigGAN-style): GroupNorm → SiLU → conv (with optional
    resampling), plus the embedding projected by ``affine``, GroupNorm → SiLU → dropout → conv,
    summed with a (1×1, resampled) skip and scaled by 1/√2; optionally followed by single-head
    self-attention softmax(qᵀk/√C)·v with its own scaled residual."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        dropout: float = 0.0,
        resample_filter=(1, 1),
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout = dropout
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = _group_norm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resample)
        self.affine = _linear(emb_channels, out_channels)
        self.norm1 = _group_norm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=INIT_ZERO)
        self.skip = None
        if in_channels != out_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, **resample)
        self.attention = attention
        if attention:
            self.norm2 = _group_norm(out_channels)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, init_weight=INIT_ATTN)
            self.proj = Conv2d(out_channels, out_channels, 1, init_weight=INIT_ZERO)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None]))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * SKIP_SCALE
        if self.attention:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, c, 3, h * w).unbind(2)
            # Explicit math (not a fused kernel) so that forward-mode AD (torch.func.jvp, used by
            # continuous-time consistency models) and double backward work; softmax in fp32.
            logits = torch.einsum("ncq,nck->nqk", q.float(), k.float()) / math.sqrt(c)
            a = torch.einsum("nqk,nck->ncq", logits.softmax(dim=2).to(v.dtype), v)
            x = (self.proj(a.reshape(b, c, h, w)) + x) * SKIP_SCALE
        return x


class SongUNet(nn.Module):
    """The DDPM++ / NCSN++ U-Net (Song et al. 2021) in EDM's formulation (Karras et al. 2022).

    ``forward(x, noise_labels, class_labels=None)``: ``x`` [B, C, H, W], ``noise_labels`` [B]
    (EDM's c_noise(σ) = ln(σ)/4), ``class_labels`` one-hot [B, label_dim] or indices [B];
    returns F(x) with the shape of ``x``. DDPM++: positional embedding, standard encoder,
    filter [1,1]; NCSN++: Fourier embedding (``channel_mult_noise`` 2), residual encoder,
    filter [1,3,3,1].
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult=(1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions=(16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter=(1, 1),
    ):
        super().__init__()
        for option, value, valid in [
            ("embedding_type", embedding_type, ("positional", "fourier")),
            ("encoder_type", encoder_type, ("standard", "skip", "residual")),
            ("decoder_type", decoder_type, ("standard", "skip")),
        ]:
            if value not in valid:
                raise ValueError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")
        factor = 2 ** (len(channel_mult) - 1)
        if img_resolution % factor:
            raise ValueError(
                f"resolution {img_resolution} is not divisible by 2**(len(channel_mult)-1) = "
                f"{factor} (channel_mult={list(channel_mult)}): the U-Net halves it "
                f"{len(channel_mult) - 1} times"
            )
        self.img_resolution = img_resolution
        self.in_channels, self.out_channels = in_channels, out_channels
        self.label_dim, self.augment_dim = label_dim, augment_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=resample_filter)

        # Mapping network: noise (+ class, + augmentation) embedding -> emb.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = _linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = _linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = _linear(noise_channels, emb_channels)
        self.map_layer1 = _linear(emb_channels, emb_channels)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, 0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux,
                        cout,
                        3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block
                )
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = _group_norm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    cout, out_channels, 3, init_weight=INIT_ZERO
                )

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        # Mapping.
        emb = self.map_noise(noise_labels.to(x.dtype).reshape(-1))
        if self.map_label is not None:
            emb = emb + label_embedding(self, class_labels, x)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        # Encoder: every non-auxiliary output is kept as a skip connection.
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder: "blockN" consume a skip; the output is the sum of the "aux" heads.
        aux = out = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                out = block(x)
            elif "aux_conv" in name:
                out = block(F.silu(out))
                aux = out if aux is None else out + aux
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux
