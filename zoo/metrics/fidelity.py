"""FID, IS, KID and precision/recall through torch-fidelity, in any registered feature space.

:class:`FidelityMetric` feeds samples batch by batch, as uint8 images, to a torch-fidelity
feature extractor φ and keeps only their features (:class:`FeatureStream`); from them and the
reference (the dataset's images d, or a ``--ref`` file) torch-fidelity's functions report:

- FD: Fréchet distance ‖μ_s − μ_d‖² + tr(Σ_s + Σ_d − 2(Σ_s Σ_d)^½) of Gaussians fit to φ(s), φ(d)
  ("FID" with Inception, "FD-digits" with the digits classifier);
- IS: exp E_s KL(p(y|s) ‖ p(y)) from the extractor's ``logits_unbiased``, mean over 10 splits;
- KID: unbiased MMD² with the cubic polynomial kernel, mean over 100 subsets of
  min(1000, n) samples drawn with ``rng_seed = seed``;
- precision / recall: fraction of samples inside the data manifold (k=3 nearest-neighbour balls)
  and of data inside the samples' manifold (Kynkäänniemi et al. 2019).

References (:func:`read_reference`): the dataset itself, openai's reference batches (``arr_0``
images) or EDM's statistics (``mu``, ``sigma``: FD and IS only, KID and precision/recall need
reference features). Reference features are computed once and cached by torch-fidelity under
``$ZOO_DATA_DIR/fidelity-cache``, keyed by the data (dataset name and checksum, or the file's
sha256), the extractor's name and a fingerprint of its weights, so later evaluations make no
pass over the reference.

A plugin adds a feature space by registering a torch-fidelity extractor with
:func:`register_feature_extractor` inside its ``register_metrics`` hook and registering a
``FidelityMetric(name, extractor_name, ...)``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from zoo.data import data_dir
from zoo.distributed import gather_samples, shard

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


def to_uint8(x: torch.Tensor, data_range: tuple[float, float],
             channels: int | None = None) -> torch.Tensor:
    """Images ``[..., C, H, W]`` in ``data_range`` as uint8: u = round((x − lo) / (hi − lo) · 255),
    clamped to 0..255; one channel is repeated to ``channels`` when given."""
    lo, hi = data_range
    u = ((x - lo) * (255 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)
    return u.expand(*u.shape[:-3], channels, *u.shape[-2:]) if channels else u


class UInt8Images(torch.utils.data.Dataset):
    """Images in ``data_range`` as the uint8 ``[C, H, W]`` tensors torch-fidelity expects
    (:func:`to_uint8`), converted per item, so the wrapped tensor is never copied whole."""

    def __init__(self, images, data_range: tuple[float, float], channels: int | None = None):
        self.images, self.data_range, self.channels = images, data_range, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_uint8(torch.as_tensor(self.images[i]), self.data_range, self.channels)


class NHWCImages(torch.utils.data.Dataset):
    """uint8 images ``[N, H, W, C]`` (openai's reference batches) as ``[C, H, W]`` tensors."""

    def __init__(self, images: np.ndarray, channels: int | None = None):
        self.images, self.channels = images, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        u = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        return u.expand(self.channels, *u.shape[1:]) if self.channels else u


REFERENCE_FORMATS = ("EDM's reference statistics (.npz with mu [D], sigma [D, D]) or openai's "
                     "reference batch (.npz with arr_0: uint8 images [N, H, W, C])")


def read_reference(path) -> dict:
    """A ``--ref`` file: ``{"images": uint8 [N, H, W, C]}`` when it holds ``arr_0`` (openai's
    evaluator batches, github.com/openai/guided-diffusion evaluations/; their precomputed ``mu``
    and ``sigma`` are then not used: the features come from the metric's own extractor), else
    ``{"mu", "sigma"}`` (EDM's ``fid.py ref``). Anything else: ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--ref {path}: no such file; expected {REFERENCE_FORMATS}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"--ref {path} is not a readable .npz file (not a zip archive); "
                         f"expected {REFERENCE_FORMATS}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "arr_0" in keys:
                images = npz["arr_0"]
                if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
                    raise ValueError(f"--ref {path}: arr_0 is {images.dtype} "
                                     f"{list(images.shape)}, not uint8 images [N, H, W, C] with "
                                     f"1 or 3 channels; expected {REFERENCE_FORMATS}")
                return {"images": images}
            if {"mu", "sigma"} <= keys:
                mu, sigma = npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64)
                if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                    raise ValueError(f"--ref {path}: mu {list(mu.shape)} and sigma "
                                     f"{list(sigma.shape)} are not a mean [D] and covariance "
                                     f"[D, D]")
                return {"mu": mu, "sigma": sigma}
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"--ref {path} is not a readable .npz file ({exc}); expected "
                         f"{REFERENCE_FORMATS}") from None
    raise ValueError(f"--ref {path} holds {', '.join(sorted(keys)) or 'nothing'}; expected "
                     f"{REFERENCE_FORMATS}")


def extractor_fingerprint(extractor: torch.nn.Module) -> str:
    """Short sha256 of an extractor's weights (its state dict): part of the reference cache key,
    so other weights under the same extractor name never reuse cached features."""
    digest = hashlib.sha256()
    for name, tensor in extractor.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def file_fingerprint(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _fid(stats_1: dict, stats_2: dict) -> float:
    """torch-fidelity's Fréchet distance on float64 statistics."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    as64 = [{k: np.asarray(s[k], dtype=np.float64) for k in ("mu", "sigma")}
            for s in (stats_1, stats_2)]
    return fid_statistics_to_metric(*as64, verbose=False)[KEY_METRIC_FID]


