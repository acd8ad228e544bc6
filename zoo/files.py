"""What a file that cannot be read is, in one line: shared by every reader of torch files (zoo
checkpoints, EDM pickles, openai state dicts), so none of them imports another for it."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for something outside the whitelist; nothing from it was executed."""


def file_kind(path) -> str:
    """``empty``, ``zip`` (torch.save's format), ``pickle`` (protocol 2+) or ``text``/``binary``
    (anything else), from the first bytes of ``path``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def unreadable_file_message(path, exc: BaseException, expected: str, todo: str) -> str:
    """One line saying what ``path`` is instead of ``expected`` and what to do (``todo``).

    A file that ``torch.load(weights_only=True)`` refuses is reported by the object it asked
    for; torch's advice to retry with ``weights_only=False`` (which runs the file's code) is
    never passed on.
    """
    kind = file_kind(path)
    if kind == "empty":
        return f"{path} is empty (0 bytes), not {expected}: {todo}"
    if kind in ("text", "binary") and not isinstance(exc, UnsafePickleError):
        return f"{path} is a {kind} file, not {expected}: {todo}"
    if isinstance(exc, UnsafePickleError):
        return f"{path} was refused: {exc}"
    message = str(exc)
    if "Weights only load failed" in message:
        wanted = re.search(r"GLOBAL ([\w.]+)", message)
        opcode = re.search(r"Unsupported operand (\d+)", message)
        reason = (f"it asks for {wanted.group(1)}" if wanted else
                  f"pickle opcode {opcode.group(1)}" if opcode else "objects other than tensors")
        return (f"{path} was refused: it is not plain tensor data ({reason}); nothing in it was "
                f"executed. Use a checkpoint from a trusted source: {todo}")
    return f"{path} is truncated or corrupt ({type(exc).__name__}), not {expected}: {todo}"


def user_file_mode() -> int:
    """The mode an ordinary new file of this user gets: 0666 less the umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_file(**options) -> tuple[int, str]:
    """``tempfile.mkstemp(**options)`` for a file that is then renamed into place, with the mode
    of an ordinary file of this user (:func:`user_file_mode`), not mkstemp's 0600."""
    fd, path = tempfile.mkstemp(**options)
    os.fchmod(fd, user_file_mode())
    return fd, path


def sha256_file(path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
