"""Training and sampling speed of a preset on this device, measured against its FLOP count.

For one preset and batch size: training iterations/s, Langevin steps/s, sampling images/s at
6×K for each K asked, optionally Inception features/s, peak memory, FLOPs per iteration
(``torch.utils.flop_counter``, counted on the meta device: no arithmetic runs) and the achieved
fraction of the device's peak FLOP/s. Speed options come in as config overrides
(``performance.channels_last=true`` ...), so the numbers are those of the real training step.

    python -m benchmarks.perf --preset cifar10 --batch-size 8 --threads 2
    python -m benchmarks.perf --preset tiny --json perf.json --set performance.channels_last=true

On a shared machine wall time depends on the load: the report carries the process CPU
seconds and the load average next to every wall-clock number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from cdrl.checkpoint import LoadedModel
from cdrl.config import ExperimentConfig, apply_overrides, preset
from cdrl.data import item_shape
from cdrl.errors import CdrlBenchError
from cdrl.generation import generate
from cdrl.langevin import energy_gradient, langevin_revision
from cdrl.noise import GeneratorNoise
from cdrl.sampler import sample
from cdrl.schedule import LogSNRSchedule
from cdrl.training import CooperativeTrainer

#: Dense (no sparsity) peak TFLOP/s by arithmetic, from NVIDIA's datasheets; the first name
#: contained in ``torch.cuda.get_device_name()`` wins, so the specific names come first.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.0},
    "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.0},
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0},
    "H100": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
}


@dataclass(frozen=True)
class PerfSettings:
    preset: str = "tiny"
    batch_size: int = 8
    #: ``section.field=value`` config overrides, e.g. ``performance.channels_last=true``.
    overrides: tuple[str, ...] = ()
    device: str = "cpu"
    #: CPU threads for torch (None: torch's default).
    threads: int | None = None
    warmup: int = 1
    iterations: int = 2
    #: Langevin steps per level of the sampling runs (6×K each); empty: no sampling measurement.
    sampling_steps: tuple[int, ...] = (15, 5)
    #: Samples per sampling run (None: the batch size).
    sample_batch: int | None = None
    inception: bool = False
    inception_images: int = 32
    #: Peak TFLOP/s to compare with; None: the table for known GPUs, a measured sgemm on CPU.
    peak_tflops: float | None = None
    seed: int = 0


@dataclass
class Timing:
    wall_seconds: float
    cpu_seconds: float


@dataclass
class PerfReport:
    settings: dict[str, Any]
    environment: dict[str, Any]
    flops_per_iteration: int
    flops_per_langevin_step: int
    flops_per_image_sample: dict[str, int]
    seconds_per_iteration: float
    cpu_seconds_per_iteration: float
    iterations_per_second: float
    langevin_steps_per_second: float
    #: "6x15" -> images/s.
    sampling_images_per_second: dict[str, float]
    inception_features_per_second: float | None
    peak_memory_bytes: int
    peak_memory_kind: str
    peak_tflops: float
    peak_source: str
    achieved_tflops: float
    fraction_of_peak: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        samples = ", ".join(f"{key} {rate:.3g} images/s" for key, rate in self.sampling_images_per_second.items())
        inception = ("" if self.inception_features_per_second is None
                     else f"; Inception {self.inception_features_per_second:.3g} features/s")
        return [
            f"{self.settings['preset']} batch {self.settings['batch_size']} on {self.environment['device_name']} "
            f"({self.environment['threads']} threads, load {self.environment['load_average_1min']:.1f})",
            f"training: {self.seconds_per_iteration:.3f} s/iteration ({self.iterations_per_second:.3g} it/s, "
            f"{self.cpu_seconds_per_iteration:.3f} CPU s/iteration)",
            f"FLOPs: {self.flops_per_iteration / 1e12:.4g} TFLOP/iteration "
            f"({self.flops_per_iteration / self.settings['batch_size'] / 1e9:.4g} GFLOP/image), "
            f"{self.flops_per_langevin_step / 1e9:.4g} GFLOP/Langevin step",
            f"achieved {self.achieved_tflops:.3g} TFLOP/s = {100 * self.fraction_of_peak:.1f}% of "
            f"{self.peak_tflops:.3g} TFLOP/s ({self.peak_source})",
            f"Langevin: {self.langevin_steps_per_second:.3g} steps/s; sampling: {samples or 'not measured'}{inception}",
            f"peak memory: {self.peak_memory_bytes / 2**20:.0f} MiB ({self.peak_memory_kind})",
            *self.notes,
        ]


# --------------------------------------------------------------------------- FLOPs

class _WholeProgram:
    """Stands in for FlopCounterMode's module tracker, whose autograd hooks fail inside
    ``torch.autograd.grad`` (every Langevin step): all FLOPs are attributed to "Global"."""

    parents = {"Global"}

    def __enter__(self) -> "_WholeProgram":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of ``run()`` as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _WholeProgram()
    with counter:
        run()
    return counter.get_total_flops()


def _meta_trainer(config: ExperimentConfig) -> CooperativeTrainer:
    # Only the exact path: compiled code and autocast are not needed to count the same math.
    plain = apply_overrides(config, ["performance.chain_compile=off", "performance.ebm_precision=float32"])
    return CooperativeTrainer(plain, device="meta")


def training_flops(config: ExperimentConfig, batch_size: int) -> tuple[int, int]:
    """(per training iteration, per Langevin step) of a batch, on the meta device."""
    trainer = _meta_trainer(config)
    shape = (batch_size, *item_shape(config.data))
    x = torch.zeros(shape, device="meta")
    labels = (torch.zeros(batch_size, dtype=torch.long, device="meta")
              if config.energy.num_classes is not None else None)
    per_iteration = count_flops(lambda: trainer.step(x, labels))
    trainer.ebm.eval()
    logsnr = torch.zeros(batch_size, device="meta")
    per_step = count_flops(lambda: energy_gradient(lambda y, s: trainer.ebm(y, s, labels), x, logsnr))
    return per_iteration, per_step


def sample_flops(config: ExperimentConfig, steps: int) -> int:
    """FLOPs of one image sampled at 6×``steps`` (meta device, batch of one)."""
    trainer = _meta_trainer(config)
    trainer.ebm.eval()
    if trainer.initializer is not None:
        trainer.initializer.eval()
    sampler_config = apply_overrides(config, [f"sampler.steps_per_level={steps}"]).sampler
    return count_flops(lambda: sample(trainer.ebm, trainer.initializer, (1, *item_shape(config.data)),
                                      LogSNRSchedule(config.schedule), config.langevin, sampler_config,
                                      noise=GeneratorNoise(), device="meta"))


# --------------------------------------------------------------------------- timing

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timed(device: torch.device) -> Iterator[Timing]:
    timing = Timing(0.0, 0.0)
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield timing
    _synchronize(device)
    timing.wall_seconds, timing.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu


def measured_cpu_peak_tflops(size: int = 2048, repeats: int = 3) -> float:
    """Best sgemm rate of ``size``³ float32 matmuls on the current threads: this CPU's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def device_peak(device: torch.device, config: ExperimentConfig, override: float | None) -> tuple[float, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device.type == "cpu":
        return measured_cpu_peak_tflops(), "measured float32 sgemm 2048^3 on these threads"
    arithmetic = ("bfloat16" if config.performance.ebm_precision == "bfloat16"
                  else "tf32" if config.performance.tf32 else "float32")
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[arithmetic], f"{key} dense {arithmetic} datasheet"
    raise CdrlBenchError(f"no peak FLOP/s known for {name!r}: pass --peak-tflops")


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max_memory_allocated"
    # ru_maxrss is in KiB on Linux: the whole process, weights and Python included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process"


