"""Import EDM's released networks (Karras et al. 2022) without running code from the file.

EDM publishes its networks (``edm-cifar10-32x32-uncond-vp.pkl``, ``network-snapshot-*.pkl``) as
plain pickles of ``dict(ema=EDMPrecond(...), ...)`` whose modules are ``torch_utils.persistence``
objects: each is rebuilt by ``_reconstruct_persistent_obj(meta)``, which *executes* the Python
source in ``meta["module_src"]`` (https://github.com/NVlabs/edm, torch_utils/persistence.py).
Loading such a file with ``pickle`` runs whatever source it carries.

:class:`RestrictedUnpickler` instead resolves only a whitelist: torch's tensor and parameter
rebuild functions (replaced by checked equivalents; storages are read with
``torch.load(weights_only=True)``), ``OrderedDict``, ``set``, numeric numpy scalars, torch's
module containers and ``dnnlib.util.EasyDict`` (as inert records), and the persistence hook,
mapped to a function that keeps ``meta["class_name"]`` and ``meta["state"]`` and never looks at
``module_src``. Anything else (``os.system``, ``builtins.exec``, another class) is refused with
:class:`UnsafePickleError`. The SongUNet inside is rebuilt as :class:`zoo.nets.SongUNet` from its
recorded constructor arguments and loaded with the recorded tensors.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoo.data.images import IMAGENET64_CLASSES
from zoo.files import UnsafePickleError, file_kind, unreadable_file_message
from zoo.nets.adm import ADMUNet, dhariwal_state_dict_to_adm, dhariwal_to_adm_kwargs
from zoo.nets.songunet import SongUNet


class _Record:
    """An inert stand-in for a module: its class name and the state the pickle recorded."""

    class_name = ""

    def __init__(self, class_name: str = "", state=None):
        self.class_name = class_name or type(self).class_name
        self.state = state if state is not None else {}

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<record of {self.class_name}>"


#: torch containers EDM's networks use, as inert record classes (rebuilt by NEWOBJ + BUILD).
_CONTAINERS = {
    ("torch.nn.modules.container", name): type(name, (_Record,), {"class_name": name})
    for name in ("ModuleDict", "ModuleList", "Sequential")
}


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict."""


def _reconstruct_persistent_obj(meta):
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: records the class
    name and state; ``meta["module_src"]`` is never compiled or executed."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("malformed persistent object: expected meta with type 'class'")
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise UnsafePickleError("malformed persistent object: no class_name or state")
    return _Record(name, state)


def _reconstructor(cls, base, state):
    """Replacement for ``copyreg._reconstructor`` (protocol 0/1 objects): records only."""
    if not (isinstance(cls, type) and issubclass(cls, _Record)) or base is not object:
        raise UnsafePickleError(f"refusing to reconstruct {cls!r}")
    return cls(cls.class_name, state)


def _storage_from_bytes(data: bytes):
    """Replacement for ``torch.storage._load_from_bytes``: the bytes are a legacy ``torch.save``
    of one storage, read with ``weights_only=True``."""
    if not isinstance(data, bytes):
        raise UnsafePickleError("storage payload is not bytes")
    storage = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"storage payload holds {type(storage).__name__}, not a storage")
    return storage


def _tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """Checked ``torch._utils._rebuild_tensor_v2``: a view of a storage read above, no hooks."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)) or hooks:
        raise UnsafePickleError("tensor record without a plain storage, or with hooks")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())


def _parameter(data, requires_grad, hooks, state=None):
    """``torch._utils._rebuild_parameter(_with_state)`` as the plain tensor (no hooks or state)."""
    if not isinstance(data, torch.Tensor) or hooks or state:
        raise UnsafePickleError("parameter record without a tensor, or with hooks or state")
    return data


def _numpy_scalar(dtype, data=None):
    """A numeric numpy scalar (e.g. EDM's ``skip_scale = np.sqrt(0.5)``) from its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise UnsafePickleError(f"only numeric numpy scalars are read, not {dtype!r}")
    return np.frombuffer(data, dtype)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.kind not in "biuf":
        raise UnsafePickleError(f"only numeric numpy dtypes are read, not {name!r}")
    return dtype


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **_CONTAINERS,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the whitelist above (see the module)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: the pickle may only hold tensors, containers "
                "and EDM network records (torch_utils.persistence); nothing was executed"
            ) from None


class ImportFileError(ValueError):
    """A file that cannot be imported: the one-line message says what it is and what to do."""


