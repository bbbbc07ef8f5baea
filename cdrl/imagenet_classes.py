"""The two orders of the 1000 ImageNet classes, and the map between them.

* ``map_clsloc.txt`` (ILSVRC devkit; lines ``n02119789 1 kit_fox``: WNID, 1-based index, name)
  is the order of the downsampled-ImageNet npz labels, hence of the ``imagenet32`` classes
  (:mod:`cdrl.datasets.imagenet32`): npz label k, our class k - 1, is the line with index k.
* ``imagenet_class_index.json`` (Keras; ``{"0": ["n01440764", "tench"], ...}``, the WNIDs
  sorted) is the order of the published CDRL code's labels (its ``ImageNetKaggle`` dataset),
  hence of the class embeddings of its class-conditional checkpoints.

:func:`load_class_map` matches the two files by WNID; :func:`cdrl.checkpoint.permute_classes`
applies the map to an imported checkpoint, so that our class c draws the published model's
class of the same WNID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdrl.errors import CdrlBenchError

_WNID = re.compile(r"n\d{8}")


class ClassMapError(CdrlBenchError):
    """A class-order file that cannot be read, or two that do not list the same classes."""


@dataclass(frozen=True)
class ClassOrder:
    """The classes of one file in its order: ``wnids[i]`` is its class at 0-based index i."""

    file: str  # the file's name, for messages and records
    sha256: str  # of the file's bytes
    wnids: tuple[str, ...]


@dataclass(frozen=True)
class ClassMap:
    """Our class c (npz order) is the published code's class ``published_index[c]``: the same WNID."""

    published: ClassOrder
    ours: ClassOrder
    published_index: tuple[int, ...]

    def record(self) -> dict[str, Any]:
        """What a permuted checkpoint stores about its class order (plain types: loadable with weights_only)."""
        return {
            "permuted": True,
            "description": f"{self.ours.file} order (npz labels), permuted from {self.published.file} order "
                           f"(published code)",
            "published_file": self.published.file, "published_sha256": self.published.sha256,
            "npz_file": self.ours.file, "npz_sha256": self.ours.sha256,
            "published_index": list(self.published_index),
        }


def published_order_record() -> dict[str, Any]:
    """What an imported class-conditional checkpoint stores when its classes were left in the published order."""
    return {
        "permuted": False,
        "description": "published code's order (for ImageNet: imagenet_class_index.json, sorted WNIDs), not the "
                       "npz labels' map_clsloc.txt order",
    }


def _read_text(path: Path, kind: str) -> tuple[str, str]:
    """(text, sha256) of a class file."""
    try:
        content = path.read_bytes()
        return content.decode("utf-8"), hashlib.sha256(content).hexdigest()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ClassMapError(f"cannot read {path} ({reason}): pass the path of {kind}") from None


def _checked(path: Path, wnids: list[str], kind: str, sha256: str) -> ClassOrder:
    if not wnids:
        raise ClassMapError(f"{path} lists no classes: pass {kind}")
    bad = next((wnid for wnid in wnids if not _WNID.fullmatch(wnid)), None)
    if bad is not None:
        raise ClassMapError(f"{path} has {bad!r} where a WNID such as 'n01440764' belongs: pass {kind}")
    repeated = next((wnid for wnid in wnids if wnids.count(wnid) > 1), None)
    if repeated is not None:
        raise ClassMapError(f"{path} lists WNID {repeated} twice: pass an unedited {kind}")
    return ClassOrder(path.name, sha256, tuple(wnids))


def read_map_clsloc(path: str | os.PathLike) -> ClassOrder:
    """The npz label order: ``map_clsloc.txt`` lines ``WNID INDEX NAME`` with indices 1..N, each once."""
    path = Path(path)
    kind = "map_clsloc.txt (lines like 'n02119789 1 kit_fox')"
    text, sha256 = _read_text(path, kind)
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or not fields[1].isdigit():
            raise ClassMapError(f"{path} line {number} is not 'WNID INDEX NAME': {line.strip()[:60]!r}; pass {kind}")
        entries.append((int(fields[1]), fields[0]))
    if sorted(index for index, _ in entries) != list(range(1, len(entries) + 1)):
        raise ClassMapError(f"{path} does not number its classes 1..N once each: pass an unedited {kind}")
    return _checked(path, [wnid for _, wnid in sorted(entries)], kind, sha256)


def read_imagenet_class_index(path: str | os.PathLike) -> ClassOrder:
    """The published code's order: Keras' ``imagenet_class_index.json``, {"0": [WNID, name], ...}."""
    path = Path(path)
    kind = """Keras' imagenet_class_index.json ({"0": ["n01440764", "tench"], ...})"""
    text, sha256 = _read_text(path, kind)
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClassMapError(f"{path} is not JSON ({error}): pass {kind}") from None
    if not isinstance(entries, dict) or set(entries) != {str(index) for index in range(len(entries))} \
            or not all(isinstance(entry, list) and len(entry) == 2 for entry in entries.values()):
        raise ClassMapError(f"{path} does not map '0'..'N-1' to [WNID, name] pairs: pass {kind}")
    return _checked(path, [str(entries[str(index)][0]) for index in range(len(entries))], kind, sha256)


def class_map(published: ClassOrder, ours: ClassOrder) -> ClassMap:
    """The map from our classes to the published code's, matched by WNID."""
    only_published = sorted(set(published.wnids) - set(ours.wnids))
    only_ours = sorted(set(ours.wnids) - set(published.wnids))
    if only_published or only_ours:
        raise ClassMapError(
            f"{published.file} and {ours.file} list different classes ({len(only_published)} WNIDs only in "
            f"{published.file}, e.g. {(only_published or ['none'])[0]}; {len(only_ours)} only in {ours.file}, e.g. "
            f"{(only_ours or ['none'])[0]}): pass the two files of the same ImageNet classes")
    published_position = {wnid: index for index, wnid in enumerate(published.wnids)}
    return ClassMap(published, ours, tuple(published_position[wnid] for wnid in ours.wnids))


def load_class_map(published_path: str | os.PathLike, ours_path: str | os.PathLike) -> ClassMap:
    """The map from ``map_clsloc.txt`` (``ours_path``) to ``imagenet_class_index.json`` (``published_path``)."""
    return class_map(read_imagenet_class_index(published_path), read_map_clsloc(ours_path))
