"""Bench samples written for external evaluators, batch by batch (memory bounded by one batch).

- ``png``: a folder of ``{i:06d}.png`` (sample i, drawn from seed SEED+i), what EDM's ``fid.py
  calc --images=FOLDER`` (github.com/NVlabs/edm) and clean-fid's ``compute_fid(FOLDER, ...)``
  read;
- ``npz``: openai's evaluator batch (github.com/openai/guided-diffusion, evaluations/
  evaluator.py): ``arr_0`` uint8 ``[N, H, W, C]`` and, for class-conditional samples, ``arr_1``
  int64 labels, deflate-compressed, its ``arr_0`` member written as the batches come (the
  bench adds its row record as ``info``: :func:`zoo.bench.read_row_samples`).

Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from zoo.files import temporary_file

#: ``--save-samples`` choices.
FORMATS = ("none", "png", "npz", "both")


def _npy_header(shape, dtype) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(shape)})
    return buffer.getvalue()


class NpzWriter:
    """A compressed npz of ``n`` items ``item_shape`` of ``dtype`` written in sample order as
    ``arr_0`` (openai's evaluator batch: uint8 images ``[H, W, C]``), their labels as ``arr_1``
    and any ``extra`` arrays given to :meth:`close` (e.g. the bench's ``info``)."""

    def __init__(self, path, n: int, item_shape, dtype=np.uint8, *, name: str = "arr_0",
                 labels_name: str = "arr_1"):
        self.path, self.n, self.written, self.labels = Path(path), n, 0, []
        self.dtype, self.labels_name = np.dtype(dtype), labels_name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = temporary_file(dir=self.path.parent, prefix=f".{self.path.stem}.",
                                        suffix=".npz")
        os.close(fd)
        self.zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True)
        self.member = self.zip.open(f"{name}.npy", "w", force_zip64=True)
        self.member.write(_npy_header((n, *item_shape), self.dtype))

    def add(self, items: np.ndarray, labels=None) -> None:
        """Append items ``[B, *item_shape]`` (and their labels)."""
        self.member.write(np.ascontiguousarray(items, dtype=self.dtype).tobytes())
        self.written += len(items)
        if labels is not None:
            self.labels.append(np.asarray(labels, dtype=np.int64))

    def close(self, extra: dict[str, np.ndarray] | None = None) -> Path:
        """Finish the file (``arr_1`` when labels came, then ``extra``) and move it into
        place."""
        self.member.close()
        if self.written != self.n:
            self.abort()
            raise RuntimeError(f"{self.path}: {self.written} samples written, {self.n} declared")
        members = {self.labels_name: np.concatenate(self.labels)} if self.labels else {}
        for name, array in {**members, **(extra or {})}.items():
            with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
        self.zip.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file (no temporary file is left), whatever state it is in: it
        runs while another error propagates, which it must never replace."""
        try:
            self.member.close()
            self.zip.close()
        except Exception:  # noqa: BLE001 - the caller's error is the one to report
            pass
        finally:
            Path(self.tmp).unlink(missing_ok=True)


def write_png(image: np.ndarray, path: Path) -> None:
    """One uint8 ``[H, W, C]`` image as a PNG (grayscale for one channel), written atomically."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}")
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
    os.replace(tmp, path)


class SampleExport:
    """A bench row's samples as ``STEM/`` (PNG folder) and/or ``STEM.npz`` (``formats``, one of
    :data:`FORMATS`). ``npz``: this process writes the npz (rank 0 under torchrun; the others
    pass False). Each process writes the PNGs of the samples :meth:`add` gives it; the folder
    is emptied first."""

    def __init__(self, stem, n: int, shape_chw, formats: str, *, npz: bool = True):
        if formats not in FORMATS:
            raise ValueError(f"--save-samples {formats!r}: accepted: {', '.join(FORMATS)}")
        stem = Path(stem)
        self.folder = stem if formats in ("png", "both") else None
        self.npz = None
        if formats in ("npz", "both") and npz:
            c, h, w = shape_chw
            self.npz = NpzWriter(stem.with_suffix(".npz"), n, (h, w, c))
        if self.folder is not None and npz:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)

    @staticmethod
    def nhwc(u8: torch.Tensor) -> np.ndarray:
        return u8.permute(0, 2, 3, 1).cpu().numpy()

    def add_npz(self, u8: torch.Tensor, labels=None) -> None:
        """Append uint8 ``[B, C, H, W]`` images of the whole batch, in sample order."""
        if self.npz is not None:
            self.npz.add(self.nhwc(u8), None if labels is None else torch.as_tensor(labels))

    def add_png(self, u8: torch.Tensor, indices) -> None:
        """Write uint8 ``[B, C, H, W]`` images as ``{index:06d}.png``."""
        if self.folder is not None:
            for image, i in zip(self.nhwc(u8), indices, strict=True):
                write_png(image, self.folder / f"{i:06d}.png")

    def close(self, extra: dict[str, np.ndarray] | None = None) -> list[Path]:
        """The files written (npz completed here, with the ``extra`` arrays)."""
        done = [self.npz.close(extra)] if self.npz is not None else []
        return done + ([self.folder] if self.folder is not None else [])

    def abort(self) -> None:
        if self.npz is not None:
            self.npz.abort()
