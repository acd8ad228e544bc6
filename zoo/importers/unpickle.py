"""Reading EDM's released pickles (Karras et al. 2022) without running code from the file.

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
:class:`UnsafePickleError`.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy as np
import torch

from zoo.files import UnsafePickleError


class PickledObject:
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
    ("torch.nn.modules.container", name): type(name, (PickledObject,), {"class_name": name})
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
    return PickledObject(name, state)


def _reconstructor(cls, base, state):
    """Replacement for ``copyreg._reconstructor`` (protocol 0/1 objects): records only."""
    if not (isinstance(cls, type) and issubclass(cls, PickledObject)) or base is not object:
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
