"""Training and sampling speed of a preset on this device, measured against its FLOP count.

For one preset and batch size: training iterations/s, Langevin steps/s, sampling images/s at
6×K for each K asked, optionally Inception features/s, peak memory, FLOPs per iteration
(``torch.utils.flop_counter``, counted on the meta device: no arithmetic runs) and the achieved
fraction of the device's peak FLOP/s. Speed options come in as config overrides
(``performance.channels_last=true`` ...), so the numbers are those of the real training step.

    cdrl-bench perf --preset cifar10 --batch-size 8 --threads 2 --breakdown
    cdrl-bench perf --preset tiny --json perf.json --set performance.channels_last=true
    cdrl-bench perf --preset cifar10 --batch-size 128 --options-matrix   # on a GPU

``--breakdown`` profiles one more iteration and splits its time by kind of operation
(convolution forward and backward, matmuls, the rest) with the FLOP/s of each;
``--options-matrix`` runs the exact path, each speed option alone and all but bfloat16
together, and prints one table.

On a shared machine wall time depends on the load: the report carries the process CPU
seconds and the load average next to every wall-clock number.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.speed.cpu_peak import cached_fma_peak
from benchmarks.speed.measurement_cache import cached
from cdrl.checkpoint import LoadedModel
from cdrl.config import ExperimentConfig, apply_overrides, preset
from cdrl.datasets import item_shape
from cdrl.errors import CdrlBenchError
from cdrl.files import writing
from cdrl.generation import GenerationSpec, generate
from cdrl.langevin import energy_gradient, langevin_revision
from cdrl.noise import GeneratorNoise
from cdrl.performance import use_threads
from cdrl.sampler import sample
from cdrl.schedule import LogSNRSchedule
from cdrl.training import CooperativeTrainer

T = TypeVar("T")

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
    #: Profile one more training iteration and split its time by kind of operation.
    breakdown: bool = False
    #: Peak TFLOP/s to compare with; None: the table for known GPUs, on CPU the measured FMA
    #: peak (benchmarks.speed.cpu_peak), or a measured sgemm where that cannot run.
    peak_tflops: float | None = None
    seed: int = 0


@dataclass
class Timing:
    wall_seconds: float
    cpu_seconds: float


@dataclass
class OperationShare:
    """One kind of operation in a profiled training iteration (self time of its ATen ops)."""

    kind: str
    seconds: float
    fraction_of_time: float
    flops: int
    tflops_per_second: float | None


@dataclass
class PerfReport:
    settings: dict[str, Any]
    environment: dict[str, Any]
    flops_per_iteration: int
    flops_per_langevin_step: int
    flops_per_image_sample: dict[str, int]
    #: Median of ``iteration_seconds``; the wall time of every timed iteration is kept.
    seconds_per_iteration: float
    best_seconds_per_iteration: float
    iteration_seconds: list[float]
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
    breakdown: list[OperationShare] | None = None
    #: 50,000 samples at 6x15 plus their Inception features at the rates above (both measured).
    minutes_for_50k_samples_and_features: float | None = None
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
            f"training: {self.seconds_per_iteration:.3f} s/iteration, median of {len(self.iteration_seconds)} "
            f"(best {self.best_seconds_per_iteration:.3f}; {self.iterations_per_second:.3g} it/s, "
            f"{self.cpu_seconds_per_iteration:.3f} CPU s/iteration)",
            f"FLOPs: {self.flops_per_iteration / 1e12:.4g} TFLOP/iteration "
            f"({self.flops_per_iteration / self.settings['batch_size'] / 1e9:.4g} GFLOP/image), "
            f"{self.flops_per_langevin_step / 1e9:.4g} GFLOP/Langevin step",
            f"achieved {self.achieved_tflops:.3g} TFLOP/s = {100 * self.fraction_of_peak:.1f}% of "
            f"{self.peak_tflops:.3g} TFLOP/s ({self.peak_source})",
            f"Langevin: {self.langevin_steps_per_second:.3g} steps/s; sampling: {samples or 'not measured'}{inception}",
            f"peak memory: {self.peak_memory_bytes / 2**20:.0f} MiB ({self.peak_memory_kind})",
            *([] if self.minutes_for_50k_samples_and_features is None else [
                f"50,000 samples at 6x15 and their Inception features, at these rates: "
                f"{self.minutes_for_50k_samples_and_features:.1f} min"]),
            *self._breakdown_lines(),
            *self.notes,
        ]

    def _breakdown_lines(self) -> list[str]:
        if self.breakdown is None:
            return []
        lines = ["time by operation (one profiled iteration, self time of the ATen ops):"]
        for share in self.breakdown:
            rate = "" if share.tflops_per_second is None else (
                f", {share.flops / 1e12:.4g} TFLOP at {1000 * share.tflops_per_second:.4g} GFLOP/s")
            lines.append(f"  {share.kind}: {share.seconds:.3f} s ({100 * share.fraction_of_time:.1f}%{rate})")
        return lines


# --------------------------------------------------------------------------- FLOPs

class _WholeProgram:
    """Stands in for FlopCounterMode's module tracker, whose autograd hooks fail inside
    ``torch.autograd.grad`` (every Langevin step): all FLOPs are attributed to "Global"."""

    parents = {"Global"}

    def __enter__(self) -> "_WholeProgram":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def count_flops_by_operation(run: Callable[[], object]) -> dict[str, int]:
    """FLOPs of ``run()`` per ATen operation ("aten.convolution" ...), as torch.utils.flop_counter counts them."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _WholeProgram()
    with counter:
        run()
    return {str(operation): flops for operation, flops in counter.get_flop_counts()["Global"].items()}


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of ``run()`` as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    return sum(count_flops_by_operation(run).values())


