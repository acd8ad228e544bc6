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

from zoo.nets.songunet import SongUNet


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for something outside the whitelist; nothing from it was executed."""


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


def restricted_load(path) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()


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
    """What an EDM pickle holds for us: the preconditioner's and the SongUNet's constructor
    arguments and the SongUNet's tensors (names as in :class:`zoo.nets.SongUNet`)."""

    precond_kwargs: dict
    model_kwargs: dict
    state_dict: dict[str, torch.Tensor]

    def build(self) -> SongUNet:
        """Our SongUNet with EDM's constructor arguments, loaded with the pickle's tensors."""
        try:
            net = SongUNet(**self.model_kwargs)
        except TypeError as exc:
            raise ValueError(f"EDM SongUNet arguments {self.model_kwargs} do not fit "
                             f"zoo.nets.SongUNet: {exc}") from None
        net.load_state_dict(self.state_dict, strict=True)
        return net


def read_edm_pickle(path) -> EDMNetwork:
    """Read an EDM network pickle (``{'ema': EDMPrecond, ...}`` or a bare ``EDMPrecond``)."""
    data = restricted_load(path)
    precond = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(precond, _Record) or precond.class_name != "EDMPrecond":
        found = getattr(precond, "class_name", type(precond).__name__)
        raise ValueError(f"{path}: expected EDM's EDMPrecond network under 'ema', found {found} "
                         "(VP/VE/iDDPM preconditioners are not supported)")
    model = (precond.state.get("_modules") or {}).get("model")
    if not isinstance(model, _Record) or model.class_name != "SongUNet":
        found = getattr(model, "class_name", type(model).__name__)
        raise ValueError(f"{path}: the EDMPrecond wraps {found}; only SongUNet (DDPM++/NCSN++) "
                         "is supported")
    if model.state.get("_init_args"):
        raise ValueError(f"{path}: SongUNet was built with positional arguments; expected kwargs")
    return EDMNetwork(_plain(precond.state.get("_init_kwargs") or {}),
                      _plain(model.state.get("_init_kwargs") or {}), _tensors(model))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_edm_run(pickle_path, run_dir, dataset: str = "cifar10", method: str = "edm") -> Path:
    """Write an EDM pickle as a run of ``method`` (a diffusion denoiser with EDM's
    preconditioning, ``edm`` by default) on ``dataset``, usable as a teacher (``--teacher``).

    The run records the dataset's checksum (so distillation checks the data as for a trained
    run), the network as ``network="songunet"`` with EDM's arguments, the weights as both ``net``
    and ``ema``, step 0, and the source file's sha256 under ``imported_from``.
    """
    from zoo import plugins
    from zoo.data import load_dataset
    from zoo.training import CheckpointError, Trainer, save_checkpoint
    from zoo.training.checkpoint import CHECKPOINT_NAME
    from zoo.training.config import save_config

    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT_NAME).exists():
        raise CheckpointError(f"{run_dir} already holds a checkpoint; choose another --out")
    network = read_edm_pickle(pickle_path)
    kwargs = dict(network.model_kwargs)
    if kwargs.pop("label_dim", 0):
        raise ValueError("class-conditional EDM networks are not supported (label_dim > 0)")
    data = load_dataset(dataset)
    shape = (kwargs.pop("in_channels"), kwargs["img_resolution"], kwargs.pop("img_resolution"))
    if shape != tuple(data.shape) or kwargs.get("out_channels", shape[0]) != shape[0]:
        raise ValueError(f"{pickle_path} is a network for images {shape}, but dataset {dataset} "
                         f"holds {tuple(data.shape)}")
    m = plugins.get("methods", method)
    sigma_data = network.precond_kwargs.get("sigma_data", 0.5)
    config = m.configure(dataset, network="songunet", network_kwargs=kwargs, device="cpu",
                         sigma_data=sigma_data)
    config.method = m.name
    task = m.make_task(config, data)
    task.net.net.load_state_dict(network.build().state_dict())
    trainer = Trainer(task, config, data, run_dir, progress=False)
    imported = {"file": str(pickle_path), "sha256": sha256_file(pickle_path),
                "format": "edm-pickle", "precond_kwargs": network.precond_kwargs}
    save_checkpoint({**trainer.state_dict(), "imported_from": imported}, run_dir / CHECKPOINT_NAME)
    save_config(config, run_dir / "config.json")
    return run_dir
