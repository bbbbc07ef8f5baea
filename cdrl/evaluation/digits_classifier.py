"""A small CNN digit classifier, trained in seconds on CPU, scoring class-guided digit samples.

The ``digits-cfg`` suite reports the accuracy-vs-FID trade-off over the guidance scale w:
``class_accuracy(samples, labels)`` is the share of samples that this classifier, trained on
the digits training split at the samples' size and channels, assigns to the requested class
(:func:`cdrl.scoring.score_samples` adds it for class-conditional digits models).

The classifiers of the suites' digit shapes (1 x 8 x 8 and 1 x 16 x 16) ship with the project
(``digit_classifiers/``, written by ``python -m tools.bundle_digit_classifiers``): class
accuracy is then read with one fixed instrument on every machine, as FID is with fixed
Inception weights, and no process spends seconds training one.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cdrl.datasets import DataConfig, build_dataset
from cdrl.errors import CdrlBenchError

NUM_DIGITS = 10
BUNDLED_CLASSIFIERS_DIR = Path(__file__).resolve().parent / "digit_classifiers"


class ClassifierError(CdrlBenchError):
    """Samples the digit classifier cannot score; the message names the fix."""


class DigitClassifier(nn.Module):
    """Two conv + max-pool stages and a linear head on 1- or 3-channel digits in [-1, 1]."""

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.channels, self.image_size = channels, image_size
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 16, NUM_DIGITS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _digits(split: str, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset(DataConfig(dataset="digits", split=split, image_size=image_size, channels=channels,
                                       class_conditional=True))
    return dataset.x, dataset.labels


def _jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one eighth of its side, so the classifier does not need pixel-exact digits."""
    limit = max(1, images.shape[-1] // 8)
    padded = F.pad(images, (limit,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * limit + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + images.shape[-2], dx:dx + images.shape[-1]]


def train_digit_classifier(channels: int = 1, image_size: int = 16, epochs: int = 20,
                           batch_size: int = 32, seed: int = 0) -> DigitClassifier:
    """Fit the classifier on the digits training split (1,437 images); it is returned in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout
        classifier = DigitClassifier(channels, image_size)
        images, labels = _digits("train", channels, image_size)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
        classifier.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                batch = order[start:start + batch_size]
                loss = F.cross_entropy(classifier(_jitter(images[batch], generator)), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return classifier.eval()


def bundled_classifier_path(channels: int, image_size: int) -> Path:
    """Where the shipped classifier of this sample shape is (it may not exist)."""
    return BUNDLED_CLASSIFIERS_DIR / f"digits-{image_size}px-{channels}ch.pt"


@functools.lru_cache(maxsize=4)
def default_classifier(channels: int, image_size: int) -> DigitClassifier:
    """The shipped classifier of this sample shape, else one trained now (seconds), once per process."""
    path = bundled_classifier_path(channels, image_size)
    if not path.is_file():
        return train_digit_classifier(channels, image_size)
    classifier = DigitClassifier(channels, image_size)
    classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return classifier.eval()


@torch.no_grad()
def predict(classifier: DigitClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([classifier(images[start:start + batch_size].float().cpu()).argmax(dim=1)
                      for start in range(0, len(images), batch_size)])


def held_out_accuracy(classifier: DigitClassifier) -> float:
    """Accuracy on the digits test split (360 images): how far the classifier's verdicts can be trusted."""
    images, labels = _digits("test", classifier.channels, classifier.image_size)
    return float((predict(classifier, images) == labels).float().mean())


def class_accuracy(samples: torch.Tensor, labels: torch.Tensor, classifier: DigitClassifier | None = None) -> float:
    """Share of ``samples`` (N, C, H, W in [-1, 1]) classified as their requested digit ``labels`` (N,, 0..9)."""
    if samples.dim() != 4 or samples.shape[-1] != samples.shape[-2] or samples.shape[1] not in (1, 3):
        raise ClassifierError(f"digit samples must be N x C x H x H images with C = 1 or 3, got "
                              f"{tuple(samples.shape)}: pass samples of a digits model")
    if labels.shape != (len(samples),):
        raise ClassifierError(f"{len(samples)} samples but labels of shape {tuple(labels.shape)}: "
                              f"pass one requested class per sample")
    classifier = classifier or default_classifier(samples.shape[1], samples.shape[-1])
    return float((predict(classifier, samples) == labels.cpu()).float().mean())
