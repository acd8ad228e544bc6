"""Weights out of the zoo: a run's weights as a safetensors file, and that file back as a run
(a consistency run of the ``adm`` network as a diffusers pipeline: :mod:`zoo.export_diffusers`).

The file holds the denoiser's ``state_dict`` (the run's EMA weights, or its raw trained ones)
and, in the safetensors metadata (strings), everything needed to rebuild the run: the method,
its resolved config (JSON), the dataset record (JSON), the step and which weights these are.
Reading it never runs code from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.files import temporary_file, user_file_mode

FORMAT = "zoo-safetensors"
FORMAT_VERSION = "1"
WEIGHTS = ("ema", "raw")


class ExportError(ValueError):
    """A file that is not a zoo safetensors export, or an export that cannot be written."""


def run_weights(run, weights: str = "ema") -> tuple[dict, dict]:
    """``(state, tensors)``: the checkpoint of ``run`` (a run directory or a checkpoint or
    snapshot file) and its ``weights`` (``ema``: the evaluation EMA, or ``raw``: the trained
    ones), the denoiser's state dict as CPU tensors of their own."""
    from zoo.training import load_checkpoint

    if weights not in WEIGHTS:
        raise ExportError(f"weights={weights!r}; valid: {', '.join(WEIGHTS)}")
    state = load_checkpoint(run)
    key = "ema" if weights == "ema" else "net"
    if key not in state:
        raise ExportError(f"{run} holds the EMA weights only (a snapshot): export --weights ema")
    # Own, contiguous storage per tensor: safetensors refuses tensors that share memory.
    return state, {name: t.detach().cpu().contiguous().clone() for name, t in state[key].items()}


def export_safetensors(run, out, *, weights: str = "ema") -> Path:
    """Write ``run``'s ``weights`` (``ema`` or ``raw``) to the safetensors file ``out`` with the
    run's method, config, dataset record and step in its metadata; the file is written complete
    or not at all. ``run`` is a run directory or a checkpoint or snapshot file."""
    from safetensors.torch import save_file

    import zoo

    state, tensors = run_weights(run, weights)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": state["method"],
        "config": json.dumps(state["config"]),
        "dataset": json.dumps(state["dataset"]),
        "step": str(state["step"]),
        "weights": weights,
        "zoo_version": zoo.__version__,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(dir=out.parent, prefix=out.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)  # writes a new file of mode 0600
        os.chmod(tmp, user_file_mode())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_safetensors(path) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a zoo safetensors export, the metadata decoded (``config`` and
    ``dataset`` as dicts, ``step`` as an int); anything else is an :class:`ExportError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ExportError(f"cannot read {path} as safetensors: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is a safetensors file without zoo's metadata (format "
                          f"{FORMAT!r}); only files written by `zoo export` can become runs")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has zoo export format version {meta.get('format_version')}, "
                          f"this zoo reads version {FORMAT_VERSION}")
    try:
        meta["config"], meta["dataset"] = json.loads(meta["config"]), json.loads(meta["dataset"])
        meta["step"] = int(meta["step"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ExportError(f"{path}: zoo's metadata in it is damaged ({type(exc).__name__}: "
                          f"{exc}); export the run again") from None
    return meta, tensors


def import_safetensors(path, run_dir) -> Path:
    """Write the zoo safetensors export ``path`` as the run ``run_dir`` (``checkpoint.pt`` and
    ``config.json``) that ``zoo sample --run``, ``zoo edit`` and ``zoo bench`` load: the file's
    weights as the run's weights (EMA and raw alike), its config, dataset record and step. Like
    the other imported runs it holds no optimizer state, so it is sampled, not resumed."""
    from zoo import plugins
    from zoo.importers import save_weights_run, sha256_file
    from zoo.training.config import config_from_dict

    meta, tensors = read_safetensors(path)
    method = plugins.get("methods", meta["method"])
    config = config_from_dict(method.config_class, meta["config"])
    # The weights must fit the method's denoiser for this config before a run is written.
    method.build_denoiser(config, meta["dataset"]["shape"]).load_state_dict(tensors)
    imported = {"file": str(path), "sha256": sha256_file(path), "weights": meta["weights"]}
    return save_weights_run(run_dir, config, meta["dataset"], tensors, imported, meta["step"])
