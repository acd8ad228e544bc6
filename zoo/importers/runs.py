"""Released weights as zoo runs: the dataset record, the checkpoint and config an imported run
holds, and strict loading that names every key that does not fit."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class ImportFileError(ValueError):
    """A file that cannot be imported: the one-line message says what it is and what to do."""


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


def dataset_record(name: str, shape, check_data: bool | None = None) -> dict:
    """The run's record of its data. With ``check_data`` and ``name`` registered, the dataset is
    loaded, its shape checked and its checksum kept (distillation and the bench compare it);
    otherwise only the name, shape and kind are kept (checksum ``None``): sampling, editing and
    a bench against a ``--ref`` file do not need the data. ``None``: check it where its files
    are there, else keep the name (with a warning)."""
    from zoo import plugins
    from zoo.data import DatasetNotFoundError, load_dataset

    shape = [int(n) for n in shape]
    if check_data is False or name not in plugins.registry("datasets"):
        return {"name": name, "checksum": None, "shape": shape, "kind": "image"}
    try:
        data = load_dataset(name)
    except DatasetNotFoundError as exc:
        if check_data is None:
            warnings.warn(f"{name}'s files are not here ({exc}): the run records the dataset's "
                          "name without its checksum. Sampling, editing and zoo bench --ref need "
                          "no more; to use it as a distillation teacher, import it again where "
                          "the data is", stacklevel=2)
            return {"name": name, "checksum": None, "shape": shape, "kind": "image"}
        raise DatasetNotFoundError(f"{exc}; or import without --check-data (sampling, editing "
                                   "and zoo bench --ref need no data)") from None
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
