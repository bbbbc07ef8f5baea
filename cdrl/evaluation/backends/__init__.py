"""Evaluation backends: one metric library each, behind one small interface, one module each.

A :class:`~cdrl.evaluation.backends.base.Backend` is what :mod:`cdrl.evaluation` needs from a library: its name, its native
resize mode, the metrics it never gives, its own Inception (downloaded on first use), its
feature extraction loop, and its own code for the feature statistics, the Fréchet distance,
KID and IS. Everything else (weights resolution, resize modes, the TorchScript Inception,
reference caching, the protocol record) is shared, so the numbers of two backends differ only
by what is declared here. A new backend is one module defining ``BACKEND``, plus its name in
the registration at the bottom of this file (``base`` holds the interface, so nothing imports in a circle).

Each library is imported only inside the functions that use it.
"""

from __future__ import annotations

from cdrl.evaluation.backends import clean_fid, torch_fidelity
from cdrl.evaluation.backends.base import Backend
from cdrl.evaluation.errors import EvaluationError

DEFAULT_BACKEND = "torch-fidelity"
"""The backend of every evaluation that names none."""


def backend(name: str) -> Backend:
    """The registered backend called ``name``; an unknown name is refused with the known ones."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise EvaluationError(f"unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}") from None


_BACKENDS: dict[str, Backend] = {module.BACKEND.name: module.BACKEND for module in (torch_fidelity, clean_fid)}
BACKENDS = tuple(_BACKENDS)
"""The names of the registered backends."""