EDM_DOWNLOADS = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
OPENAI_DOWNLOADS = "https://openaipublic.blob.core.windows.net/consistency/"


def restricted_load(path) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; a file that is not a complete
    pickle raises :class:`ImportFileError`, a refused one :class:`UnsafePickleError`."""
    expected = "an EDM network pickle"
    todo = f"download it again from {EDM_DOWNLOADS}"
    if file_kind(path) == "zip":
        raise ImportFileError(f"{path} is a torch.save zip checkpoint, not {expected}: openai's "
                              ".pt checkpoints import with `zoo import-openai`")
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as exc:
        raise ImportFileError(unreadable_file_message(path, exc, expected, todo)) from None


def _tensors(record: _Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a module record: parameters, persistent buffers, then submodules."""
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    out = {}
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is None or name in skip:
                continue
            if not isinstance(value, torch.Tensor):
                raise UnsafePickleError(f"{prefix}{name} is {type(value).__name__}, not a tensor")
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _Record):
            raise UnsafePickleError(f"submodule {prefix}{name} is not a module record")
        out.update(_tensors(child, f"{prefix}{name}."))
    return out


def _plain(value):
    """Constructor arguments as JSON-able Python values (numpy scalars → numbers)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UnsafePickleError(f"constructor argument of type {type(value).__name__} is not data")


@dataclass
class EDMNetwork:
    """What an EDM pickle holds for us: the preconditioner's and the network's constructor
    arguments, the network's class (``SongUNet`` or ``DhariwalUNet``) and its tensors."""

    precond_kwargs: dict
    model_kwargs: dict
    state_dict: dict[str, torch.Tensor]
    model_class: str = "SongUNet"

    def zoo_network(self) -> tuple[str, dict, dict[str, torch.Tensor]]:
        """The registered network (``songunet`` or ``adm``), its constructor arguments and its
        state dict; DhariwalUNet's through :func:`zoo.nets.adm.dhariwal_state_dict_to_adm`."""
        if self.model_class == "DhariwalUNet":
            return ("adm", dhariwal_to_adm_kwargs(self.model_kwargs),
                    dhariwal_state_dict_to_adm(self.state_dict))
        return "songunet", dict(self.model_kwargs), self.state_dict

    def build(self) -> torch.nn.Module:
        """Our network with EDM's constructor arguments, loaded with the pickle's tensors."""
        name, kwargs, state_dict = self.zoo_network()
        cls = ADMUNet if name == "adm" else SongUNet
        try:
            net = cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"EDM {self.model_class} arguments {self.model_kwargs} do not fit "
                             f"zoo.nets.{cls.__name__}: {exc}") from None
        load_strict(net, state_dict, f"EDM {self.model_class}")
        return net


MAX_KEYS_LISTED = 20


