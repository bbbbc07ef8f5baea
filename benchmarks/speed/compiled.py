"""Compiled against eager training iterations of one preset, paired in one process (``cdrl-bench perf --compile``).

Two trainers of the same config, seeds and batch, one eager and one with
``performance.chain_compile=inductor``; the compiled one's first iteration (compilation) is timed
apart. Then ``pairs`` pairs of iterations, eager and compiled back to back (the order alternating,
so that a drift of the machine's load falls on both), give one eager/compiled ratio each: their
median and range are the speed-up, steadier on a shared machine than two separate runs. Each
side's fraction of the peak FLOP/s comes from the same FLOP count (:mod:`benchmarks.speed.perf`),
and the compiled graph calls per iteration show what actually ran compiled.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.speed.perf import PerfSettings, _timed, cached_flops, device_peak, training_flops_by_operation, \
    write_json
from cdrl.config import apply_overrides, preset
from cdrl.datasets import item_shape
from cdrl.performance import compiled_graph_calls, use_threads
from cdrl.training import CooperativeTrainer

COMPILED = "performance.chain_compile=inductor"
EAGER = "performance.chain_compile=off"


@dataclass
class CompiledPairs:
    preset: str
    batch_size: int
    threads: int
    #: One-minute load average before and after the pairs.
    load_average: tuple[float, float]
    #: Wall time of the compiled trainer's first iteration, compilation included.
    first_compiled_iteration_seconds: float
    eager_seconds: list[float]
    compiled_seconds: list[float]
    #: Compiled graph calls per compiled iteration, by network (cdrl.performance.compiled_graph_calls).
    compiled_graph_calls_per_iteration: dict[str, float]
    flops_per_iteration: int
    peak_tflops: float
    peak_source: str

    @property
    def ratios(self) -> list[float]:
        """Eager seconds / compiled seconds of each pair: above 1, compiled is faster."""
        return [eager / compiled for eager, compiled in zip(self.eager_seconds, self.compiled_seconds)]

    @property
    def compile_seconds(self) -> float:
        """The first compiled iteration beyond a compiled iteration's median: what compiling costs."""
        return self.first_compiled_iteration_seconds - statistics.median(self.compiled_seconds)

    def fraction_of_peak(self, seconds: list[float]) -> float:
        return self.flops_per_iteration / statistics.median(seconds) / 1e12 / self.peak_tflops

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios, "compile_seconds": self.compile_seconds,
                "fraction_of_peak_eager": self.fraction_of_peak(self.eager_seconds),
                "fraction_of_peak_compiled": self.fraction_of_peak(self.compiled_seconds)}

    def lines(self) -> list[str]:
        ratios = self.ratios
        eager, compiled = statistics.median(self.eager_seconds), statistics.median(self.compiled_seconds)
        calls = ", ".join(f"{network} {count:g}"
                          for network, count in sorted(self.compiled_graph_calls_per_iteration.items()))
        return [
            f"{self.preset} batch {self.batch_size}, {self.threads} threads, load {self.load_average[0]:.1f} -> "
            f"{self.load_average[1]:.1f}: {len(ratios)} pairs of training iterations, eager and compiled",
            f"eager {eager:.4g} s/iteration, compiled {compiled:.4g} s/iteration (medians); "
            f"speed-up {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)",
            f"compile: {self.compile_seconds:.1f} s (first compiled iteration "
            f"{self.first_compiled_iteration_seconds:.1f} s), repaid after {self._break_even(eager, compiled)}",
            f"% of peak: eager {100 * self.fraction_of_peak(self.eager_seconds):.1f}%, compiled "
            f"{100 * self.fraction_of_peak(self.compiled_seconds):.1f}% of {self.peak_tflops:.3g} TFLOP/s "
            f"({self.peak_source})",
            f"compiled graph calls per iteration: {calls or 'none (the compiled trainer ran eager)'}",
        ]

    def _break_even(self, eager: float, compiled: float) -> str:
        saved = eager - compiled
        return f"{self.compile_seconds / saved:.0f} iterations" if saved > 0 else "never (compiled is not faster)"


def run_pairs(settings: PerfSettings, pairs: int) -> CompiledPairs:
    use_threads(settings.threads)
    device = torch.device(settings.device)
    config = apply_overrides(preset(settings.preset), [f"training.batch_size={settings.batch_size}",
                                                       *settings.overrides])
    flops = sum(cached_flops(config, "training", settings.batch_size,
                             lambda: training_flops_by_operation(config, settings.batch_size)).values())
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    x = torch.rand((settings.batch_size, *item_shape(config.data)), generator=generator, device=device) * 2 - 1
    labels = (torch.randint(0, config.energy.num_classes, (settings.batch_size,), generator=generator,
                            device=device) if config.energy.num_classes is not None else None)
    trainers = {}
    for name, option in (("eager", EAGER), ("compiled", COMPILED)):
        torch.manual_seed(settings.seed)
        trainers[name] = CooperativeTrainer(apply_overrides(config, [option]), device=device,
                                            generator=torch.Generator(device=device).manual_seed(settings.seed))
    for _ in range(settings.warmup):
        trainers["eager"].step(x, labels)
    with _timed(device) as first:
        trainers["compiled"].step(x, labels)
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    before = Counter(compiled_graph_calls)
    for pair in range(pairs):
        for name in (("eager", "compiled") if pair % 2 == 0 else ("compiled", "eager")):
            with _timed(device) as iteration:
                trainers[name].step(x, labels)
            seconds[name].append(iteration.wall_seconds)
    calls = compiled_graph_calls - before
    peak, peak_source = device_peak(device, config, settings.peak_tflops)
    return CompiledPairs(
        preset=settings.preset, batch_size=settings.batch_size, threads=torch.get_num_threads(),
        load_average=(load_before, os.getloadavg()[0]),
        first_compiled_iteration_seconds=first.wall_seconds, eager_seconds=seconds["eager"],
        compiled_seconds=seconds["compiled"],
        compiled_graph_calls_per_iteration={network: count / pairs for network, count in calls.items()},
        flops_per_iteration=flops, peak_tflops=peak, peak_source=peak_source)


def execute(settings: PerfSettings, pairs: int, json_path: Path | None = None) -> str:
    """Run the pairs, write the JSON if asked; returns the text to print."""
    report = run_pairs(settings, pairs)
    write_json(json_path, report.to_dict())
    return "\n".join(report.lines())
