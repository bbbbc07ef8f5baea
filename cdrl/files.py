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
