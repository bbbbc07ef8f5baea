"""Speed benchmarks: scripts that print numbers, never timed tests.

``cdrl-bench perf`` is their one front door: :mod:`benchmarks.speed.perf` times a preset's
training step, Langevin steps, sampling and Inception features against the FLOP count and
the device's peak (:mod:`benchmarks.speed.cpu_peak` measures a CPU's).
:mod:`benchmarks.speed.suite_cost` times the training steps of a CPU-scale suite for its ``[cost]``.
"""