def _inception_rate(device: torch.device, images: int, batch_size: int) -> float:
    from cdrl.evaluation import extract_features, resolve_extractor

    extractor = resolve_extractor()
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    extract_features(pixels[:batch_size], extractor, device=device, batch_size=batch_size)  # weights, warm-up
    with _timed(device) as timing:
        extract_features(pixels, extractor, device=device, batch_size=batch_size)
    return images / timing.wall_seconds


def run(settings: PerfSettings) -> PerfReport:
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    config = apply_overrides(preset(settings.preset),
                             [f"training.batch_size={settings.batch_size}", *settings.overrides])
    flops_iteration, flops_step = training_flops(config, settings.batch_size)
    flops_sample = {f"6x{steps}": sample_flops(config, steps) for steps in settings.sampling_steps}

    torch.manual_seed(settings.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    trainer = CooperativeTrainer(config, device=device, generator=generator)
    shape = (settings.batch_size, *item_shape(config.data))
    x = torch.rand(shape, generator=generator, device=device) * 2 - 1
    labels = (torch.randint(0, config.energy.num_classes, (settings.batch_size,), generator=generator,
                            device=device) if config.energy.num_classes is not None else None)
    for _ in range(settings.warmup):
        trainer.step(x, labels)
    with _timed(device) as training:
        for _ in range(settings.iterations):
            trainer.step(x, labels)
    seconds = training.wall_seconds / settings.iterations

    trainer.ebm.eval()
    if trainer.initializer is not None:
        trainer.initializer.eval()
    schedule = LogSNRSchedule(config.schedule)
    level = schedule.level(torch.randint(1, schedule.n_levels + 1, (settings.batch_size,), generator=generator,
                                         device=device), device=device)
    noise = GeneratorNoise(generator)
    condition = None if labels is None else labels + 1
    with trainer.chain_ebm.frozen() as chain_energy:
        def chain(steps: int) -> torch.Tensor:
            return langevin_revision(lambda y, logsnr: chain_energy(y, logsnr, condition), x, x, level,
                                     config.langevin, config.schedule.logsnr_max, n_steps=steps, noise=noise)
        chain(1)
        with _timed(device) as langevin:
            chain(config.langevin.n_steps)
    steps_per_second = config.langevin.n_steps / langevin.wall_seconds

    model = LoadedModel(config, trainer.ebm, trainer.initializer, trainer.iteration, uses_ema=False)
    n_samples = settings.sample_batch or settings.batch_size
    sampling = {}
    for steps in settings.sampling_steps:
        generate(model, n_samples, steps_per_level=1, batch_size=n_samples, device=device)  # compile, warm-up
        with _timed(device) as drawing:
            generate(model, n_samples, steps_per_level=steps, batch_size=n_samples, device=device)
        sampling[f"6x{steps}"] = n_samples / drawing.wall_seconds

    inception = _inception_rate(device, settings.inception_images, settings.batch_size) if settings.inception else None
    memory, memory_kind = _peak_memory(device)
    peak, peak_source = device_peak(device, config, settings.peak_tflops)
    achieved = flops_iteration / seconds / 1e12
    environment = {
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (
            platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    notes = []
    if device.type == "cpu" and environment["load_average_1min"] > environment["cpu_count"]:
        notes.append(f"note: load average {environment['load_average_1min']:.1f} on {environment['cpu_count']} "
                     "CPUs: other processes share them, wall times are inflated (see CPU seconds)")
    return PerfReport(
        settings={**asdict(settings), "config": config.name}, environment=environment,
        flops_per_iteration=flops_iteration, flops_per_langevin_step=flops_step,
        flops_per_image_sample=flops_sample, seconds_per_iteration=seconds,
        cpu_seconds_per_iteration=training.cpu_seconds / settings.iterations,
        iterations_per_second=1.0 / seconds, langevin_steps_per_second=steps_per_second,
        sampling_images_per_second=sampling, inception_features_per_second=inception,
        peak_memory_bytes=memory, peak_memory_kind=memory_kind, peak_tflops=peak, peak_source=peak_source,
        achieved_tflops=achieved, fraction_of_peak=achieved / peak, notes=notes)


def _integers(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training iterations first")
    parser.add_argument("--iterations", type=int, default=2, help="timed training iterations")
    parser.add_argument("--sampling-steps", type=_integers, default=(15, 5),
                        help="Langevin steps per level of each timed sampling run, e.g. 15,5; '' for none")
    parser.add_argument("--sample-batch", type=int, default=None, help="samples per sampling run (default: batch)")
    parser.add_argument("--inception", action="store_true", help="also time Inception features (cdrl.evaluation)")
    parser.add_argument("--inception-images", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak to compare with (default: table/sgemm)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. performance.channels_last=true (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    arguments = parser.parse_args(argv)
    if min(arguments.batch_size, arguments.iterations, arguments.inception_images) < 1 or arguments.warmup < 0:
        parser.error("--batch-size, --iterations and --inception-images must be at least 1, --warmup at least 0")
    settings = PerfSettings(
        preset=arguments.preset, batch_size=arguments.batch_size, overrides=tuple(arguments.overrides),
        device=arguments.device, threads=arguments.threads, warmup=arguments.warmup,
        iterations=arguments.iterations, sampling_steps=arguments.sampling_steps,
        sample_batch=arguments.sample_batch, inception=arguments.inception,
        inception_images=arguments.inception_images, peak_tflops=arguments.peak_tflops)
    report = run(settings)
    print("\n".join(report.lines()))
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