def _meta_trainer(config: ExperimentConfig) -> CooperativeTrainer:
    # Only the exact path: compiled code, autocast and fused optimiser kernels (which refuse the meta
    # device) are not needed to count the same math.
    plain = apply_overrides(config, ["performance.chain_compile=off", "performance.ebm_precision=float32",
                                     "performance.fused_optimizer=false"])
    return CooperativeTrainer(plain, device="meta")


def _meta_batch(config: ExperimentConfig, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.zeros((batch_size, *item_shape(config.data)), device="meta")
    labels = (torch.zeros(batch_size, dtype=torch.long, device="meta")
              if config.energy.num_classes is not None else None)
    return x, labels


def training_flops_by_operation(config: ExperimentConfig, batch_size: int) -> dict[str, int]:
    """FLOPs of one training iteration of a batch per ATen operation, on the meta device."""
    trainer = _meta_trainer(config)
    x, labels = _meta_batch(config, batch_size)
    return count_flops_by_operation(lambda: trainer.step(x, labels))


def langevin_step_flops(config: ExperimentConfig, batch_size: int) -> int:
    """FLOPs of one Langevin step (energy and input gradient) of a batch, on the meta device."""
    trainer = _meta_trainer(config)
    trainer.ebm.eval()
    x, labels = _meta_batch(config, batch_size)
    logsnr = torch.zeros(batch_size, device="meta")
    return count_flops(lambda: energy_gradient(lambda y, s: trainer.ebm(y, s, labels), x, logsnr))


def cached_flops(config: ExperimentConfig, what: str, batch_size: int, count: Callable[[], T]) -> T:
    """``count()`` of ``what`` for ``config`` at ``batch_size``, counted once per config and torch version.

    The speed options are left out of the key: the count always runs the exact path (:func:`_meta_trainer`).
    """
    model = {section: values for section, values in config.to_dict().items() if section != "performance"}
    return cached("flops", {"what": what, "batch_size": batch_size, "config": model, "torch": torch.__version__},
                  count)


# --------------------------------------------------------------------------- time by operation

#: Kinds of operation in the time breakdown; an ATen name ("aten::mkldnn_convolution",
#: "aten.convolution" from the FLOP counter) takes the first kind with a matching fragment.
OPERATION_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution",)),
    ("matmul and attention", ("aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm", "aten.addmv", "aten.mv",
                              "scaled_dot_product")),
)
OTHER_OPERATIONS = "everything else (element-wise, normalisation, optimisers, EMA)"


def operation_kind(name: str) -> str:
    name = name.replace("::", ".")
    for kind, fragments in OPERATION_KINDS:
        if any(fragment == name or (fragment in name and not fragment.startswith("aten.")) for fragment in fragments):
            return kind
    return OTHER_OPERATIONS


