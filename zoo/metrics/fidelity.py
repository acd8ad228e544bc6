"""FID, IS, KID and precision/recall through torch-fidelity, in any registered feature space.

:class:`FidelityMetric` hands torch-fidelity the samples and the dataset as uint8 images and
reports, for feature extractor φ (samples s, dataset images d):

- FD: Fréchet distance ‖μ_s − μ_d‖² + tr(Σ_s + Σ_d − 2(Σ_s Σ_d)^½) of Gaussians fit to φ(s), φ(d)
  ("FID" with Inception, "FD-digits" with the digits classifier);
- IS: exp E_s KL(p(y|s) ‖ p(y)) from the extractor's ``logits_unbiased``, mean over 10 splits;
- KID: unbiased MMD² with the cubic polynomial kernel, mean over 100 subsets of
  min(1000, n) samples drawn with ``rng_seed = seed``;
- precision / recall: fraction of samples inside the data manifold (k=3 nearest-neighbour balls)
  and of data inside the samples' manifold (Kynkäänniemi et al. 2019).

The dataset's features and FD statistics are computed once and cached by torch-fidelity under
``$ZOO_DATA_DIR/fidelity-cache``, keyed by dataset name, checksum, extractor (and the digits
classifier's weights), so later evaluations make no pass over the dataset.

A plugin adds a feature space by registering a torch-fidelity extractor with
:func:`register_feature_extractor` inside its ``register_metrics`` hook and registering a
``FidelityMetric(name, extractor_name, ...)``.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch

from zoo.data import data_dir

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "ZOO_INCEPTION_WEIGHTS"
MIN_SAMPLES = 10  # IS uses 10 splits; KID and precision/recall need a few samples too


class InceptionWeightsError(FileNotFoundError):
    """torch-fidelity's Inception weights are not here; the message says where to put them."""


def cache_dir() -> Path:
    """Where torch-fidelity caches reference features and FD statistics."""
    return data_dir() / "fidelity-cache"


def register_feature_extractor(name: str, cls) -> None:
    """Register ``cls`` (a ``torch_fidelity.FeatureExtractorBase`` subclass) with torch-fidelity.

    Registering the same class under the same name again does nothing (plugin hooks run each time
    the registries are rebuilt); another class under a taken name is an error.
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.registry import register_feature_extractor as register

    existing = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if existing is cls:
        return
    if existing is not None:
        raise ValueError(f"feature extractor {name!r} is already registered with torch-fidelity "
                         f"as {existing.__module__}.{existing.__qualname__}")
    register(name, cls)


class UInt8Images(torch.utils.data.Dataset):
    """Images in ``data_range`` as the uint8 ``[C, H, W]`` tensors torch-fidelity expects.

    u = round((x − lo) / (hi − lo) · 255), clamped to 0..255; one channel is repeated to
    ``channels`` when given. Converted per item, so the wrapped tensor is never copied whole.
    """

    def __init__(self, images: torch.Tensor, data_range: tuple[float, float],
                 channels: int | None = None):
        self.images, self.data_range, self.channels = images, data_range, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        lo, hi = self.data_range
        u = ((self.images[i] - lo) * (255 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)
        return u.expand(self.channels, *u.shape[1:]) if self.channels else u


class FidelityMetric:
    """FD, IS, KID, precision and recall in the feature space of torch-fidelity extractor
    ``extractor``; result keys ``f"{fd_name}{suffix}"``, ``f"IS{suffix}"``, ``f"KID{suffix}"``,
    ``f"precision{suffix}"``, ``f"recall{suffix}"`` (IS only with ``isc``).

    ``shape``: the one per-image shape the extractor takes (None: any); ``channels``: repeat
    grayscale images to this many channels (None: pass as they are).
    """

    kinds = ("image",)

    def __init__(self, name: str, extractor: str, *, fd_name: str = "FD", suffix: str = "",
                 isc: bool = True, shape: tuple[int, ...] | None = None,
                 channels: int | None = None):
        self.name, self.extractor, self.isc = name, extractor, isc
        self.shape, self.channels = shape, channels
        self.keys = {"frechet_inception_distance": f"{fd_name}{suffix}",
                     "kernel_inception_distance_mean": f"KID{suffix}",
                     "precision": f"precision{suffix}", "recall": f"recall{suffix}"}
        if isc:
            self.keys["inception_score_mean"] = f"IS{suffix}"
        lower = {"frechet_inception_distance", "kernel_inception_distance_mean"}
        self.lower_is_better = {ours: key in lower for key, ours in self.keys.items()}

    def check(self, samples: torch.Tensor, dataset) -> None:
        """Raise ``ValueError`` unless this feature space can measure ``samples`` on ``dataset``."""
        if self.shape is not None and dataset.shape != self.shape:
            raise ValueError(f"metric {self.name!r} measures images of shape {self.shape}; "
                             f"dataset {dataset.name!r} holds {dataset.shape}")
        if self.channels is not None and dataset.shape[0] not in (1, self.channels):
            raise ValueError(f"metric {self.name!r} takes images with 1 or {self.channels} "
                             f"channels; dataset {dataset.name!r} has {dataset.shape[0]}")
        if len(samples) < MIN_SAMPLES or len(dataset) < MIN_SAMPLES:
            raise ValueError(f"metric {self.name!r} needs at least {MIN_SAMPLES} samples and "
                             f"dataset images, got {len(samples)} and {len(dataset)}")

    def extractor_options(self) -> dict:
        """Extra keyword arguments for the extractor's constructor (e.g. where its weights are)."""
        return {}

    def reference_key(self, dataset) -> str:
        """The cache name of the dataset's features: its name and checksum."""
        return f"{dataset.name}-{dataset.checksum[:16]}"

    def compute(self, samples: torch.Tensor, dataset, *, seed: int = 0,
                batch_size: int = 256) -> dict[str, float]:
        """Measure ``samples`` (in the dataset's value range) against all of ``dataset``.

        The result does not depend on ``batch_size``; ``seed`` fixes KID's subsets and IS's split.
        Non-finite samples give ∞ for FD and KID and NaN for the others.
        """
        import torch_fidelity

        self.check(samples, dataset)
        samples = samples.detach().float().cpu()
        if not torch.isfinite(samples).all():
            return {k: math.inf if low else math.nan for k, low in self.lower_is_better.items()}
        data_range = dataset.data_range or (-1.0, 1.0)
        n = min(len(samples), len(dataset))
        result = torch_fidelity.calculate_metrics(
            input1=UInt8Images(samples, data_range, self.channels),
            input2=UInt8Images(dataset.x, data_range, self.channels),
            input2_cache_name=self.reference_key(dataset),
            cache=True, cache_root=str(cache_dir()),
            feature_extractor=self.extractor, fid=True, isc=self.isc, kid=True, prc=True,
            kid_subset_size=min(1000, n), rng_seed=seed, batch_size=batch_size,
            cuda=torch.cuda.is_available(), save_cpu_ram=True, verbose=False,
            **self.extractor_options(),
        )
        return {ours: float(result[key]) for key, ours in self.keys.items()}


def inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$ZOO_INCEPTION_WEIGHTS``, else
    ``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (where
    torch-fidelity's own download would put it). Offline, nothing is downloaded: a missing file
    raises :class:`InceptionWeightsError` naming the file, the folder and the URL.
    """
    given = path or os.environ.get(INCEPTION_ENV)
    if given:
        found = Path(given).expanduser()
        if not found.is_file():
            raise InceptionWeightsError(
                f"Inception weights not found at {found} (from --inception-weights or "
                f"${INCEPTION_ENV}); it should be torch-fidelity's {INCEPTION_FILE}, "
                f"downloadable from {INCEPTION_URL}"
            )
        return found
    found = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not found.is_file():
        raise InceptionWeightsError(
            f"FID/IS/KID need torch-fidelity's Inception weights {INCEPTION_FILE}, which are not "
            f"on this machine and are never downloaded here. Put the file in {found.parent}/ "
            f"(torch's hub cache), or pass --inception-weights PATH (or set ${INCEPTION_ENV}). "
            f"Get it, on a machine with internet, from {INCEPTION_URL}"
        )
    return found


class InceptionMetric(FidelityMetric):
    """FID, IS, KID, precision/recall with torch-fidelity's ``inception-v3-compat`` (the TF
    Inception of the FID paper), for CIFAR-10 and image folders.

    ``weights``: path of the weights file (default: see :func:`inception_weights`). It is read with
    ``torch.load(weights_only=True)`` and handed to torch-fidelity as an in-memory state dict.
    """

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__("fid", "inception-v3-compat", fd_name="FID", channels=3)
        self.weights = weights

    def extractor_options(self) -> dict:
        state = torch.load(inception_weights(self.weights), map_location="cpu", weights_only=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        return {"feature_extractor_weights_path": buffer}


class DigitsMetric(FidelityMetric):
    """FD-digits, IS-digits, KID-digits, precision-digits, recall-digits: FID-style metrics in the
    feature space of the shipped digits classifier (:mod:`zoo.metrics.digits`), for 1×8×8 digits.
    Not comparable with Inception FID.
    """

    def __init__(self):
        super().__init__("fd-digits", "zoo-digits", fd_name="FD", suffix="-digits", shape=(1, 8, 8))

    def extractor_options(self) -> dict:
        import zoo.metrics.digits  # noqa: F401  (registers the zoo-digits extractor)

        return {}

    def reference_key(self, dataset) -> str:
        """Dataset name and checksum, and the classifier's weights: retraining invalidates it."""
        from zoo.metrics.digits import weights_fingerprint

        return f"{super().reference_key(dataset)}-{weights_fingerprint()}"
