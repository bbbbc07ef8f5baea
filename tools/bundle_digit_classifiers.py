"""Write the digit classifiers shipped with cdrl-bench (cdrl/evaluation/digit_classifiers/).

Class accuracy (``class_accuracy``, the digits-cfg suite and the gate's conditional rows) is
read by a small CNN trained on the digits training split. Shipping its weights for the suites'
sample shapes makes that instrument the same on every machine and spares each scoring process
its training. Rerun this after anything that changes the classifier's training (its network,
recipe or seed, or the digits pipeline), and commit the files it writes:

    OMP_NUM_THREADS=1 python -m tools.bundle_digit_classifiers
"""

from __future__ import annotations

import time

import torch

from cdrl.evaluation.digits_classifier import bundled_classifier_path, held_out_accuracy, train_digit_classifier
from cdrl.files import atomic_write

#: (channels, image size) of the digits presets' samples: 8x8 (gate, digits-cfg) and 16x16 (digits).
BUNDLED = ((1, 8), (1, 16))


def main() -> None:
    for channels, image_size in BUNDLED:
        started = time.monotonic()
        classifier = train_digit_classifier(channels, image_size)
        path = bundled_classifier_path(channels, image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda stream: torch.save(classifier.state_dict(), stream))
        print(f"{path}: held-out accuracy {held_out_accuracy(classifier):.3f}, trained in "
              f"{time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