class FeatureStream:
    """A :class:`FidelityMetric` measuring samples fed batch by batch (:meth:`add`): only their
    features are kept (n × D per feature layer), never the images.

    With ``distributed`` every rank passes the same batch (as :func:`zoo.diffusion.samplers.
    generate` returns it under torchrun), extracts the features of its
    :func:`zoo.distributed.shard` of it and gathers the others': every rank ends with all
    features, in sample order. The reference (the dataset's features, cached; or ``ref``, see
    :func:`read_reference`) is read once, when the stream is made.
    """

    def __init__(self, metric: FidelityMetric, dataset, *, ref=None, batch_size: int = 256,
                 distributed: bool = False):
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
        from torch_fidelity.utils import create_feature_extractor

        metric.check_dataset(dataset)
        self.metric, self.batch_size, self.distributed = metric, batch_size, distributed
        self.data_range = dataset.data_range or (-1.0, 1.0)
        self.cuda = torch.cuda.is_available()
        options = metric.extractor_options()
        cls = FEATURE_EXTRACTORS_REGISTRY[metric.extractor]
        self.layers = {m: cls.get_default_feature_layer_for_metric(m)
                       for m in (("isc", "fid", "kid", "prc") if metric.isc
                                 else ("fid", "kid", "prc"))}
        self.extractor = create_feature_extractor(
            metric.extractor, sorted(set(self.layers.values())), cuda=self.cuda, verbose=False,
            **options)
        probe = self.extract(to_uint8(torch.zeros(1, *dataset.shape), self.data_range,
                                      metric.channels))
        self.dims = {k: v.shape[1] for k, v in probe.items()}
        self.dtypes = {k: v.dtype for k, v in probe.items()}
        self.reference = self.read_reference(dataset, ref)
        self.reset()

    def reset(self) -> None:
        """Forget the samples fed so far (the reference stays)."""
        self.parts = {k: [] for k in self.dims}
        self.finite = True

    def extract(self, u8: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of uint8 images ``[B, C, H, W]`` by layer, on the CPU."""
        with torch.no_grad():
            out = self.extractor(u8.cuda() if self.cuda else u8)
        return {k: v.cpu() for k, v in self.extractor.convert_features_tuple_to_dict(out).items()}

    def read_reference(self, dataset, ref) -> dict:
        """``{"features": [N, D]}`` (the dataset or openai images; torch-fidelity caches them
        keyed by the data, the extractor's name and its weights) or ``{"mu", "sigma"}``."""
        from torch_fidelity.utils import extract_featuresdict_from_input_id_cached

        layer = self.layers["fid"]
        fingerprint = extractor_fingerprint(self.extractor)
        if ref is None:
            images = UInt8Images(dataset.x, self.data_range, self.metric.channels)
            name = f"{self.metric.reference_key(dataset)}-{fingerprint}"
        else:
            found = read_reference(ref)
            if "images" not in found:
                if len(found["mu"]) != self.dims[layer]:
                    raise ValueError(
                        f"--ref {ref} holds {len(found['mu'])}-d statistics, but metric "
                        f"{self.metric.name!r} measures in the {self.dims[layer]}-d feature "
                        f"space of {self.metric.extractor} (layer {layer}); give a reference "
                        f"made with that extractor (e.g. Inception's 2048-d pool features for "
                        f"fid)")
                return found
            size, wanted = tuple(found["images"].shape[1:3]), tuple(dataset.shape[-2:])
            if size != wanted:
                raise ValueError(f"--ref {ref} holds {size[0]}×{size[1]} images, but the samples "
                                 f"of dataset {dataset.name!r} are {wanted[0]}×{wanted[1]}: give "
                                 "the reference batch of this resolution")
            images = NHWCImages(found["images"], self.metric.channels)
            name = f"ref-{file_fingerprint(ref)}-{fingerprint}"
        features = extract_featuresdict_from_input_id_cached(
            2, self.extractor, input2=images, input2_cache_name=name, cache=True,
            cache_root=str(cache_dir()), batch_size=self.batch_size, cuda=self.cuda,
            save_cpu_ram=True, verbose=False)
        return {"features": features[layer]}

    def add(self, x: torch.Tensor) -> None:
        """Feed samples ``[B, C, H, W]`` in the dataset's value range."""
        total = len(x)
        self.finite &= bool(torch.isfinite(x).all())
        if self.distributed:
            x = x[shard(list(range(total)))]
        local = {k: [torch.empty(0, d, dtype=self.dtypes[k])] for k, d in self.dims.items()}
        for i in range(0, len(x), self.batch_size):
            u8 = to_uint8(x[i : i + self.batch_size].detach().float().cpu(), self.data_range,
                          self.metric.channels)
            for k, v in self.extract(u8).items():
                local[k].append(v)
        for k, parts in local.items():
            features = torch.cat(parts)
            self.parts[k].append(gather_samples(features, total) if self.distributed
                                 else features)

    def features(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) if v else torch.empty(0, self.dims[k], dtype=self.dtypes[k])
                for k, v in self.parts.items()}

    def result(self, seed: int = 0) -> dict[str, float]:
        """The metric's results for the samples fed since the last :meth:`reset`: FD always, IS
        with ``isc``, KID and precision/recall when the reference has features (not for
        statistics-only references). ``seed`` fixes KID's subsets and IS's split."""
        from torch_fidelity.metric_fid import fid_features_to_statistics
        from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
        from torch_fidelity.metric_prc import prc_features_to_metric

        features = self.features()
        n, reference = len(features[self.layers["fid"]]), self.reference
        n_ref = len(reference["features"]) if "features" in reference else MIN_SAMPLES
        if n < MIN_SAMPLES or n_ref < MIN_SAMPLES:
            raise ValueError(f"metric {self.metric.name!r} needs at least {MIN_SAMPLES} samples "
                             f"and reference images, got {n} and {n_ref}")
        keys = self.metric.keys if "features" in reference else {
            k: v for k, v in self.metric.keys.items()
            if k in ("frechet_inception_distance", "inception_score_mean")}
        if not self.finite:
            return {ours: math.inf if self.metric.lower_is_better[ours] else math.nan
                    for ours in keys.values()}
        fid_layer = self.layers["fid"]
        stats = reference if "mu" in reference else fid_features_to_statistics(
            reference["features"])
        result = {"frechet_inception_distance": _fid(
            fid_features_to_statistics(features[fid_layer]), stats)}
        if self.metric.isc:
            result[KEY_METRIC_ISC_MEAN] = isc_features_to_metric(
                features[self.layers["isc"]], rng_seed=seed)[KEY_METRIC_ISC_MEAN]
        if "features" in reference:
            result[KEY_METRIC_KID_MEAN] = kid_features_to_metric(
                features[self.layers["kid"]], reference["features"],
                kid_subset_size=min(1000, n, n_ref), rng_seed=seed, verbose=False,
            )[KEY_METRIC_KID_MEAN]
            result.update(prc_features_to_metric(features[self.layers["prc"]],
                                                 reference["features"], save_cpu_ram=True,
                                                 verbose=False))
        return {ours: float(result[key]) for key, ours in keys.items()}


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

    def check_dataset(self, dataset) -> None:
        """Raise ``ValueError`` unless this feature space can measure images of ``dataset``."""
        if self.shape is not None and dataset.shape != self.shape:
            raise ValueError(f"metric {self.name!r} measures images of shape {self.shape}; "
                             f"dataset {dataset.name!r} holds {dataset.shape}")
        if self.channels is not None and dataset.shape[0] not in (1, self.channels):
            raise ValueError(f"metric {self.name!r} takes images with 1 or {self.channels} "
                             f"channels; dataset {dataset.name!r} has {dataset.shape[0]}")

    def extractor_options(self) -> dict:
        """Extra keyword arguments for the extractor's constructor (e.g. where its weights are)."""
        return {}

    def reference_key(self, dataset) -> str:
        """The cache name of the dataset's features: its name and checksum (the stream appends
        the extractor's weights fingerprint)."""
        return f"{dataset.name}-{dataset.checksum[:16]}"

    def stream(self, dataset, *, ref=None, batch_size: int = 256,
               distributed: bool = False) -> FeatureStream:
        """A :class:`FeatureStream` measuring samples batch by batch against ``dataset`` (or the
        reference file ``ref``)."""
        return FeatureStream(self, dataset, ref=ref, batch_size=batch_size,
                             distributed=distributed)

    def compute(self, samples: torch.Tensor, dataset, *, seed: int = 0, batch_size: int = 256,
                ref=None) -> dict[str, float]:
        """Measure ``samples`` (in the dataset's value range) against all of ``dataset`` (or
        ``ref``). The result does not depend on ``batch_size``; ``seed`` fixes KID's subsets and
        IS's split. Non-finite samples give ∞ for FD and KID and NaN for the others."""
        stream = self.stream(dataset, ref=ref, batch_size=batch_size)
        stream.add(samples)
        return stream.result(seed)


#: The leading hex digits of the Inception weights' sha256, in their file name as torch hub names
#: the files it checks (``torch.hub.download_url_to_file(hash_prefix=...)``).
INCEPTION_SHA256_PREFIX = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]