def load_strict(net: torch.nn.Module, state_dict: dict, source: str) -> None:
    """``net.load_state_dict(state_dict, strict=True)``, the missing, unexpected and mismatched
    keys (up to ``MAX_KEYS_LISTED`` of each, with their counts) in ONE :class:`ValueError`."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
                        for k in set(own) & set(state_dict)
                        if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:MAX_KEYS_LISTED])}"
                 + (f", ... {len(keys) - MAX_KEYS_LISTED} more" if len(keys) > MAX_KEYS_LISTED
                    else "") for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
                 if keys]
        raise ValueError(f"{source} does not fit the network: " + "; ".join(parts))
    net.load_state_dict(state_dict, strict=True)


def read_edm_pickle(path) -> EDMNetwork:
    """Read an EDM network pickle (``{'ema': EDMPrecond, ...}`` or a bare ``EDMPrecond``)."""
    data = restricted_load(path)
    precond = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(precond, _Record) or precond.class_name != "EDMPrecond":
        found = getattr(precond, "class_name", type(precond).__name__)
        raise ValueError(f"{path}: expected EDM's EDMPrecond network under 'ema', found {found} "
                         "(VP/VE/iDDPM preconditioners are not supported)")
    model = (precond.state.get("_modules") or {}).get("model")
    if not isinstance(model, _Record) or model.class_name not in ("SongUNet", "DhariwalUNet"):
        found = getattr(model, "class_name", type(model).__name__)
        raise ValueError(f"{path}: the EDMPrecond wraps {found}; supported: SongUNet "
                         "(DDPM++/NCSN++) and DhariwalUNet (ADM)")
    if model.state.get("_init_args"):
        raise ValueError(f"{path}: {model.class_name} was built with positional arguments; "
                         "expected kwargs")
    return EDMNetwork(_plain(precond.state.get("_init_kwargs") or {}),
                      _plain(model.state.get("_init_kwargs") or {}), _tensors(model),
                      model.class_name)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_record(name: str, shape, check_data: bool) -> dict:
    """The run's record of its data. With ``check_data`` and ``name`` registered, the dataset is
    loaded, its shape checked and its checksum kept (distillation and the bench compare it);
    otherwise only the name, shape and kind are kept (checksum ``None``): sampling and editing
    do not need the data."""
    from zoo import plugins
    from zoo.data import DatasetNotFoundError, load_dataset

    shape = [int(n) for n in shape]
    if not check_data or name not in plugins.registry("datasets"):
        return {"name": name, "checksum": None, "shape": shape, "kind": "image"}
    try:
        data = load_dataset(name)
    except DatasetNotFoundError as exc:
        raise DatasetNotFoundError(f"{exc}; or import with --no-check-data (sampling and "
                                   "editing need no data)") from None
    if list(data.shape) != shape:
        raise ValueError(f"the network is for images {tuple(shape)}, but dataset {name} holds "
                         f"{tuple(data.shape)}")
    return {"name": data.name, "checksum": data.checksum, "shape": shape, "kind": data.kind}


def save_weights_run(run_dir, config, data: dict, weights: dict, imported: dict,
                     step: int = 0) -> Path:
    """Write ``run_dir`` as a run of ``config.method`` holding ``weights`` (the denoiser's state
    dict, as both the trained and the EMA weights): ``checkpoint.pt`` in the trainer's layout
    without optimizer and loader state (an imported run is sampled, not resumed) and
    ``config.json``. ``imported`` (the source file, its sha256, ...) is kept under
    ``imported_from``; an existing checkpoint is never overwritten."""
    import zoo
    from zoo.training import CheckpointError, save_checkpoint
    from zoo.training.checkpoint import CHECKPOINT_NAME
    from zoo.training.config import config_to_dict, save_config

    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT_NAME).exists():
        raise CheckpointError(f"{run_dir} already holds a checkpoint; choose another --out")
    state = {"step": step, "method": config.method, "config": config_to_dict(config),
             "dataset": data, "zoo_version": zoo.__version__, "net": weights, "ema": weights,
             "imported_from": imported}
    save_checkpoint(state, run_dir / CHECKPOINT_NAME)
    save_config(config, run_dir / "config.json")
    return run_dir


def write_imported_run(run_dir, method: str, config_fields: dict, network: str,
                       network_kwargs: dict, state_dict: dict, data: dict, imported: dict) -> Path:
    """Write ``run_dir`` as a step-0 run of ``method`` whose network ``network(**kwargs)`` holds
    ``state_dict`` (:func:`save_weights_run`)."""
    from zoo import plugins

    m = plugins.get("methods", method)
    config = m.config_class(method=m.name, dataset=data["name"], network=network,
                            network_kwargs=network_kwargs, device="cpu", **config_fields)
    denoiser = m.build_denoiser(config, data["shape"])
    load_strict(denoiser.net, state_dict, imported["file"])
    return save_weights_run(run_dir, config, data, denoiser.state_dict(), imported)


def import_edm_run(pickle_path, run_dir, dataset: str = "cifar10", method: str = "edm",
                   check_data: bool = True) -> Path:
    """Write an EDM pickle as a run of ``method`` (a diffusion denoiser with EDM's
    preconditioning, ``edm`` by default) on ``dataset``, usable as a teacher (``--teacher``).

    SongUNet becomes ``network="songunet"``, DhariwalUNet ``network="adm"`` (renamed weights),
    with EDM's arguments; see :func:`dataset_record` for the data and :func:`write_imported_run`
    for the run.
    """
    network = read_edm_pickle(pickle_path)
    name, kwargs, state_dict = network.zoo_network()
    shape = (kwargs.pop("in_channels"), kwargs["img_resolution"], kwargs.pop("img_resolution"))
    num_classes = kwargs.pop("label_dim", 0)
    if kwargs.get("out_channels", shape[0]) != shape[0]:
        raise ValueError(f"{pickle_path}: {kwargs['out_channels']} output channels for "
                         f"{shape[0]} input channels")
    data = dataset_record(dataset, shape, check_data)
    imported = {"file": str(pickle_path), "sha256": sha256_file(pickle_path),
                "format": "edm-pickle", "precond_kwargs": network.precond_kwargs}
    return write_imported_run(run_dir, method,
                              {"sigma_data": network.precond_kwargs.get("sigma_data", 0.5),
                               "num_classes": num_classes},
                              name, kwargs, state_dict, data, imported)


# ------------------------------------------------------------------ openai/consistency_models

#: The architecture flags every openai/consistency_models command in scripts/launch.sh passes
#: for ImageNet-64 (``--class_cond True --num_channels 192 --num_res_blocks 3
#: --attention_resolutions 32,16,8 --num_head_channels 64 --resblock_updown True
#: --use_scale_shift_norm True --use_fp16 True --image_size 64``); channel_mult (1, 2, 3, 4) is
#: cm/script_util.py create_model's default for image_size 64; its 1000 classes (NUM_CLASSES)
#: are the run's ``num_classes``.
ADM_IMAGENET64 = dict(model_channels=192, channel_mult=[1, 2, 3, 4], num_res_blocks=3,
                      attn_resolutions=[32, 16, 8], num_head_channels=64,
                      use_scale_shift_norm=True, resblock_updown=True, use_fp16=True,
                      noise_label_scale=1000.0)
#: LSUN-256 flags of scripts/launch.sh (``--class_cond False --num_channels 256
#: --num_res_blocks 2 --attention_resolutions 32,16,8 --num_head_channels 64
#: --resblock_updown True --use_scale_shift_norm False --use_fp16 True --image_size 256``);
#: channel_mult (1, 1, 2, 2, 4, 4) is create_model's default for image_size 256.
ADM_LSUN256 = dict(model_channels=256, channel_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2,
                   attn_resolutions=[32, 16, 8], num_head_channels=64,
                   use_scale_shift_norm=False, resblock_updown=True, use_fp16=True,
                   noise_label_scale=1000.0)


def karras_sigma(index: int, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0) -> float:
    """σ at ``index`` of openai's ``--steps`` Karras grid, as cm/karras_diffusion.py's
    ``stochastic_iterative_sampler`` computes it from ``--ts``."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + index / (steps - 1) * (lo - hi)) ** rho