def time_by_operation(step: Callable[[], object], device: torch.device,
                      flops_by_operation: dict[str, int]) -> list[OperationShare]:
    """Profile ``step()`` once; its self time and FLOP/s per kind of operation."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
        _synchronize(device)
    seconds: dict[str, float] = {}
    for event in profiler.key_averages():
        if event.device_type != DeviceType.CPU:
            continue  # kernel rows: their time is already the self device time of the op that launched them
        self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        kind = operation_kind(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + self_us / 1e6
    flops: dict[str, int] = {}
    for name, count in flops_by_operation.items():
        kind = operation_kind(name)
        flops[kind] = flops.get(kind, 0) + count
    total = sum(seconds.values())
    kinds = [kind for kind, _ in OPERATION_KINDS] + [OTHER_OPERATIONS]
    return [OperationShare(kind=kind, seconds=seconds.get(kind, 0.0),
                           fraction_of_time=seconds.get(kind, 0.0) / total if total else 0.0,
                           flops=flops.get(kind, 0),
                           tflops_per_second=(flops[kind] / seconds[kind] / 1e12
                                              if flops.get(kind) and seconds.get(kind) else None))
            for kind in kinds]


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


def measured_cpu_peak_tflops(size: int = 2048, repeats: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Best rate of ``size``³ matmuls in ``dtype`` on the current threads: the float32 peak where no FMA probe
    runs, and the bfloat16 one (AMX tiles where the CPU has them)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
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
    arithmetic = ("bfloat16" if config.performance.ebm_precision == "bfloat16"
                  else "tf32" if config.performance.tf32 else "float32")
    if device.type == "cpu":
        threads = torch.get_num_threads()
        fma = cached_fma_peak(threads)
        if fma is not None:
            peak = fma[0], f"measured float32 {fma[1]} FMA peak on {threads} threads (benchmarks.speed.cpu_peak)"
        else:
            peak = measured_cpu_peak_tflops(), "measured float32 sgemm 2048^3 on these threads (no FMA probe here)"
        if arithmetic == "bfloat16":
            # AMX runs bfloat16 matmuls several times faster than float32 FMAs; a CPU without bfloat16
            # arithmetic converts and stays under its float32 peak, which then remains the bound.
            bfloat16 = measured_cpu_peak_tflops(dtype=torch.bfloat16)
            if bfloat16 > peak[0]:
                return bfloat16, f"measured bfloat16 matmul 2048^3 on {threads} threads, above the float32 peak here"
        return peak
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


def _time_training(trainer: CooperativeTrainer, x: torch.Tensor, labels: torch.Tensor | None,
                   settings: PerfSettings) -> tuple[list[float], float]:
    """(wall seconds of each timed training iteration, CPU seconds per iteration), after the warm-up."""
    for _ in range(settings.warmup):
        trainer.step(x, labels)
    iteration_seconds = []
    with _timed(trainer.device) as training:
        for _ in range(settings.iterations):
            with _timed(trainer.device) as iteration:
                trainer.step(x, labels)
            iteration_seconds.append(iteration.wall_seconds)
    return iteration_seconds, training.cpu_seconds / settings.iterations


def _langevin_steps_per_second(trainer: CooperativeTrainer, x: torch.Tensor, labels: torch.Tensor | None,
                               generator: torch.Generator, batch_size: int) -> float:
    """Langevin steps per second of one training-length chain at random levels (one step first, untimed)."""
    config, device = trainer.config, trainer.device
    schedule = LogSNRSchedule(config.schedule)
    level = schedule.level(torch.randint(1, schedule.n_levels + 1, (batch_size,), generator=generator,
                                         device=device), device=device)
    noise = GeneratorNoise(generator)
    condition = None if labels is None else labels + 1
    with trainer.chain_ebm.frozen() as chain_energy:
        def chain(steps: int) -> torch.Tensor:
            return langevin_revision(lambda y, logsnr: chain_energy(y, logsnr, condition), x, x, level,
                                     config.langevin, schedule.logsnr_max, n_steps=steps, noise=noise)
        chain(1)
        with _timed(device) as langevin:
            chain(config.langevin.n_steps)
    return config.langevin.n_steps / langevin.wall_seconds


def _sampling_rates(trainer: CooperativeTrainer, settings: PerfSettings) -> dict[str, float]:
    """Images per second of ``generate()`` at 6xK for each K of the settings (a 6x1 draw first, untimed)."""
    config, device = trainer.config, trainer.device
    model = LoadedModel(config, trainer.ebm, trainer.initializer, trainer.iteration, uses_ema=False)
    n_samples = settings.sample_batch or settings.batch_size
    sampling = {}

    def draw(steps_per_level: int) -> None:
        spec = GenerationSpec.resolve(config, n_samples, steps_per_level=steps_per_level, batch_size=n_samples,
                                      weights="live")
        generate(model, spec, device=device, chain=trainer.chain_ebm)

    for steps in settings.sampling_steps:
        draw(1)  # compile, warm-up
        with _timed(device) as drawing:
            draw(steps)
        sampling[f"6x{steps}"] = n_samples / drawing.wall_seconds
    return sampling


def run(settings: PerfSettings) -> PerfReport:
    use_threads(settings.threads)  # perf reports the load beside every time instead of warning
    device = torch.device(settings.device)
    config = apply_overrides(preset(settings.preset),
                             [f"training.batch_size={settings.batch_size}", *settings.overrides])
    flops_by_operation = cached_flops(config, "training", settings.batch_size,
                                      lambda: training_flops_by_operation(config, settings.batch_size))
    flops_iteration = sum(flops_by_operation.values())
    flops_step = cached_flops(config, "langevin-step", settings.batch_size,
                              lambda: langevin_step_flops(config, settings.batch_size))
    flops_sample = {f"6x{steps}": cached_flops(config, f"sample-6x{steps}", 1, lambda: sample_flops(config, steps))
                    for steps in settings.sampling_steps}

    torch.manual_seed(settings.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    trainer = CooperativeTrainer(config, device=device, generator=generator)
    shape = (settings.batch_size, *item_shape(config.data))
    x = torch.rand(shape, generator=generator, device=device) * 2 - 1
    labels = (torch.randint(0, config.energy.num_classes, (settings.batch_size,), generator=generator,
                            device=device) if config.energy.num_classes is not None else None)
    iteration_seconds, training_cpu_seconds = _time_training(trainer, x, labels, settings)
    # The median: a shared machine's stalls inflate single iterations.
    seconds = statistics.median(iteration_seconds)
    breakdown = (time_by_operation(lambda: trainer.step(x, labels), device, flops_by_operation)
                 if settings.breakdown else None)
    trainer.ebm.eval()
    if trainer.initializer is not None:
        trainer.initializer.eval()
    steps_per_second = _langevin_steps_per_second(trainer, x, labels, generator, settings.batch_size)
    sampling = _sampling_rates(trainer, settings)

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
        best_seconds_per_iteration=min(iteration_seconds), iteration_seconds=iteration_seconds,
        cpu_seconds_per_iteration=training_cpu_seconds,
        iterations_per_second=1.0 / seconds, langevin_steps_per_second=steps_per_second,
        sampling_images_per_second=sampling, inception_features_per_second=inception,
        peak_memory_bytes=memory, peak_memory_kind=memory_kind, peak_tflops=peak, peak_source=peak_source,
        achieved_tflops=achieved, fraction_of_peak=achieved / peak, breakdown=breakdown,
        minutes_for_50k_samples_and_features=(
            (50_000 / sampling["6x15"] + 50_000 / inception) / 60 if "6x15" in sampling and inception else None),
        notes=notes)


def parse_sampling_steps(text: str) -> tuple[int, ...]:
    """``--sampling-steps`` ("15,5"; "" for none) as the K of each timed 6xK sampling run, refused in one line."""
    try:
        steps = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise CdrlBenchError(f"--sampling-steps {text!r} is not comma-separated integers: write e.g. "
                             "--sampling-steps 15,5") from None
    if any(step < 1 for step in steps):
        raise CdrlBenchError(f"--sampling-steps {text!r}: every K must be at least 1, e.g. --sampling-steps 15,5")
    return steps


def execute(settings: PerfSettings, *, options_matrix: bool = False, compiled: bool = False,
            published: Path | None = None, pairs: int = 5, json_path: Path | None = None) -> str:
    """Run the benchmark (or the options matrix, the compiled/eager pairs, or the published code beside ours), write
    the JSON if asked; returns the text to print."""
    if published is not None:
        from benchmarks.speed import published as published_code

        return published_code.execute(settings, published, pairs, json_path)
    if compiled:
        from benchmarks.speed import compiled as compiled_pairs

        return compiled_pairs.execute(settings, pairs, json_path)
    if options_matrix:
        from benchmarks.speed.options_matrix import matrix_table, run_matrix

        rows = run_matrix(settings)
        text = "\n\n".join(["\n".join([f"## {name}", *report.lines()]) for name, report in rows]
                           + [matrix_table(rows)])
        data: Any = [{"options": name, **report.to_dict()} for name, report in rows]
    else:
        report = run(settings)
        text, data = "\n".join(report.lines()), report.to_dict()
    write_json(json_path, data)
    return text


def write_json(json_path: Path | None, data: Any) -> None:
    """Write a report's JSON where ``--json`` asks (nothing when it is None)."""
    if json_path is not None:
        with writing(json_path):
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(data, indent=2) + "\n")
