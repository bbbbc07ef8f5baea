"""Classifier-free guidance and composition (cdrl.guidance), the 2-D composition demo, the digit scorer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from examples.composition_2d import RIGHT, UP, intersection_fraction, sample_concepts, train_concept_model
from cdrl.evaluation.digits_classifier import (ClassifierError, class_accuracy, held_out_accuracy, predict,
                                               train_digit_classifier)
from cdrl.checkpoint import LoadedModel, build_guided_model
from cdrl.config import preset
from cdrl.datasets import DataConfig, build_dataset, item_shape
from cdrl.guidance import Concept, GuidanceError, combine, guided_callables
from cdrl.langevin import energy_gradient
from cdrl.networks import build_energy_net, build_initializer
from cdrl.noise import PerExampleNoise
from cdrl.performance import ChainEnergy, PerformanceConfig
from cdrl.sampler import sample
from cdrl.schedule import LogSNRSchedule


def _model(name: str = "tiny", num_classes: int | None = 10) -> LoadedModel:
    """Randomly initialised networks of a preset (made conditional), in eval mode as loaded models are."""
    config = preset(name)
    config = dataclasses.replace(config, energy=dataclasses.replace(config.energy, num_classes=num_classes),
                                 initializer=dataclasses.replace(config.initializer, num_classes=num_classes))
    torch.manual_seed(0)
    return LoadedModel(config, build_energy_net(config.energy).eval(), build_initializer(config.initializer).eval(),
                       iteration=0, uses_ema=False)


def _draw(model: LoadedModel, energy, proposal, batch: int, seed: int = 7) -> torch.Tensor:
    config = model.config
    return sample(energy, proposal, (batch, *item_shape(config.data)), LogSNRSchedule(config.schedule),
                  config.langevin, config.sampler, noise=PerExampleNoise(range(seed, seed + batch)))


def test_conditional_presets_are_labelled() -> None:
    for name, classes in (("digits-cond", 10), ("toy-quadrants-cond", 4)):
        config = preset(name)
        assert config.data.class_conditional
        assert config.energy.num_classes == config.initializer.num_classes == classes


def test_zero_guidance_reproduces_conditional_sampling_exactly() -> None:
    model = _model()
    classes = torch.tensor([3, 7, 0, 9])
    conditional = _draw(model, lambda y, logsnr: model.ebm(y, logsnr, classes + 1),
                        lambda x, logsnr: model.initializer(x, logsnr, classes + 1), batch=4)
    guided = _draw(model, *build_guided_model(model, 0.0, classes), batch=4)
    assert torch.equal(guided, conditional)
    assert not torch.equal(_draw(model, *build_guided_model(model, 1.0, classes), batch=4), conditional)


@pytest.mark.parametrize("guidance", [0.5, 3.0])
def test_guided_energy_and_proposal_are_the_guidance_combination(guidance: float) -> None:
    model = _model()
    x, logsnr, label = torch.randn(5, 1, 8, 8), torch.linspace(-4.0, 8.0, 5), 4
    cond, null = torch.full((5,), label + 1), torch.zeros(5, dtype=torch.long)
    energy, proposal = build_guided_model(model, guidance, label)

    expected = energy_gradient(lambda y, s: (1 + guidance) * model.ebm(y, s, cond) - guidance * model.ebm(y, s, null),
                               x, logsnr)
    conditional_gradient = energy_gradient(lambda y, s: model.ebm(y, s, cond), x, logsnr)
    null_gradient = energy_gradient(lambda y, s: model.ebm(y, s, null), x, logsnr)
    # The combination cancels much of two close gradients: float32 error scales with the terms.
    tolerance = 1e-5 * (1 + 2 * guidance) * float(conditional_gradient.abs().max())
    torch.testing.assert_close(energy_gradient(energy, x, logsnr), expected, rtol=0, atol=tolerance)
    torch.testing.assert_close(expected, (1 + guidance) * conditional_gradient - guidance * null_gradient,
                               rtol=0, atol=tolerance)
    with torch.no_grad():
        torch.testing.assert_close(
            proposal(x, logsnr),
            (1 + guidance) * model.initializer(x, logsnr, cond) - guidance * model.initializer(x, logsnr, null),
            rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_a_guided_chain_computes_the_energy_conditioning_once_per_level(guidance: float, monkeypatch) -> None:
    """The combination hands a chain energy the same label and logsnr tensors at every step, as an
    unguided chain does, so its conditioning cache holds: one computation per level (the Tweedie
    step reuses the last level's), not one per Langevin step. The samples are the uncached ones."""
    model = _model()
    config = dataclasses.replace(model.config, sampler=dataclasses.replace(model.config.sampler, steps_per_level=3))
    model = dataclasses.replace(model, config=config)
    chain = ChainEnergy(model.ebm, PerformanceConfig(), "cpu")
    computed = []
    conditioning = model.ebm.conditioning
    monkeypatch.setattr(model.ebm, "conditioning", lambda *inputs: computed.append(1) or conditioning(*inputs))
    with chain.frozen() as energy:
        cached = _draw(model, *build_guided_model(model, guidance, 5, ebm=energy), batch=3)
    assert len(computed) == config.schedule.n_levels
    assert torch.equal(cached, _draw(model, *build_guided_model(model, guidance, 5), batch=3))


def test_composition_sums_concepts_less_the_null_energy_per_example() -> None:
    model = _model("toy-quadrants-cond", num_classes=4)
    x, logsnr = torch.randn(3, 2), torch.zeros(3)
    first, second = torch.tensor([0, 1, 2]), 3
    energy, _ = guided_callables(model.ebm, model.initializer, [Concept(first), Concept(second, weight=2.0)])

    def f(label):
        return model.ebm(x, logsnr, label)

    with torch.no_grad():
        expected = f(first + 1) + 2.0 * f(torch.full((3,), second + 1)) - 2.0 * f(torch.zeros(3, dtype=torch.long))
        torch.testing.assert_close(energy(x, logsnr), expected, rtol=1e-5, atol=1e-5)
        # No concepts: the null class, i.e. the unconditional model inside the conditional one.
        torch.testing.assert_close(combine(model.ebm, [])(x, logsnr), f(torch.zeros(3, dtype=torch.long)))


def test_guidance_rejects_bad_requests() -> None:
    with pytest.raises(GuidanceError, match="unconditional"):
        build_guided_model(_model(num_classes=None), 1.0, 3)
    with pytest.raises(GuidanceError, match="outside this model's classes 0..9"):
        build_guided_model(_model(), 1.0, 10)
    with pytest.raises(GuidanceError, match="outside"):
        build_guided_model(_model(), 1.0, torch.tensor([1, -1]))
    with pytest.raises(GuidanceError, match="not finite"):
        build_guided_model(_model(), float("nan"), 3)
    energy, _ = build_guided_model(_model(), 1.0, torch.tensor([1, 2]))
    with pytest.raises(GuidanceError, match="one label per example"):
        energy(torch.randn(3, 1, 8, 8), torch.zeros(3))


@pytest.fixture(scope="module")
def concept_model():
    # Trained afresh in each session, nothing cached across runs: 300 iterations took 3-3.5 minutes
    # on a 2-core machine shared with other jobs (the single-concept checks above take seconds).
    return train_concept_model(iterations=300, seed=0)


def test_composed_half_planes_sample_their_intersection(concept_model) -> None:
    composed = sample_concepts(concept_model, (RIGHT, UP), n_samples=500, seed=1)
    right_only = sample_concepts(concept_model, (RIGHT,), n_samples=500, seed=1)
    fraction = intersection_fraction(composed)
    assert fraction >= 0.9, f"only {fraction:.3f} of the composed samples lie in the upper-right quadrant"
    # Neither concept alone gets there: about half of "right" lies below the x axis.
    assert intersection_fraction(right_only) < 0.7


@pytest.fixture(scope="module")
def digit_classifier():
    return train_digit_classifier(channels=1, image_size=16)


def test_shipped_digit_classifiers_are_what_training_gives(digit_classifier, monkeypatch) -> None:
    import cdrl.evaluation.digits_classifier as classifiers
    from tools.bundle_digit_classifiers import BUNDLED

    # Scoring reads the shipped weights and trains nothing.
    monkeypatch.setattr(classifiers, "train_digit_classifier", lambda *_: pytest.fail("trained a shipped classifier"))
    classifiers.default_classifier.cache_clear()
    try:
        shipped = {shape: classifiers.default_classifier(*shape) for shape in BUNDLED}
    finally:
        classifiers.default_classifier.cache_clear()
    for (channels, image_size), classifier in shipped.items():
        assert (classifier.channels, classifier.image_size, classifier.training) == (channels, image_size, False)
        assert held_out_accuracy(classifier) >= 0.95
    # The 16x16 one is the classifier a training gives now (another CPU's kernels may move a few verdicts).
    images = build_dataset(DataConfig(dataset="digits", split="test", image_size=16, class_conditional=True)).x
    agreement = (predict(shipped[1, 16], images) == predict(digit_classifier, images)).float().mean()
    assert agreement >= 0.98, f"{agreement:.3f}: rerun python -m tools.bundle_digit_classifiers"


def test_digit_classifier_scores_real_digits(digit_classifier) -> None:
    images = build_dataset(DataConfig(dataset="digits", split="test", class_conditional=True))
    assert held_out_accuracy(digit_classifier) >= 0.9
    correct = class_accuracy(images.x, images.labels, digit_classifier)
    assert correct == pytest.approx(held_out_accuracy(digit_classifier))
    assert class_accuracy(images.x, (images.labels + 1) % 10, digit_classifier) < 0.2
    with pytest.raises(ClassifierError, match="one requested class per sample"):
        class_accuracy(images.x, images.labels[:-1], digit_classifier)
