"""Atomic file writes: a reader or a crash sees the old file or the new one, never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from cdrl.errors import CdrlBenchError

#: Suffix of the temporary files; only a crash mid-write leaves one behind.
PARTIAL_SUFFIX = ".partial"


class OutputError(CdrlBenchError):
    """An output that could not be written (a full disk, no permission, ...); the message names it."""


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """Writes to ``path`` in the block: one that fails (disk full, permission, ...) is one line naming ``path``."""
    try:
        yield Path(path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}; free some space, fix the folder's "
                          "permissions or choose another path") from None


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return path


def check_writable(path: Path | None, flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: below a file, a file where a folder goes,
    a device or other non-file, a name longer than the file system takes, or in a folder this user cannot write."""
    if path is None:
        return
    longest = max(path.absolute().parts, key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > 255:  # NAME_MAX of every common file system
        raise CdrlBenchError(f"{flag} {path}: the name {longest[:40]}... is longer than a file system takes (255 "
                             f"bytes); choose a shorter {flag}")
    blocking = next((parent for parent in path.absolute().parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise CdrlBenchError(f"{flag} {path}: {blocking} is a file, not a folder; choose another {flag}")
    if path.exists() and not (path.is_dir() if folder else path.is_file()):
        what = "a file" if path.is_file() else "a folder" if path.is_dir() else "not a regular file (a device?)"
        raise CdrlBenchError(f"{flag} {path} exists and is {what}; choose another {flag}")
    existing = next(place for place in (path.absolute(), *path.absolute().parents) if place.exists())
    if not os.access(existing, os.W_OK):
        raise CdrlBenchError(f"{flag} {path}: {existing} is not writable by this user; choose another {flag}")
