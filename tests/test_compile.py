"""Compiled chains (``performance.chain_compile=inductor``) against eager ones, and proof that they ran compiled."""

from __future__ import annotations

import dataclasses
from collections import Counter

import torch

from cdrl.checkpoint import load_model
from cdrl.config import apply_overrides
from cdrl.generation import GenerationSpec, generate
from cdrl.performance import _PrecomputedGradient, compiled_graph_calls
from cdrl.training import CooperativeTrainer

COMPILED = "performance.chain_compile=inductor"

#: Compiled and eager arithmetic differ by float32 rounding (inductor fuses and reorders the sums):
#: 8e-7 of a 6x2 toy sample's largest coordinate measured, a few float32 epsilons (1.2e-7) carried
#: through 12 Langevin steps. 1e-4 leaves room for other CPUs' kernels and is 100x below a change of
#: the method: the compiled gradient planted 1e-3 too large moved these samples by 1.4e-2.
RELATIVE_TOLERANCE = 1e-4


def _relative_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest deviation of any sample, relative to that sample's largest coordinate."""
    scale = b.abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    return ((a - b).abs().flatten(1).amax(dim=1) / scale).max().item()


def test_precomputed_gradient_differentiates_like_the_network_under_any_weighting():
    """The chain rule of compiled energies, as a guided sum of energies and Tweedie's rescaling use it."""
    network = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    x = torch.randn(5, 2)

    def energy(y):
        return network(y).squeeze(1)

    def precomputed(y):
        with torch.enable_grad():
            z = y.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(energy(z).sum(), z)
        return _PrecomputedGradient.apply(y, energy(y).detach(), gradient)

    weights = torch.tensor([1.5, -0.5, 2.0, 0.0, 3.0])
    expected, got = [torch.autograd.grad((weights * fn(y * 0.7)).sum() + 2.0 * fn(y).sum(), y)[0]
                     for fn in (energy, precomputed) for y in [x.clone().requires_grad_(True)]]
    torch.testing.assert_close(got, expected)


# The one test that compiles (the toy CDRL gate model's energy-and-gradient and initializer, sampling and
# a training step: about a minute on one CPU thread, less with inductor's cache in /tmp warm). Only
# here does inductor's arithmetic meet the stored models; the rest of the suite runs eager.
def test_compiled_chains_match_eager_and_run_as_compiled_graphs():
    model = load_model("results/gate/toy-cdrl.pt")
    spec = GenerationSpec.resolve(model.config, 16, steps_per_level=2, seed=0)
    eager = generate(model, spec)
    compiled_model = dataclasses.replace(model, config=apply_overrides(model.config, [COMPILED]))
    before = Counter(compiled_graph_calls)
    compiled = generate(compiled_model, spec)
    calls = compiled_graph_calls - before
    levels = model.config.schedule.n_levels
    # Every energy gradient (2 steps per level, the Tweedie step) and every proposal ran a compiled graph.
    assert calls == {"chain": levels * spec.steps_per_level + spec.sampler.tweedie_step, "initializer": levels}
    assert _relative_deviation(compiled, eager) < RELATIVE_TOLERANCE

    # Training: the same step from the same weights, seeds and batch, eager and compiled.
    config = apply_overrides(model.config, ["training.batch_size=16"])
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(2)) * 4 - 2
    results = []
    for trainer_config in (config, apply_overrides(config, [COMPILED])):
        trainer = CooperativeTrainer(trainer_config, generator=torch.Generator().manual_seed(1))
        trainer.start_from({"ebm": model.ebm.state_dict(), "initializer": model.initializer.state_dict()})
        before = Counter(compiled_graph_calls)
        stats = trainer.step(x).as_floats()
        results.append((stats, compiled_graph_calls - before,
                        torch.cat([parameter.detach().flatten() for parameter in trainer.ebm.parameters()])))
    (eager_stats, eager_calls, eager_weights), (compiled_stats, compiled_calls, compiled_weights) = results
    assert eager_calls == {}
    # One chain of n_steps and the initializer's training pass (its backward graph runs inside that call).
    assert compiled_calls == {"chain": config.langevin.n_steps, "initializer": 1}
    for key, value in eager_stats.items():
        assert abs(compiled_stats[key] - value) <= RELATIVE_TOLERANCE * max(abs(value), 1.0), key
    torch.testing.assert_close(compiled_weights, eager_weights, rtol=RELATIVE_TOLERANCE, atol=1e-7)


def test_perf_compile_report_says_when_the_compiled_trainer_ran_eager(monkeypatch, one_thread):
    """The pairs report counts compiled graph calls: a 'compiled' trainer that ran eager is reported as such."""
    from benchmarks.speed import compiled as compiled_pairs
    from benchmarks.speed.perf import PerfSettings

    monkeypatch.setattr(compiled_pairs, "COMPILED", "performance.chain_compile=off")  # the planted fallback
    report = compiled_pairs.run_pairs(PerfSettings(preset="tiny", batch_size=2, threads=1, warmup=0), pairs=2)
    assert len(report.ratios) == 2 and report.compiled_graph_calls_per_iteration == {}
    assert "compiled graph calls per iteration: none (the compiled trainer ran eager)" in report.lines()
