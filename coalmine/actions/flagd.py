"""The flagd kill switch: a flag definition file rewritten so a flag serves its control variant.

The file follows the flagd schema (``{"flags": {"<key>": {"state": ..., "variants": {...},
"defaultVariant": ..., "targeting": {...}}}}``). Switching a flag off sets its
``defaultVariant`` to the control variant and removes its ``targeting``; what was there is
kept in the flag's ``metadata`` (``coalminePreviousDefaultVariant`` and
``coalminePreviousTargeting``, the targeting as a JSON string, as flagd metadata values are
strings, numbers or booleans), so a person can restore it. The file is replaced atomically
(a temporary file in the same directory, then ``os.replace``): flagd, watching it, reads
either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from coalmine._exceptions import CoalmineError

SWITCHED_OFF = "coalmineSwitchedOff"
"""Flag metadata key set to true once coalmine switched the flag off."""

PREVIOUS_DEFAULT = "coalminePreviousDefaultVariant"
"""Flag metadata key holding the ``defaultVariant`` before the switch."""

PREVIOUS_TARGETING = "coalminePreviousTargeting"
"""Flag metadata key holding the removed ``targeting``, as a JSON string."""

_LOCK = threading.Lock()  # one read-modify-write at a time within this process


class FlagdError(CoalmineError):
    """The flag definition file cannot be read, does not define the flag, or cannot be written."""


def switch_off(path: Path | str, flag_key: str, control_variant: str) -> bool:
    """Make ``flag_key`` in the flagd file at ``path`` serve ``control_variant`` to everyone.

    Returns True when the file was rewritten, False when the flag already served the
    control variant with no targeting (nothing is written: calling it again is harmless).

    Raises:
        FlagdError: the file is missing or not a flagd definition, the flag or the variant
            is not defined in it, or it cannot be written.
    """
    path = Path(path)
    with _LOCK:
        document = _read(path)
        flag = _flag(document, flag_key, path)
        variants = flag.get("variants")
        if not isinstance(variants, dict) or control_variant not in variants:
            raise FlagdError(f"{path}: flag {flag_key!r} has no variant {control_variant!r}")
        if flag.get("defaultVariant") == control_variant and "targeting" not in flag:
            return False
        metadata = flag.get("metadata")
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        metadata[SWITCHED_OFF] = True
        previous = flag.get("defaultVariant")
        if isinstance(previous, str):
            metadata[PREVIOUS_DEFAULT] = previous
        if "targeting" in flag:
            metadata[PREVIOUS_TARGETING] = json.dumps(flag.pop("targeting"), sort_keys=True)
        flag["defaultVariant"] = control_variant
        flag["metadata"] = metadata
        _write_atomically(path, json.dumps(document, indent=2) + "\n")
        return True


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FlagdError(f"{path}: cannot read the flag definition: {exc.strerror}") from exc
    except ValueError as exc:
        raise FlagdError(f"{path}: not a JSON flag definition: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("flags"), dict):
        raise FlagdError(f"{path}: not a flagd flag definition (no 'flags' object)")
    return document


def _flag(document: dict[str, Any], flag_key: str, path: Path) -> dict[str, Any]:
    flag = document["flags"].get(flag_key)
    if not isinstance(flag, dict):
        raise FlagdError(f"{path}: no flag {flag_key!r}")
    return flag


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text``, keeping its permissions."""
    try:
        mode = path.stat().st_mode & 0o7777
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise FlagdError(f"{path}: cannot write next to it: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)  # noqa: PTH101 - the temporary file is a str path
        os.replace(temporary, path)  # noqa: PTH105 - atomic within the directory
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)  # noqa: PTH108
        raise FlagdError(f"{path}: cannot write the flag definition: {exc.strerror}") from exc
