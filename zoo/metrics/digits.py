"""The digits classifier: the feature space of FD-digits (FID-style metrics on 8×8 digits).

A small CNN trained on ``load_dataset("digits", split="train")`` by
``benchmarks/train_digits_classifier.py``; its weights ship as ``digits_classifier.pt`` next to
this file. Importing this module registers it with torch-fidelity as the feature extractor
``zoo-digits`` with two features:

- ``features``: the 64-d penultimate activations (after ReLU), scaled to unit root-mean-square
  over the training split, used for FD, KID and precision/recall, as Inception's 2048-d pool
  features are for FID (the scale keeps KID's polynomial kernel in its intended range);
- ``logits_unbiased``: the 10 class logits, used for the Inception Score (IS-digits: the
  exponentiated mean KL divergence of p(y|x) from p(y), at most 10 here).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from zoo.metrics.fidelity import FidelityMetric, register_feature_extractor

WEIGHTS = Path(__file__).with_name("digits_classifier.pt")
EXTRACTOR = "zoo-digits"
TRAIN_SCRIPT = "benchmarks/train_digits_classifier.py"


class DigitsClassifier(nn.Module):
    """conv 16 → conv 32 → pool → conv 64 → pool → 64-d features → 10 logits, on 1×8×8 in [-1, 1].

    No batch norm or dropout, so a sample's features do not depend on the batch it is in.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(64 * 2 * 2, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.register_buffer("feature_scale", torch.ones(()))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.features(self.conv(x))
        return hidden * self.feature_scale, self.head(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random −1, 0 or +1 pixel along each axis (background −1 fills in)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_classifier(dataset, *, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0) -> DigitsClassifier:
    """Train on ``dataset`` (digits images, labels) with cross-entropy, Adam and ±1-pixel shifts,
    then set ``feature_scale`` so the features have unit root-mean-square on ``dataset``.

    Deterministic for a given ``seed`` (initialisation, order and shifts all come from it).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(dataset) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(dataset), generator=generator)
        for batch in order.split(batch_size):
            x = shift(dataset.x[batch], generator)
            loss = F.cross_entropy(model(x), dataset.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval().requires_grad_(False)
    model.feature_scale.fill_(model.features_and_logits(dataset.x)[0].pow(2).mean().rsqrt())
    return model


@torch.no_grad()
def accuracy(model: DigitsClassifier, dataset) -> float:
    """Fraction of ``dataset`` images whose argmax logit is their label."""
    return (model(dataset.x).argmax(1) == dataset.labels).float().mean().item()


def load_classifier(path: Path | None = None) -> DigitsClassifier:
    """The classifier at ``path`` (default: the shipped one) in eval mode, read with
    ``torch.load(weights_only=True)``."""
    path = Path(path or WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; train them with "
            f"`python {TRAIN_SCRIPT}` (writes {WEIGHTS.name} into zoo/metrics/)"
        )
    model = DigitsClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over uint8 ``[B, 1, 8, 8]`` images (0..255 ↦ [-1, 1])."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.model = load_classifier()

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "features", "kid": "features",
                "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(
                f"{EXTRACTOR} takes uint8 images [B, 1, 8, 8], got {x.dtype} {tuple(x.shape)}"
            )
        features, logits = self.model.features_and_logits(x.float() / 127.5 - 1)
        out = {"features": features, "logits_unbiased": logits}
        return tuple(out[name] for name in self.features_list)


register_feature_extractor(EXTRACTOR, DigitsFeatureExtractor)


class DigitsMetric(FidelityMetric):
    """FD-digits, IS-digits, KID-digits, precision-digits, recall-digits: FID-style metrics in the
    feature space of the shipped digits classifier (this module's extractor, registered with
    torch-fidelity on import), for 1×8×8 digits. Not comparable with Inception FID.
    """

    def __init__(self):
        super().__init__("fd-digits", "zoo-digits", fd_name="FD", suffix="-digits", shape=(1, 8, 8))
