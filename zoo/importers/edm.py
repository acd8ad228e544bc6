"""EDM's released networks (Karras et al. 2022) as ``edm`` runs: the pickle read by the restricted
unpickler (:mod:`zoo.importers.unpickle`), the SongUNet or DhariwalUNet inside rebuilt as
:class:`zoo.nets.SongUNet` or :class:`zoo.nets.adm.ADMUNet` from its recorded constructor arguments
and loaded with the recorded tensors."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoo.files import UnsafePickleError, file_kind, sha256_file, unreadable_file_message
from zoo.importers.runs import (
    ImportFileError,
    dataset_record,
    load_strict,
    write_imported_run,
)
from zoo.importers.unpickle import PickledObject, RestrictedUnpickler
from zoo.nets.adm import ADMUNet, dhariwal_state_dict_to_adm, dhariwal_to_adm_kwargs
from zoo.nets.songunet import SongUNet

EDM_DOWNLOADS = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


def zip_checkpoint_advice(path) -> str:
    """What to do with a torch.save checkpoint given to the EDM importer: openai's state dicts
    (``input_blocks.*``) import with ``zoo import-openai``; a bare state dict of EDM's networks
    (``model.enc.*``, ``model.dec.*``) lacks the constructor arguments its pickle records."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: the generic advice
        state = None
    keys = list(state) if isinstance(state, dict) else []
    if any(k.startswith(("input_blocks.", "module.input_blocks.")) for k in keys):
        return "it is an openai state dict: import it with `zoo import-openai --preset ...`"
    if any(k.startswith(("model.enc.", "model.dec.", "enc.", "dec.")) for k in keys):
        return ("it is a bare state dict of an EDM network, without the constructor arguments "
                "(channels, resolutions, ...) that EDM's pickles record and zoo needs to rebuild "
                "the network; import the network-snapshot-*.pkl that EDM's training wrote beside "
                f"it, or a released pickle from {EDM_DOWNLOADS}")
    return ("openai's .pt checkpoints import with `zoo import-openai`; EDM's networks are "
            f"pickles (network-snapshot-*.pkl, {EDM_DOWNLOADS})")


def restricted_load(path) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; a file that is not a complete
    pickle raises :class:`ImportFileError`, a refused one :class:`UnsafePickleError`."""
    expected = "an EDM network pickle"
    todo = f"download it again from {EDM_DOWNLOADS}"
    if file_kind(path) == "zip":
        raise ImportFileError(f"{path} is a torch.save zip checkpoint, not {expected}: "
                              + zip_checkpoint_advice(path))
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as exc:
        raise ImportFileError(unreadable_file_message(path, exc, expected, todo)) from None


def _tensors(record: PickledObject, prefix: str = "") -> dict[str, torch.Tensor]:
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
        if not isinstance(child, PickledObject):
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


def read_edm_pickle(path) -> EDMNetwork:
    """Read an EDM network pickle (``{'ema': EDMPrecond, ...}`` or a bare ``EDMPrecond``)."""
    data = restricted_load(path)
    precond = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(precond, PickledObject) or precond.class_name != "EDMPrecond":
        found = getattr(precond, "class_name", type(precond).__name__)
        raise ValueError(f"{path}: expected EDM's EDMPrecond network under 'ema', found {found} "
                         "(VP/VE/iDDPM preconditioners are not supported)")
    model = (precond.state.get("_modules") or {}).get("model")
    if not isinstance(model, PickledObject) or model.class_name not in ("SongUNet", "DhariwalUNet"):
        found = getattr(model, "class_name", type(model).__name__)
        raise ValueError(f"{path}: the EDMPrecond wraps {found}; supported: SongUNet "
                         "(DDPM++/NCSN++) and DhariwalUNet (ADM)")
    if model.state.get("_init_args"):
        raise ValueError(f"{path}: {model.class_name} was built with positional arguments; "
                         "expected kwargs")
    return EDMNetwork(_plain(precond.state.get("_init_kwargs") or {}),
                      _plain(model.state.get("_init_kwargs") or {}), _tensors(model),
                      model.class_name)


def import_edm_run(pickle_path, run_dir, dataset: str = "cifar10", method: str = "edm",
                   check_data: bool | None = None) -> Path:
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
