"""Regression check of a suite's measured metrics against a stored baseline (CI).

A results file (JSON) holds one suite's measured means per evaluation point::

    {"suite": "ci-smoke", "suite_version": 1, "profile": "full",
     "metrics": {"cdrl/K5": {"in_support_fraction": 0.83, "energy_distance": 0.011, ...}, ...},
     "recorded": {"date": ..., "torch": ..., "python": ..., "machine": ...}}

``results/baselines/<suite>.json`` is such a file, written by ``cdrl-bench check --update``.
A metric regresses when it is worse than the baseline by more than its tolerance (absolute;
the suite's ``[check] tolerances``, or ``--tolerance``), in its own direction: lower is
better for FID, KID and energy distance, higher for IS, in-support fraction and coverage.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.suite import METRICS, Suite, SuiteError
from benchmarks.tables import SuiteTable


@dataclass(frozen=True)
class Comparison:
    point: str
    metric: str
    baseline: float
    current: float | None
    tolerance: float

    @property
    def regressed(self) -> bool:
        if self.current is None or math.isnan(self.current):
            return True
        worse_by = self.baseline - self.current if METRICS[self.metric].higher_is_better \
            else self.current - self.baseline
        return worse_by > self.tolerance

    def describe(self) -> str:
        info = METRICS[self.metric]
        if self.current is None or math.isnan(self.current):
            return f"{self.metric} of {self.point} is missing from the results (baseline {self.baseline:.4g})"
        sign = "-" if info.higher_is_better else "+"
        return (f"{self.metric} of {self.point} is {self.current:.4g} (baseline {self.baseline:.4g}, tolerance "
                f"{sign}{self.tolerance:g}, {'higher' if info.higher_is_better else 'lower'} is better)")


def point_key(row) -> str:
    key = f"{row['model']}/K{int(row['steps_per_level'])}"
    if "guidance" in row and not math.isnan(row["guidance"]) and row["guidance"]:
        key += f"/w{row['guidance']:g}"
    if row["source"] not in ("", "trained"):
        key += f"@{row['source']}"
    return key


def results_from_table(table: SuiteTable) -> dict:
    """The measured means of a suite table as a results document (rows without runs left out)."""
    metrics: dict[str, dict[str, float]] = {}
    for _, row in table.frame.iterrows():
        if not row["model"] or not row["n_seeds"]:
            continue
        values = {metric: round(float(row[f"{metric}_mean"]), 6) for metric in table.suite.metrics
                  if not math.isnan(row[f"{metric}_mean"])}
        if values:
            metrics[point_key(row)] = values
    return {"suite": table.suite.name, "suite_version": table.suite.version, "profile": table.profile,
            "metrics": metrics,
            "recorded": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "torch": torch.__version__, "python": platform.python_version(),
                         "machine": platform.machine()}}


def write_results(document: dict, path: Path) -> Path:
    if not document["metrics"]:
        raise SuiteError(f"suite {document['suite']} has no finished runs to record: run "
                         f"`cdrl-bench run --suite {document['suite']}` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def read_results(path: Path) -> dict:
    if not path.is_file():
        raise SuiteError(f"results file {path} does not exist: write one with `cdrl-bench check --update "
                         f"--baseline {path}`")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SuiteError(f"{path} is not valid JSON ({error}): rewrite it with `cdrl-bench check --update`") from None
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
        raise SuiteError(f"{path} has no 'metrics' table: rewrite it with `cdrl-bench check --update`")
    return document


def compare(suite: Suite, baseline: dict, current: dict, tolerances: dict[str, float] | None = None
            ) -> list[Comparison]:
    """Every (point, metric) of the baseline, compared with the current results."""
    for document, name in ((baseline, "baseline"), (current, "results")):
        if (document.get("suite"), document.get("suite_version")) != (suite.name, suite.version):
            raise SuiteError(f"the {name} are of suite {document.get('suite')} v{document.get('suite_version')}, "
                             f"not {suite.name} v{suite.version}: regenerate the baseline with "
                             f"`cdrl-bench check --suite {suite.name} --update --baseline FILE`")
    limits = {**suite.tolerances, **(tolerances or {})}
    comparisons = []
    for point, values in baseline["metrics"].items():
        for metric, value in values.items():
            if metric not in METRICS:
                raise SuiteError(f"the baseline names an unknown metric {metric!r}: regenerate it with --update")
            if metric not in limits:
                raise SuiteError(f"no tolerance for {metric}: add it to [check] tolerances of {suite.path.name} "
                                 f"or pass --tolerance {metric}=VALUE")
            found = current["metrics"].get(point, {}).get(metric)
            comparisons.append(Comparison(point, metric, float(value), None if found is None else float(found),
                                          limits[metric]))
    return comparisons
