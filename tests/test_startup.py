"""Start-up: what `cdrl-bench --help` imports, and the measurements `perf` keeps between commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.speed import cpu_peak, perf
from cdrl.config import apply_overrides, preset

#: Heavy libraries a plain `cdrl-bench --help` must not import (torch alone is seconds on a loaded machine).
HEAVY = ("torch", "mlflow", "pandas", "numpy", "scipy", "matplotlib", "torchvision", "torch_fidelity", "cleanfid")


def test_help_imports_no_heavy_library():
    script = ("import json, sys\nsys.argv = ['cdrl-bench', '--help']\nimport cli\ntry:\n    cli.main()\n"
              "except SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert "cli" in modules and "typer" in modules
    assert sorted(name for name in modules if name.split(".")[0] in HEAVY) == []


def test_flop_counts_are_counted_once_per_config_and_batch(monkeypatch, tmp_path):
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path))
    counted = []

    def count(value):
        return lambda: counted.append(value) or {"aten.mm": value}

    tiny = preset("tiny")
    assert perf.cached_flops(tiny, "training", 4, count(1)) == {"aten.mm": 1}
    assert perf.cached_flops(tiny, "training", 4, count(2)) == {"aten.mm": 1}  # read back
    # The speed options do not change the count (it runs the exact path): same entry.
    assert perf.cached_flops(apply_overrides(tiny, ["performance.channels_last=true"]), "training", 4,
                             count(3)) == {"aten.mm": 1}
    assert perf.cached_flops(tiny, "training", 8, count(4)) == {"aten.mm": 4}
    assert perf.cached_flops(apply_overrides(tiny, ["energy.width=16"]), "training", 4, count(5)) == {"aten.mm": 5}
    assert perf.cached_flops(tiny, "langevin-step", 4, count(6)) == {"aten.mm": 6}
    assert counted == [1, 4, 5, 6]


def test_fma_peak_is_kept_only_when_measured_on_free_cores(monkeypatch, tmp_path):
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path))
    probes = []
    monkeypatch.setattr(cpu_peak, "fma_peak", lambda threads: probes.append(threads) or (0.1, "AVX2"))
    monkeypatch.setattr(cpu_peak.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu_peak.os, "getloadavg", lambda: (2.5, 2.5, 2.5))  # a busy machine: the probe read low
    assert cpu_peak.cached_fma_peak(1) == (0.1, "AVX2")
    assert cpu_peak.cached_fma_peak(1) == (0.1, "AVX2")
    assert probes == [1, 1]
    monkeypatch.setattr(cpu_peak.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert cpu_peak.cached_fma_peak(1) == (0.1, "AVX2")
    assert cpu_peak.cached_fma_peak(1) == (0.1, "AVX2")
    assert cpu_peak.cached_fma_peak(2) == (0.1, "AVX2")  # another thread count, measured again
    assert probes == [1, 1, 1, 2]
