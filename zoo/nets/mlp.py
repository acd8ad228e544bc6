"""A residual MLP score network for vector data (2D toy distributions and any D-dim vectors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nets.songunet import FourierEmbedding, PositionalEmbedding, label_embedding


class MLPBlock(nn.Module):
    """Pre-norm residual block: h + W₁·dropout(SiLU(W₀·LN(h) + A·emb))."""

    def __init__(self, hidden: int, emb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc0 = nn.Linear(hidden, hidden)
        self.affine = nn.Linear(emb_channels, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.fc0(self.norm(h)) + self.affine(emb))
        return h + self.fc1(F.dropout(x, p=self.dropout, training=self.training))


class MLPDenoiserNet(nn.Module):
    """F(x, c_noise, class) for x [B, D]: the noise label's embedding (positional as DDPM++, or
    Fourier as NCSN++; Song et al. 2021) and the class go through a mapping MLP into every
    residual block; the output layer starts at zero so that F ≡ 0 at initialisation."""

    def __init__(
        self,
        dim: int,
        label_dim: int = 0,
        hidden: int = 256,
        num_layers: int = 4,
        noise_channels: int = 64,
        embedding_type: str = "positional",
        fourier_scale: float = 1.0,
        dropout: float = 0.0,
        label_dropout: float = 0.0,
    ):
        super().__init__()
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        elif embedding_type == "fourier":
            self.map_noise = FourierEmbedding(noise_channels, scale=fourier_scale)
        else:
            raise ValueError(
                f"unknown embedding_type {embedding_type!r}; valid: positional, fourier"
            )
        self.dim, self.label_dim, self.label_dropout = dim, label_dim, label_dropout
        self.map_label = nn.Linear(label_dim, noise_channels) if label_dim else None
        self.map_layer0 = nn.Linear(noise_channels, hidden)
        self.map_layer1 = nn.Linear(hidden, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden, hidden, dropout) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, noise_labels, class_labels=None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        emb = self.map_noise(noise_labels.to(x.dtype).reshape(-1))
        if self.map_label is not None:
            emb = emb + label_embedding(self, class_labels, x)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))
