"""Inception feature extraction on CPU: the path before issue #18 against the fast CPU path, per backend.

    OMP_NUM_THREADS=1 python -m benchmarks.inception_throughput --images 32 --threads 1,2 --batch-sizes 8,32

For each backend (in its native resize mode, or each of ``--modes``), thread count and batch
size, ``extract_features`` runs on the same uint8 images with ``CDRL_INCEPTION_FAST_CPU=0``
("before": the TorchScript as loaded behind torch-fidelity's own TF1 resize, what every run did
before #18) and with ``=1`` ("fast", the default), alternately ``--repeats`` times; each path
keeps its best wall time. Printed per row: images/s by wall clock and per CPU second of the
process (the steadier number on a shared machine; with 2 threads it counts both threads,
spinning included), the speed-up, and the largest relative feature difference, max over
batches of max|fast - before| / max|before| (:func:`cdrl.evaluation.inception.relative_difference`).
Each timed call loads the weights (both paths do); a 2-image call per path warms up first, and the
fast path's rewrite and probe check, done once per process, is timed apart. The load average is printed before and after: on a shared
machine, compare rows measured together only.

``--ablation`` times the network alone instead (299×299 inputs already normalised, one thread
count, chunks of ``--batch-sizes``' first value), one variant per row against the network as
loaded: channels-last input; PyTorch's own ``torch.jit.optimize_for_inference`` (oneDNN
layouts, with layout conversions around every concatenation); this module's rewrite without and
with the fused convolution + ReLU (the fast path); with ``--compile`` also ``torch.compile``
(inductor, freezing) of the TorchScript converted to an ExportedProgram, compile time printed::

    python -m benchmarks.inception_throughput --ablation --threads 1 --batch-sizes 8 --images 16 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np
import torch

from cdrl.evaluation import BACKENDS, extract_features, resolve_extractor, resolve_weights
from cdrl.evaluation.inception import (
    FAST_CPU_ENV_VAR,
    MODES,
    TORCHSCRIPT_EXTRACTOR,
    fast_cpu_network,
    relative_difference,
)


def synthetic_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (a 4×4 colour field, bicubic to ``size``, plus pixel noise), uint8 NCHW."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((count, 3, 4, 4), generator=generator) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    noisy = smooth + 12 * torch.randn(smooth.shape, generator=generator)
    return noisy.clamp(0, 255).round().to(torch.uint8)


@contextlib.contextmanager
def fast_cpu(enabled: bool) -> Iterator[None]:
    previous = os.environ.get(FAST_CPU_ENV_VAR)
    os.environ[FAST_CPU_ENV_VAR] = "1" if enabled else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[FAST_CPU_ENV_VAR]
        else:
            os.environ[FAST_CPU_ENV_VAR] = previous


def timed_features(images: torch.Tensor, extractor, batch_size: int, enabled: bool) -> tuple[np.ndarray, float, float]:
    """(pool features, wall seconds, process CPU seconds) of one ``extract_features`` call."""
    with fast_cpu(enabled):
        wall, cpu = time.perf_counter(), time.process_time()
        features = extract_features(images, extractor, device="cpu", batch_size=batch_size).pool
        return features, time.perf_counter() - wall, time.process_time() - cpu


def largest_batch_difference(fast: np.ndarray, before: np.ndarray, batch_size: int) -> float:
    return max(relative_difference(fast[start:start + batch_size], before[start:start + batch_size])
               for start in range(0, len(before), batch_size))


def ablation(weights, images: int, batch_size: int, repeats: int, compile_too: bool) -> None:
    """Network-only images/s of each variant (see the module docstring), interleaved, best of ``repeats``."""
    import warnings

    from cdrl.evaluation.inception import load_torchscript, optimize_for_cpu

    loaded = load_torchscript(weights)
    inputs = synthetic_images(images, 299).float().sub(128).div(128)
    channels_last = inputs.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.freeze / optimize_for_inference
        variants = {
            "network as loaded (before)": (loaded, inputs),
            "as loaded, channels-last input": (loaded, channels_last),
            "torch.jit.optimize_for_inference": (torch.jit.optimize_for_inference(load_torchscript(weights)), inputs),
            "rewrite: frozen, dtype, BN folded, channels-last": (optimize_for_cpu(load_torchscript(weights), fuse=False),
                                                                 channels_last),
            "rewrite + fused conv-ReLU (fast path)": (optimize_for_cpu(load_torchscript(weights)), channels_last),
        }
    if compile_too:
        from torch._export.converter import TS2EPConverter
        from torch._inductor import config as inductor_config

        start = time.perf_counter()
        module = TS2EPConverter(load_torchscript(weights), (inputs[:batch_size],)).convert().module()
        converted = time.perf_counter() - start
        inductor_config.freezing = True
        compiled = torch.compile(module)
        with torch.no_grad():
            start = time.perf_counter()
            for chunk in inputs.split(batch_size):
                compiled(chunk)
        print(f"torch.compile: TorchScript → ExportedProgram {converted:.1f} s, compile + first pass "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        variants["torch.compile (inductor, freezing)"] = (compiled, inputs)
    with torch.no_grad():
        reference = torch.cat([loaded(chunk) for chunk in inputs.split(batch_size)])
        best, differences = {}, {}
        for name, (network, data) in variants.items():
            differences[name] = max(relative_difference(network(chunk), reference[start:start + batch_size])
                                    for start, chunk in zip(range(0, images, batch_size), data.split(batch_size)))
        for _ in range(repeats):
            for name, (network, data) in variants.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for chunk in data.split(batch_size):
                    network(chunk)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                previous = best.get(name, (np.inf, np.inf))
                best[name] = (min(previous[0], wall), min(previous[1], cpu))
    print(f"\n{load()}\n")
    print(f"| variant ({torch.get_num_threads()} threads, chunks of {batch_size}) | img/s | img/CPU-s | speed-up "
          f"| max rel. difference |")
    print("| --- | --- | --- | --- | --- |")
    base = best["network as loaded (before)"][0]
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {images / wall:.2f} | {images / cpu:.2f} | {base / wall:.2f}× | {differences[name]:.1e} |")


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per timed call (default 32)")
    parser.add_argument("--size", type=int, default=32, help="side of the input images (default 32, CIFAR-10)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--batch-sizes", default="8,32", help="comma-separated batch sizes (default 8,32)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends (default all)")
    parser.add_argument("--modes", default="native", help="'native' (each backend's own) or comma-separated modes")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per path and row, best kept (default 2)")
    parser.add_argument("--weights", default=None, help="TorchScript FID Inception (default: the resolved one)")
    parser.add_argument("--ablation", action="store_true", help="time network variants alone (see the docstring)")
    parser.add_argument("--compile", action="store_true", help="with --ablation: add torch.compile (minutes)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    threads = [int(value) for value in args.threads.split(",")]
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    backends = args.backends.split(",")
    images = synthetic_images(args.images, args.size)

    print(f"{load()}; {args.images} images of {args.size}x{args.size}, torch {torch.__version__}, "
          f"{os.cpu_count()} cores, repeats {args.repeats}", flush=True)
    if args.ablation:
        torch.set_num_threads(threads[0])
        ablation(resolve_weights(args.weights).path, args.images, batch_sizes[0], args.repeats, args.compile)
        return 0
    rows = []
    for backend in backends:
        modes = [None] if args.modes == "native" else args.modes.split(",")
        for mode in modes:
            if mode is not None and mode not in MODES:
                parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
            extractor = resolve_extractor(backend, mode, args.weights)
            if extractor.name != TORCHSCRIPT_EXTRACTOR:
                parser.error("the fast CPU path is for TorchScript weights, not the library's own Inception")
            start = time.perf_counter()
            fast_cpu_network(extractor.weights_path)  # the one-time rewrite and check, cached per process
            setup = time.perf_counter() - start
            if setup > 0.05:
                print(f"fast path setup (load, rewrite, probe check; once per process): {setup:.2f} s", flush=True)
            for enabled in (False, True):  # imports and first-call allocations, outside the timings
                timed_features(images[:2], extractor, 2, enabled)
            for thread_count in threads:
                torch.set_num_threads(thread_count)
                for batch_size in batch_sizes:
                    best = {False: (np.inf, np.inf), True: (np.inf, np.inf)}
                    features = {}
                    for _ in range(args.repeats):
                        for enabled in (False, True):
                            pool, wall, cpu = timed_features(images, extractor, batch_size, enabled)
                            features[enabled] = pool
                            best[enabled] = (min(best[enabled][0], wall), min(best[enabled][1], cpu))
                    before, fast = best[False], best[True]
                    row = (backend, extractor.mode, thread_count, batch_size,
                           args.images / before[0], args.images / fast[0], before[0] / fast[0],
                           args.images / before[1], args.images / fast[1],
                           largest_batch_difference(features[True], features[False], batch_size))
                    rows.append(row)
                    print("  " + " | ".join(f"{value:.3g}" if isinstance(value, float) else str(value)
                                            for value in row), flush=True)
    print(f"\n{load()}\n")
    print("| backend | mode | threads | batch | before img/s | fast img/s | speed-up | before img/CPU-s "
          "| fast img/CPU-s | max rel. difference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for backend, mode, thread_count, batch_size, before, fast, speedup, before_cpu, fast_cpu_rate, difference in rows:
        print(f"| {backend} | {mode} | {thread_count} | {batch_size} | {before:.2f} | {fast:.2f} | {speedup:.2f}× "
              f"| {before_cpu:.2f} | {fast_cpu_rate:.2f} | {difference:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
