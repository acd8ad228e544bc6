"""Sampling a bench's rows: every row's ``n`` samples from the same seeds, batch by batch into the
metrics and the sample files (``samples/ROW.npz``, PNG folders), and its picture."""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import zoo
from zoo import distributed, plugins
from zoo.bench.results import PICTURE_N, PUBLISHED_N, BenchError, RowResult
from zoo.data import Dataset
from zoo.methods import BenchRow, Method

#: ``--save-samples`` choices: ``auto`` saves every row's samples (``samples/ROW.npz``) unless
#: the row is a real-image bench of the published size (50,000 images per row), the others as
#: :data:`zoo.sample_export.FORMATS` (``npz``: always, ``png``: the PNG folder only).
SAVE_SAMPLES = ("auto", "none", "png", "npz", "both")


def export_formats(save_samples: str, data: Dataset, n: int) -> str:
    """The :data:`zoo.sample_export.FORMATS` entry that ``--save-samples`` means for ``n``
    samples per row of ``data``: ``auto`` is ``npz`` for points and for image benches of fewer
    than :data:`PUBLISHED_N` samples, else ``none``; PNGs are for images only."""
    if save_samples not in SAVE_SAMPLES:
        raise BenchError(f"--save-samples {save_samples!r}: accepted: {', '.join(SAVE_SAMPLES)}")
    if save_samples == "auto":
        return "npz" if data.kind != "image" or n < PUBLISHED_N else "none"
    if save_samples in ("png", "both") and data.kind != "image":
        raise BenchError(f"--save-samples {save_samples} writes images; dataset {data.name} "
                         f"holds {data.kind} (npz keeps them)")
    return save_samples


def row_failure(method: Method, row: BenchRow, exc: BaseException) -> str:
    """One line naming the row, its method and sampler with their plugins, and the error."""
    source = plugins.registry("methods").source(method.name)
    sampler = row.options.get("sampler") or method.default_sampler
    by = ""
    if sampler and sampler in plugins.registry("samplers"):
        by = f" with sampler {sampler!r} ({plugins.registry('samplers').source(sampler)})"
    return (f"row {row.label!r} (NFE {row.nfe}) of method {method.name!r} ({source}) failed"
            f"{by}: {type(exc).__name__}: {exc}")


def measure_row(method: Method, entry, row: BenchRow, record: dict, data: Dataset, n: int, *,
                seed: int, batch_size: int, device: str, weights: str, evaluation, formats: str,
                out: Path, progress: bool) -> RowResult:
    """Sample and score one row (:func:`bench_row`) and save its picture."""
    run = method.load(row.run_dir, device=device, ema=weights == "ema")
    method.sample(run, 1, seed=seed, batch_size=1, device=device, **row.options)  # warm-up
    result = RowResult(entry.method, row, {}, 0.0, record["checksum"], record["step"],
                       weights=weights, cost=record["cost"], entry=entry.key,
                       stamp=record["stamp"], tuning_fwd=record["tuning"])
    picture = bench_row(method, run, result, data, n, seed=seed, batch_size=batch_size,
                        device=device, evaluation=evaluation, formats=formats,
                        stem=out / "samples" / row_stem(row), progress=progress)
    result.metrics = evaluation.result()
    if distributed.is_main():
        result.samples_picture = str(save_row_samples(result, picture, data, out))
    return result


def row_info(result: RowResult, data: Dataset, n: int, seed: int) -> dict:
    """What a row's samples file records: the data, the seeds, the row and its run."""
    row = result.row
    return {"dataset": data.name, "dataset_checksum": data.checksum, "kind": data.kind,
            "data_range": list(data.data_range or (-1.0, 1.0)), "n": n,
            "seeds": [seed, seed + n - 1], "method": result.method, "entry": result.entry,
            "label": row.label, "nfe": row.nfe, "sampler": result.sampler,
            "options": row.options, "run_dir": str(row.run_dir),
            "run_checksum": result.checksum, "run_step": result.step,
            "weights": result.weights, "zoo_version": zoo.__version__}