def check_inception_file(path: Path) -> None:
    """Refuse an Inception weights file whose sha256 does not begin with
    :data:`INCEPTION_SHA256_PREFIX` (a partial download, another network): FID from it would not
    be comparable to anyone's."""
    from zoo.files import sha256_file

    digest = sha256_file(path)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise InceptionWeightsError(
            f"{path} is not torch-fidelity's {INCEPTION_FILE}: its sha256 {digest} "
            f"does not begin with {INCEPTION_SHA256_PREFIX} (a partial or other download); get "
            f"it again from {INCEPTION_URL}")


def use_inception_weights(path: str | os.PathLike) -> None:
    """Make ``path`` (checked, :func:`inception_weights`) the Inception weights of every later
    feature extractor in this process and its children (``$ZOO_INCEPTION_WEIGHTS``)."""
    os.environ[INCEPTION_ENV] = str(inception_weights(path))


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
                f"{INCEPTION_ENV}); it should be torch-fidelity's {INCEPTION_FILE}, "
                f"downloadable from {INCEPTION_URL}"
            )
        return found
    found = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not found.is_file():
        raise InceptionWeightsError(
            f"FID/IS/KID need torch-fidelity's Inception weights {INCEPTION_FILE}, which are not "
            f"on this machine and are never downloaded here. Put the file in {found.parent}/ "
            f"(torch's hub cache), or set {INCEPTION_ENV}=PATH. "
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
        path = inception_weights(self.weights)
        check_inception_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        return {"feature_extractor_weights_path": buffer}
