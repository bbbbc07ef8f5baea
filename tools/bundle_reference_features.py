"""Write the reference features shipped with cdrl-bench (cdrl/evaluation/reference_features/).

The regression gate and the digits suites score 8x8 digits against the whole digits training
split. Its Inception features depend only on the data (bundled with scikit-learn) and on the
pinned weights, yet extracting them took most of a fresh machine's gate run (about 5 of 7
minutes on one CPU thread). Shipping them, keyed exactly like the statistics cache
(cdrl.evaluation.reference), makes the first scoring on a machine as fast as every later one.
Rerun this after anything that changes those features (the weights, the digits pipeline or
the extractor), and commit the file it writes:

    OMP_NUM_THREADS=1 python -m tools.bundle_reference_features
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from cdrl.datasets import DataConfig, reference_name
from cdrl.evaluation import resolve_extractor
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.evaluation.reference import BUNDLED_FEATURES_DIR, ReferenceKey, extract_reference_features
from cdrl.metrics import reference_images


@dataclass(frozen=True)
class BundledReference:
    """A reference split whose features ship with the project, scored by ``backend`` in its native mode."""

    data: DataConfig
    backend: str = DEFAULT_BACKEND


BUNDLED = (
    # The gate's digits rows and the digits-cfg suite (native 8x8, whole training split).
    BundledReference(DataConfig(dataset="digits", split="train", image_size=8)),
)


def bundle(reference: BundledReference, directory: Path = BUNDLED_FEATURES_DIR, device: str = "cpu") -> Path:
    """Extract ``reference``'s features as the statistics cache would and write them into ``directory``."""
    total, batches = reference_images(reference.data, None)
    extractor = resolve_extractor(reference.backend, None, None)
    key = ReferenceKey.for_extractor(reference_name(reference.data), reference.data.split, total, extractor)
    return extract_reference_features(key, batches, extractor, device=device).save(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_FEATURES_DIR, help="directory to write into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for reference in BUNDLED:
        started = time.monotonic()
        path = bundle(reference, args.out)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
