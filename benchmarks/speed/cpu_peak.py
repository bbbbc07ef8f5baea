"""Peak float32 FLOP/s of this CPU: independent AVX2 FMA chains on every thread, timed in C.

The denominator of ``cdrl-bench perf``'s "fraction of peak" on CPU. A library sgemm is not a
peak: MKL's reaches 37-55% of this figure on the project's AMD machine, oneDNN's convolutions
about 50%. Needs a C compiler (``cc``) and an x86-64 CPU with AVX2 and FMA; where either is
missing, :func:`fma_peak_tflops` returns None and ``perf`` falls back to a measured sgemm.
``cdrl-bench perf`` prints the peak it used and where it came from.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
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
      __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
      __m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
      const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
      for (long i = 0; i < rounds; i++) {
        a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
        a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
        a9 = _mm256_fmadd_ps(a9, b, c); a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
      }
      __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                               _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
      s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
      float lanes[8];
      _mm256_storeu_ps(lanes, s);
      sink += lanes[0];  /* keeps the loop from being optimised away */
    }
    double seconds = omp_get_wtime() - start;
    double flops = 2.0 * 8 * 12 * (double)rounds * omp_get_max_threads();
    if (flops / seconds > best) best = flops / seconds;
  }
  printf("%.6e %f\n", best, sink);
  return 0;
}
"""


def _has_avx2_fma() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _binary() -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not _has_avx2_fma():
        return None
    folder = Path(tempfile.gettempdir()) / "cdrl-bench-cpu-peak"
    folder.mkdir(exist_ok=True)
    binary = folder / f"fma_peak_{hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]}"
    if not binary.exists():
        source = folder / "fma_peak.c"
        source.write_text(_SOURCE)
        partial = folder / f"fma_peak.{os.getpid()}"
        result = subprocess.run([compiler, "-O2", "-mavx2", "-mfma", "-fopenmp", str(source), "-o", str(partial)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return None
        partial.replace(binary)  # atomic: a concurrent run never executes a half-written binary
    return binary


def fma_peak_tflops(threads: int, rounds: int = 30_000_000, repeats: int = 5) -> float | None:
    """Best of ``repeats`` runs of ``rounds`` × 12 FMAs per thread on ``threads`` threads, in TFLOP/s."""
    binary = _binary()
    if binary is None:
        return None
    result = subprocess.run([str(binary), str(rounds), str(repeats)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        return None
    return float(result.stdout.split()[0]) / 1e12