def _two_step_sigmas(ts_middle: int, steps: int) -> str:
    """``sample_sigmas`` for openai's two-step ``--ts 0,MIDDLE,END --steps STEPS``: σ(0) = 80,
    σ(MIDDLE) (the last ts, σ_min, only re-noises by √(σ_min² − σ_min²) = 0)."""
    return f"{karras_sigma(0, steps)!r},{karras_sigma(ts_middle, steps)!r}"


@dataclass(frozen=True)
class OpenAIPreset:
    """The settings of one released file: method, data, network, classes and CM sampling."""

    file: str
    method: str
    dataset: str
    shape: tuple
    network_kwargs: dict
    method_fields: dict
    num_classes: int = 0


def _cm(file, dataset, shape, net, mode, distance, sigmas):
    fields = dict(mode=mode, distance=distance, init="random", teacher="", sample_sigmas=sigmas)
    return OpenAIPreset(file, "cm", dataset, shape, dict(net, dropout=0.0), fields,
                        IMAGENET64_CLASSES if dataset == "imagenet64" else 0)


#: ``--dropout``: 0.1 for the EDM teachers, 0.0 for the CM students (scripts/launch.sh); the
#: two-step σ are launch.sh's ``--ts``/``--steps`` of its multistep commands; CD on LSUN cat has
#: no published two-step schedule, so its default is one step (pass ``--sigmas`` for more).
OPENAI_PRESETS = {
    "edm-imagenet64": OpenAIPreset("edm_imagenet64_ema.pt", "edm", "imagenet64", (3, 64, 64),
                                   dict(ADM_IMAGENET64, dropout=0.1), {}, IMAGENET64_CLASSES),
    "cd-imagenet64-l2": _cm("cd_imagenet64_l2.pt", "imagenet64", (3, 64, 64), ADM_IMAGENET64,
                            "cd", "l2", _two_step_sigmas(22, 40)),
    "cd-imagenet64-lpips": _cm("cd_imagenet64_lpips.pt", "imagenet64", (3, 64, 64),
                               ADM_IMAGENET64, "cd", "lpips", _two_step_sigmas(22, 40)),
    "ct-imagenet64": _cm("ct_imagenet64.pt", "imagenet64", (3, 64, 64), ADM_IMAGENET64, "ct",
                         "lpips", _two_step_sigmas(106, 201)),
    "edm-lsun-bedroom256": OpenAIPreset("edm_bedroom256_ema.pt", "edm", "lsun-bedroom256",
                                        (3, 256, 256), dict(ADM_LSUN256, dropout=0.1), {}),
    "cd-lsun-bedroom256-l2": _cm("cd_bedroom256_l2.pt", "lsun-bedroom256", (3, 256, 256),
                                 ADM_LSUN256, "cd", "l2", _two_step_sigmas(18, 40)),
    "cd-lsun-bedroom256-lpips": _cm("cd_bedroom256_lpips.pt", "lsun-bedroom256", (3, 256, 256),
                                    ADM_LSUN256, "cd", "lpips", _two_step_sigmas(17, 40)),
    "ct-lsun-bedroom256": _cm("ct_bedroom256.pt", "lsun-bedroom256", (3, 256, 256),
                              ADM_LSUN256, "ct", "lpips", _two_step_sigmas(67, 151)),
    "edm-lsun-cat256": OpenAIPreset("edm_cat256_ema.pt", "edm", "lsun-cat256", (3, 256, 256),
                                    dict(ADM_LSUN256, dropout=0.1), {}),
    "cd-lsun-cat256-l2": _cm("cd_cat256_l2.pt", "lsun-cat256", (3, 256, 256), ADM_LSUN256,
                             "cd", "l2", repr(karras_sigma(0, 40))),
    "cd-lsun-cat256-lpips": _cm("cd_cat256_lpips.pt", "lsun-cat256", (3, 256, 256),
                                ADM_LSUN256, "cd", "lpips", repr(karras_sigma(0, 40))),
    "ct-lsun-cat256": _cm("ct_cat256.pt", "lsun-cat256", (3, 256, 256), ADM_LSUN256, "ct",
                          "lpips", _two_step_sigmas(62, 151)),
}


