"""Inception feature throughput (images/s) of cdrl.evaluation, on CPU and on CUDA when available.

Times ``extract_features`` end to end (uint8 32×32 images → resize to 299 → 2048-d features),
the work FID spends per image, for a few batch sizes, after one warm-up batch.

    python -m benchmarks.inception_throughput                 # table
    python -m benchmarks.inception_throughput --json          # JSON on stdout
    python -m benchmarks.inception_throughput --backend clean-fid --batch-sizes 1,16 --images 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch

from cdrl.evaluation import BACKENDS, MODES, extract_features, resolve_extractor


@dataclass(frozen=True)
class Measurement:
    device: str
    backend: str
    mode: str
    batch_size: int
    images: int
    seconds: float
    images_per_second: float


def measure(device: torch.device, backend: str, mode: str | None, weights: str | None, batch_size: int, count: int):
    extractor = resolve_extractor(backend, mode, weights)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    # Warm-up: weights load, TorchScript profiling runs and CUDA kernels selection stay out of the timing.
    extract_features(images[:batch_size], extractor, device=device, batch_size=batch_size)
    start = time.perf_counter()
    extract_features(images, extractor, device=device, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return Measurement(str(device), backend, extractor.mode, batch_size, count, seconds, count / seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="torch-fidelity")
    parser.add_argument("--mode", choices=MODES, default=None, help="resize mode (default: the backend's native)")
    parser.add_argument("--weights", default=None, help="Inception weights (default: the usual resolution order)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--images", type=int, default=64, help="timed images per batch size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    arguments = parser.parse_args(argv)
    try:
        batch_sizes = [int(size) for size in arguments.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {arguments.batch_sizes!r}")
    if arguments.images < 1 or min(batch_sizes) < 1:
        parser.error("--images and every batch size must be at least 1")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    measurements = []
    for device in devices:
        for batch_size in batch_sizes:
            measurement = measure(
                device, arguments.backend, arguments.mode, arguments.weights, batch_size, arguments.images
            )
            measurements.append(measurement)
            if not arguments.json:
                rate = f"{measurement.images_per_second:7.2f} images/s"
                timing = f"({measurement.images} in {measurement.seconds:.1f} s)"
                print(
                    f"{device} {arguments.backend} {measurement.mode} batch {batch_size:3d}: {rate} {timing}",
                    flush=True,
                )
    if arguments.json:
        environment = {
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1min": os.getloadavg()[0],
        }
        json.dump({"environment": environment, "measurements": [asdict(m) for m in measurements]}, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
