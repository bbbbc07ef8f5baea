"""Peak float32 FLOP/s of this CPU: independent FMA chains on every thread, timed in C.

The denominator of ``cdrl-bench perf``'s "fraction of peak" on CPU. A library sgemm is not a
peak: MKL's reaches 37-55% of this figure on the project's AMD machine, oneDNN's convolutions
about 50%. The chains run in each vector width the CPU has (AVX2 with FMA, AVX-512), and the
faster counts: an AVX-512 machine's 512-bit FMAs double its peak where it has two such units,
and the libraries use them. Needs a C compiler (``cc``) and an x86-64 CPU with AVX2 and FMA;
where either is missing, :func:`fma_peak` returns None and ``perf`` falls back to a measured
sgemm. ``cdrl-bench perf`` prints the peak it used and where it came from.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Twelve independent accumulators hide the FMA latency (4-5 cycles) behind two FMA pipes.
_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  long rounds = atol(argv[1]);
  int repeats = atoi(argv[2]);
  double best = 0.0;
  float sink = 0.0f;
  for (int r = 0; r < repeats; r++) {
    double start = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
    {
      /* Distinct starts: twelve equal chains would be merged into one by the compiler. */
      VECTOR a0 = OP(set1_ps)(1.00f), a1 = OP(set1_ps)(1.01f), a2 = OP(set1_ps)(1.02f);
      VECTOR a3 = OP(set1_ps)(1.03f), a4 = OP(set1_ps)(1.04f), a5 = OP(set1_ps)(1.05f);
      VECTOR a6 = OP(set1_ps)(1.06f), a7 = OP(set1_ps)(1.07f), a8 = OP(set1_ps)(1.08f);
      VECTOR a9 = OP(set1_ps)(1.09f), a10 = OP(set1_ps)(1.10f), a11 = OP(set1_ps)(1.11f);
      const VECTOR b = OP(set1_ps)(0.999999f), c = OP(set1_ps)(1e-7f);
      for (long i = 0; i < rounds; i++) {
        a0 = OP(fmadd_ps)(a0, b, c); a1 = OP(fmadd_ps)(a1, b, c); a2 = OP(fmadd_ps)(a2, b, c);
        a3 = OP(fmadd_ps)(a3, b, c); a4 = OP(fmadd_ps)(a4, b, c); a5 = OP(fmadd_ps)(a5, b, c);
        a6 = OP(fmadd_ps)(a6, b, c); a7 = OP(fmadd_ps)(a7, b, c); a8 = OP(fmadd_ps)(a8, b, c);
        a9 = OP(fmadd_ps)(a9, b, c); a10 = OP(fmadd_ps)(a10, b, c); a11 = OP(fmadd_ps)(a11, b, c);
      }
      VECTOR s = OP(add_ps)(OP(add_ps)(OP(add_ps)(a0, a1), OP(add_ps)(a2, a3)),
                            OP(add_ps)(OP(add_ps)(a4, a5), OP(add_ps)(a6, a7)));
      s = OP(add_ps)(s, OP(add_ps)(OP(add_ps)(a8, a9), OP(add_ps)(a10, a11)));
      float lanes[LANES];
      OP(storeu_ps)(lanes, s);
      sink += lanes[0];  /* keeps the loop from being optimised away */
    }
    double seconds = omp_get_wtime() - start;
    double flops = 2.0 * LANES * 12 * (double)rounds * omp_get_max_threads();
    if (flops / seconds > best) best = flops / seconds;
  }
  printf("%.6e %f\n", best, sink);
  return 0;
}
"""


@dataclass(frozen=True)
class VectorUnit:
    name: str
    #: /proc/cpuinfo flags the kernel needs.
    flags: tuple[str, ...]
    compiler_flags: tuple[str, ...]
    #: C preprocessor definitions that instantiate the kernel for this width.
    defines: tuple[str, ...]


VECTOR_UNITS = (
    VectorUnit("AVX2", ("avx2", "fma"), ("-mavx2", "-mfma"),
               ("-DVECTOR=__m256", "-DOP(name)=_mm256_##name", "-DLANES=8")),
    VectorUnit("AVX-512", ("avx512f",), ("-mavx512f",),
               ("-DVECTOR=__m512", "-DOP(name)=_mm512_##name", "-DLANES=16")),
)


def _cpu_flags() -> set[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def available_units() -> list[VectorUnit]:
    """The vector units this CPU has, narrowest first."""
    flags = _cpu_flags()
    return [unit for unit in VECTOR_UNITS if set(unit.flags) <= flags]


def _binary(unit: VectorUnit) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    folder = Path(tempfile.gettempdir()) / "cdrl-bench-cpu-peak"
    folder.mkdir(exist_ok=True)
    build = [*unit.compiler_flags, *unit.defines]
    binary = folder / f"fma_peak_{hashlib.sha256((_SOURCE + ' '.join(build)).encode()).hexdigest()[:12]}"
    if not binary.exists():
        source, partial = folder / f"fma_peak.{os.getpid()}.c", folder / f"fma_peak.{os.getpid()}"
        source.write_text(_SOURCE)
        result = subprocess.run([compiler, "-O2", *build, "-fopenmp", str(source), "-o", str(partial)],
                                capture_output=True, text=True)
        source.unlink()
        if result.returncode != 0:
            return None
        partial.replace(binary)  # atomic: a concurrent run never executes a half-written binary
    return binary


def unit_peaks(threads: int, rounds: int = 30_000_000, repeats: int = 5) -> dict[str, float]:
    """TFLOP/s of each vector unit whose kernel builds and runs here: best of ``repeats`` runs of
    ``rounds`` × 12 FMAs per thread on ``threads`` threads."""
    peaks = {}
    for unit in available_units():
        binary = _binary(unit)
        if binary is None:
            continue
        result = subprocess.run([str(binary), str(rounds), str(repeats)], capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if result.returncode == 0:
            peaks[unit.name] = float(result.stdout.split()[0]) / 1e12
    return peaks


def fma_peak(threads: int, rounds: int = 30_000_000, repeats: int = 5) -> tuple[float, str] | None:
    """(TFLOP/s, vector unit) of the fastest unit (:func:`unit_peaks`); None where none can run here."""
    peaks = unit_peaks(threads, rounds, repeats)
    return max((tflops, name) for name, tflops in peaks.items()) if peaks else None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                platform.machine())


def cached_fma_peak(threads: int) -> tuple[float, str] | None:
    """:func:`fma_peak`, measured once per machine and thread count (benchmarks.speed.measurement_cache).

    Kept only when measured with a core free for each probe thread (load average at most cores - threads):
    a probe that shares its cores reads low, and a cached low peak would overstate every later fraction.
    """
    from benchmarks.speed.measurement_cache import cached

    key = {"cpu": _cpu_model(), "units": [unit.name for unit in available_units()], "threads": threads,
           "probe": hashlib.sha256(_SOURCE.encode()).hexdigest()}
    idle = lambda peak: peak is not None and os.getloadavg()[0] <= (os.cpu_count() or 1) - threads  # noqa: E731
    peak = cached("fma-peak", key, lambda: fma_peak(threads), keep=idle)
    return None if peak is None else (float(peak[0]), str(peak[1]))

