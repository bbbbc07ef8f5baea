"""``cdrl-bench perf --options-matrix``: the exact path, each speed option alone and all but bfloat16 together,
timed one after another and tabulated."""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks.speed.perf import PerfReport, PerfSettings, run

#: What ``--options-matrix`` times, one run each: the exact path, each speed option alone, all but
#: bfloat16 together (bfloat16 changes results the most, so it is timed alone).
OPTION_MATRIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("plain (eager float32)", ()),
    ("channels_last", ("performance.channels_last=true",)),
    ("tf32", ("performance.tf32=true",)),
    ("fused_optimizer", ("performance.fused_optimizer=true",)),
    ("chain_compile=inductor", ("performance.chain_compile=inductor",)),
    ("chain_compile=cuda-graphs", ("performance.chain_compile=cuda-graphs",)),
    ("ebm_precision=bfloat16", ("performance.ebm_precision=bfloat16",)),
    ("all but bfloat16", ("performance.channels_last=true", "performance.tf32=true",
                          "performance.fused_optimizer=true", "performance.chain_compile=cuda-graphs")),
)
#: Options that only exist on CUDA: dropped from the matrix on other devices.
CUDA_ONLY_OPTIONS = ("performance.tf32=true", "performance.chain_compile=cuda-graphs")


def matrix_runs(device: torch.device) -> list[tuple[str, tuple[str, ...]]]:
    """OPTION_MATRIX for ``device``: on CPU without the CUDA-only options and the sets left empty by that."""
    if device.type == "cuda":
        return list(OPTION_MATRIX)
    runs = []
    for name, overrides in OPTION_MATRIX:
        kept = tuple(item for item in overrides if item not in CUDA_ONLY_OPTIONS)
        if kept or not overrides:
            runs.append((name, kept))
    return runs


def run_matrix(settings: PerfSettings) -> list[tuple[str, PerfReport]]:
    """One :func:`run` per option set, each on top of ``settings.overrides``."""
    device = torch.device(settings.device)
    return [(name, run(replace(settings, overrides=settings.overrides + overrides)))
            for name, overrides in matrix_runs(device)]


def matrix_table(rows: list[tuple[str, PerfReport]]) -> str:
    """Markdown: per option set, s/iteration, speed-up over the first row, TFLOP/s, % of peak, chain and sampling rates."""
    baseline = rows[0][1].seconds_per_iteration
    sampled = sorted({key for _, report in rows for key in report.sampling_images_per_second})
    header = ["options", "s/iteration", "speed-up", "TFLOP/s", "% of peak", "Langevin steps/s",
              *(f"images/s {key}" for key in sampled)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, report in rows:
        cells = [name, f"{report.seconds_per_iteration:.4g}", f"{baseline / report.seconds_per_iteration:.2f}x",
                 f"{report.achieved_tflops:.3g}", f"{100 * report.fraction_of_peak:.1f}",
                 f"{report.langevin_steps_per_second:.3g}",
                 *(f"{report.sampling_images_per_second[key]:.3g}" if key in report.sampling_images_per_second
                   else "—" for key in sampled)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
