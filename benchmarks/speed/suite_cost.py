"""Seconds per training iteration of each training of a suite, measured on this machine.

``python -m benchmarks.speed.suite_cost --suite toy-steps`` builds every training of the suite's
full profile as ``run --suite`` would (method, ablations, overrides, batch), times the real
training step on one CPU thread (the median of a few iterations after a warm-up) and prints one
line per training with the machine and its load, for a CPU suite's ``[cost]``, which
``cdrl-bench plan`` prices from.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.regression import cpu_description
from benchmarks.suite import expand, load_suite
from cdrl.datasets import item_shape
from cdrl.performance import use_threads
from cdrl.training import CooperativeTrainer


def seconds_per_iteration(config, iterations: int, warmup: int = 1) -> float:
    """Median wall seconds of one training step of ``config`` on random data of its batch and shape."""
    generator = torch.Generator().manual_seed(0)
    trainer = CooperativeTrainer(config, generator=generator)
    batch = config.training.batch_size
    x = torch.rand((batch, *item_shape(config.data)), generator=generator) * 2 - 1
    labels = (torch.randint(0, config.energy.num_classes, (batch,), generator=generator)
              if config.energy.num_classes is not None else None)
    for _ in range(warmup):
        trainer.step(x, labels)
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        trainer.step(x, labels)
        times.append(time.perf_counter() - started)
    return statistics.median(times)  # a shared machine's stalls inflate single iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", required=True)
    parser.add_argument("--iterations", type=int, default=5)
    arguments = parser.parse_args()
    use_threads(1)
    suite = load_suite(arguments.suite)
    print(f"{suite.name}: {cpu_description()}, {os.cpu_count()} cores, 1 thread, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    for job in expand(suite).trainings:
        print(f"{job.key}: {seconds_per_iteration(job.config, arguments.iterations):.3f} s/iteration "
              f"({job.config.training.iterations} iterations)", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
