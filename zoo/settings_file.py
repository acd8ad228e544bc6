"""Settings files: ``zoo train --config FILE.toml`` reads a run's settings from TOML (any flag
overrides them), and ``--dry-run --write-config FILE.toml`` writes the settings a run would
record, which that option reads back unchanged."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_settings(path, config_class) -> dict:
    """The settings in the TOML file ``path`` (top-level keys, ``method``/``dataset`` aside, are
    the settings of ``config_class``); a key it does not know is an error naming the known ones."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path} is not valid TOML: {exc}") from None
    known = {name for name in config_class.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: {', '.join(unknown)} are not settings of "
                         f"{config_class.__name__}; known: {', '.join(sorted(known))}")
    return data


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else "nan"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_value(v)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    return json.dumps(value)  # int, str


def write_settings(settings: dict, path) -> Path:
    """``settings`` as a TOML file (None values, which TOML cannot hold, left out)."""
    path = Path(path)
    lines = [f"{key} = {_value(value)}" for key, value in sorted(settings.items())
             if value is not None]
    path.write_text("# zoo train --config " + path.name + "\n" + "\n".join(lines) + "\n")
    return path