def load_openai_state_dict(path) -> dict[str, torch.Tensor]:
    """openai's released ``.pt`` (a state dict of ``UNetModel``) read with
    ``torch.load(weights_only=True)``; anything else raises :class:`ImportFileError`."""
    expected = "an openai/consistency_models checkpoint (.pt state dict)"
    todo = f"download it again from {OPENAI_DOWNLOADS} (see docs/reproduce.md)"
    if file_kind(path) == "pickle":
        raise ImportFileError(f"{path} is a Python pickle, not {expected} (torch.save's zip "
                              "format): EDM's network pickles import with `zoo import-edm`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise ImportFileError(unreadable_file_message(path, exc, expected, todo)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ImportFileError(f"{path} holds a {type(state).__name__}, not {expected}: {todo}")
    return state


def import_openai_run(checkpoint, run_dir, preset: str | OpenAIPreset, method: str | None = None,
                      dataset: str | None = None, check_data: bool = True) -> Path:
    """Write openai's released ``checkpoint`` as a ``cm`` or ``edm`` run (``preset``: a name of
    :data:`OPENAI_PRESETS` or a preset) on the preset's dataset (or ``dataset``).

    The network is ``adm`` with the preset's arguments, loaded with ``strict=True`` (every
    missing, unexpected or mismatched key in one error). EDM teachers get EDM's
    preconditioning, CD/CT students the consistency parameterisation (σ_min 0.002, σ_max 80,
    σ_d 0.5: cm/karras_diffusion.py ``KarrasDenoiser``); both feed the network 1000·c_noise
    (``noise_label_scale``), as ``KarrasDenoiser.denoise`` does.
    """
    if isinstance(preset, str):
        if preset not in OPENAI_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(OPENAI_PRESETS)}")
        preset = OPENAI_PRESETS[preset]
    if method and method != preset.method:
        raise ValueError(f"{preset.file} is a {preset.method!r} checkpoint, not {method!r}: "
                         f"use --method {preset.method} or another --preset")
    state_dict = load_openai_state_dict(checkpoint)
    data = dataset_record(dataset or preset.dataset, preset.shape, check_data)
    fields = dict(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0,
                  num_classes=preset.num_classes, **preset.method_fields)
    imported = {"file": f"{checkpoint} (preset for {preset.file})",
                "sha256": sha256_file(checkpoint), "format": "openai-consistency-models",
                "source": OPENAI_DOWNLOADS + preset.file}
    return write_imported_run(run_dir, preset.method, fields, "adm", dict(preset.network_kwargs),
                              state_dict, data, imported)