def bench_row(method: Method, run, result: RowResult, data: Dataset, n: int, *, seed: int,
              batch_size: int, device: str, evaluation, formats: str, stem: Path,
              progress: bool = False):
    """Sample one row's ``n`` samples in steps of ``batch_size`` per rank, each step fed to
    ``evaluation`` (reset first) and the sample files (``formats``, :func:`export_formats`:
    ``STEM.npz`` with the row's :func:`row_info`, the PNG folder ``STEM/``); set the result's
    sampler, sampling rate (samples/s, sampling only) and samples file, and return the first
    samples (the picture: :data:`PICTURE_N` images, or every point). Sample i comes from seed
    ``seed + i`` whatever the steps, so the samples equal one call's."""
    from zoo.metrics.fidelity import to_uint8
    from zoo.sample_export import NpzWriter, SampleExport

    row = result.row
    evaluation.reset()
    keep = PICTURE_N if data.kind == "image" else n
    picture, elapsed = [], 0.0
    export = None
    if data.kind == "image" and formats != "none":
        export = SampleExport(stem, n, data.shape, formats, npz=distributed.is_main())
        distributed.barrier()  # rank 0 has emptied the PNG folder
    elif formats == "npz" and distributed.is_main():
        export = NpzWriter(stem.with_suffix(".npz"), n, data.shape, np.float32)
    step = batch_size * distributed.world_size()
    try:
        for start in tqdm(range(0, n, step), desc=row.label, leave=False,
                          disable=not progress or not distributed.is_main(), dynamic_ncols=True):
            count = min(step, n - start)
            began = time.perf_counter()
            samples = method.sample(run, count, seed=seed + start, batch_size=batch_size,
                                    device=device, **row.options)
            elapsed += time.perf_counter() - began
            if samples.nfe != row.nfe:
                raise BenchError(f"{method.name} row {row.label!r} promises NFE {row.nfe} but its "
                                 f"sampler used {samples.nfe}")
            bad = int((~torch.isfinite(samples.x.flatten(1))).any(1).sum())
            if bad:
                raise BenchError(f"{bad} of {len(samples.x)} samples (seeds {seed + start}.."
                                 f"{seed + start + count - 1}) are not finite (NaN or inf): a "
                                 "non-finite sample never enters a table")
            result.sampler = samples.info.get("sampler")
            evaluation.add(samples.x)
            if sum(map(len, picture)) < keep:
                picture.append(samples.x[: keep - sum(map(len, picture))].cpu())
            if isinstance(export, SampleExport):
                u8 = to_uint8(samples.x.float().cpu(), data.data_range or (-1.0, 1.0))
                export.add_npz(u8, samples.labels)
                mine = distributed.shard(list(range(count)))
                export.add_png(u8[mine], [start + i for i in mine])
            elif export is not None:
                export.add(samples.x.float().cpu().numpy(), samples.labels)
    except BaseException:
        if export is not None:
            export.abort()
        raise
    result.samples_per_s = n / elapsed
    if export is not None:
        info = {"info": np.array(json.dumps(row_info(result, data, n, seed)))}
        export.close(info)
        if formats in ("npz", "both"):
            result.samples_file = f"samples/{row_stem(row)}.npz"
    if data.kind == "image" and formats != "none":
        distributed.barrier()
    return torch.cat(picture)


def check_npz_sizes(path: Path, limit: int) -> None:
    """Refuse an ``.npz`` whose arrays declare more than ``limit`` bytes in all, from their npy
    headers alone, before anything is decompressed (a small file can declare gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = 0
            for info in archive.infolist():
                with archive.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise BenchError(f"{path} is not a complete bench samples file ({type(exc).__name__}: "
                         f"{exc}); rerun the bench to write it again") from None
    if total > limit:
        raise BenchError(f"{path} declares {total / 2**30:.1f} GiB of arrays, more than the "
                         f"{limit / 2**30:.0f} GiB a bench's samples take; not read")


def read_row_samples(path: Path, data: Dataset):
    """``(samples, info)`` from a row's samples file (:func:`bench_row`): float samples in the
    data's range (images from their saved uint8 values, the values the feature-space metrics
    see) and the row record."""
    check_npz_sizes(path, limit=4 * 2**30)
    try:
        with np.load(path, allow_pickle=False) as saved:
            info = json.loads(str(saved["info"]))
            x = torch.from_numpy(saved["arr_0"])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise BenchError(f"{path} is not a complete bench samples file ({type(exc).__name__}: "
                         f"{exc}); rerun the bench to write it again") from None
    if info["kind"] == "image":
        lo, hi = info["data_range"]
        x = x.permute(0, 3, 1, 2).float() * ((hi - lo) / 255) + lo
    return x, info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def row_stem(row: BenchRow) -> str:
    """A row's file name without extension: ``cd-l2-nfe1``."""
    return f"{_slug(row.label)}-nfe{row.nfe}"


def save_row_samples(result: RowResult, x, data: Dataset, out: Path) -> Path:
    """The row's picture: a grid of its first samples (at most :data:`PICTURE_N`) or a scatter
    plot of its points."""
    from zoo.viz import save_image_grid, save_scatter

    path = out / "samples" / f"{row_stem(result.row)}.png"
    if data.kind == "image":
        return save_image_grid(x[:PICTURE_N], path)
    title = f"{result.row.label}  NFE={result.row.nfe}"
    return save_scatter(x, path, title, reference=data.x[: len(x)])
