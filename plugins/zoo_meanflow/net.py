"""u_θ(z, r, t): a core network fed the two times of the average velocity.

The core networks take one noise label, embedded by their ``map_noise`` module (a positional or
Fourier embedding) before their mapping MLP. :class:`MeanFlowNet` wraps such a network without
changing it: it passes the pair (t, t − r) as a [B, 2] label, which the network flattens to
[2B] before embedding, and :class:`TimePairEmbedding` returns e(t) + e(t − r), the sum of the
two embeddings (the MeanFlow paper conditions on (t, t − r), its Table 1c, and adds the two
time embeddings). With r ≤ t the sum determines the pair, as sin(aω) + sin(bω) =
2·sin((a + b)ω/2)·cos((a − b)ω/2) over the embedding's frequencies ω gives a + b and |a − b|.
"""

from __future__ import annotations

import torch
from torch import nn


class TimePairEmbedding(nn.Module):
    """e(t) + e(t − r) from the interleaved labels [t_0, h_0, t_1, h_1, …] (h = t − r)."""

    def __init__(self, embed: nn.Module):
        super().__init__()
        self.embed = embed

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        e = self.embed(labels)
        return e.view(-1, 2, e.shape[-1]).sum(1)


class MeanFlowNet(nn.Module):
    """u_θ(z, (r, t), class_labels): the average velocity over [r, t] at z = z_t.

    The times come as one pair ``(r, t)`` (scalars or one value per sample) in the place of the
    noise level of the core's ``denoiser(x, sigma, class_labels)`` calls, so the core's
    ``generate``/``NFECounter`` drive it unchanged. The network sees (s·t, s·(t − r)) with
    s = ``time_scale``. ``net`` must embed its noise label with a ``map_noise`` module, as the
    registry's ``mlp`` and SongUNet networks (``ddpmpp``, ``ncsnpp``, ``ddpmpp-small``) do.
    """

    def __init__(self, net: nn.Module, time_scale: float = 1.0):
        super().__init__()
        if not isinstance(getattr(net, "map_noise", None), nn.Module):
            raise ValueError(f"MeanFlow feeds two times through the network's noise embedding "
                             f"(map_noise); {type(net).__name__} has none: use mlp or a SongUNet "
                             "(ddpmpp, ncsnpp, ddpmpp-small, songunet)")
        net.map_noise = TimePairEmbedding(net.map_noise)
        self.net, self.time_scale = net, time_scale

    def forward(self, z, times, class_labels=None, augment_labels=None):
        r, t = (torch.as_tensor(s, dtype=z.dtype, device=z.device).expand(z.shape[0])
                for s in times)
        labels = torch.stack([t, t - r], 1) * self.time_scale
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        return self.net(z, labels, class_labels, **extra)
