"""Measure the regression gate's power: plant each mutation in a scratch copy, run the gate, print a kill table.

    python -m tools.mutations                        # every mutation, then nothing else
    python -m tools.mutations --clean 10             # plus 10 unmutated reruns (seeds and threads varied)
    python -m tools.mutations --only no-step-scaling --only guidance-sign --json kills.json
    python -m tools.mutations --fingerprints-only --workers 2   # the fingerprints alone: a minute
    python -m tools.mutations --clean 10 --workers 2 --pytest   # plus the tests where check missed

The gate is what CI runs: ``cdrl-bench run --suite SUITE`` then ``cdrl-bench check --suite
SUITE --baseline BASELINE``, each in the scratch copy with its own MLflow store. A mutation is
killed when the check exits non-zero (a regressed metric, a drifted fingerprint) or the run
crashes; a clean rerun that fails is a false alarm. CI also runs the tests, so a mutation the
check missed is killed by CI when ``pytest`` fails on it: ``--pytest`` runs the tests (stopping at
the first failure) in the scratch copy of each mutation that survived the check, and the table
gives both columns. Not part of .ci/run: each gate run takes minutes. ``--fingerprints-only``
compares only the fingerprints (stored models and ruler) and the resolved configs with the
baseline's (no training, no scoring): a minute per mutation, and the drift that killed each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.mutations import Mutation, by_name

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    name: str
    description: str
    verdict: str  # "killed", "survived", "crashed" (killed by an error), "false alarm", "clean"
    #: Failures that are not fingerprints: metrics, protocols and configs.
    quality_failures: int
    fingerprint_failures: int
    first_failure: str
    seconds: float
    threads: int
    seed_offset: int
    equivalent: str = ""
    area: str = ""
    #: The tests on the mutated copy: "" (not run), "failed" (they kill it) or "passed".
    pytest: str = ""


def _scratch_copy(destination: Path) -> Path:
    """The tracked files of the repository (and untracked, unignored ones), as they are in the working tree."""
    if destination.exists():
        shutil.rmtree(destination)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _run_gate(root: Path, suite: str, baseline: str, threads: int, seed_offset: int) -> tuple[int, str, float]:
    # PASSIVE: gate runs share the machine (--workers), where spinning OpenMP threads waste the cores.
    environment = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                   "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    # The scratch copy's own code must be the one imported, not the installed checkout's.
    where = subprocess.run([sys.executable, "-c", "import cdrl; print(cdrl.__file__)"], cwd=root, env=environment,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the scratch copy imports cdrl from {where}, not from {root}")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "cli", "run", "--suite", suite, "--runs-dir", str(root / "runs"),
                          "--seed-offset", str(seed_offset)], cwd=root, env=environment, capture_output=True, text=True)
    log = run.stdout + run.stderr
    if run.returncode != 0:
        return -run.returncode or -1, log, time.monotonic() - started
    check = subprocess.run([sys.executable, "-m", "cli", "check", "--suite", suite, "--baseline", baseline],
                           cwd=root, env=environment, capture_output=True, text=True)
    return check.returncode, log + check.stdout + check.stderr, time.monotonic() - started


def _run_tests(root: Path) -> tuple[str, str]:
    """("failed" | "passed", the failing test's line) of the test suite in a scratch copy, one thread, first failure."""
    environment = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'tests.db'}"}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"], cwd=root,
                           env=environment, capture_output=True, text=True)
    failed = [line for line in tests.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return ("failed" if tests.returncode else "passed"), (failed[0][:160] if failed else "")


#: Compares the scratch copy's fingerprints and resolved configs with the baseline's; exit 3 on a drift (1: it crashed).
_FINGERPRINT_CHECK = """
import sys
from pathlib import Path
from benchmarks.fingerprint import fingerprints
from benchmarks.regression import compare_configs, compare_fingerprints, read_results
from benchmarks.resolved_configs import resolved_configs
from benchmarks.suite import load_suite
suite = load_suite(sys.argv[1])
baseline = read_results(Path(sys.argv[2]))
drifts = compare_fingerprints(suite, baseline, fingerprints(suite))
for item in sorted(drifts, key=lambda item: -item.drift):
    print(("regression: " + item.describe()) if item.regressed else f"unchanged: {item.name} {item.drift:.2g}")
changes = compare_configs(suite, baseline, resolved_configs())
for item in changes:
    print("regression: " + item.describe())
sys.exit(3 if changes or any(item.regressed for item in drifts) else 0)
"""


def _check_fingerprints(root: Path, suite: str, baseline: str, threads: int) -> tuple[int, str, float]:
    environment = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads)}
    started = time.monotonic()
    check = subprocess.run([sys.executable, "-c", _FINGERPRINT_CHECK, suite, baseline], cwd=root, env=environment,
                           capture_output=True, text=True)
    code = check.returncode if check.returncode in (0, 3) else -abs(check.returncode)
    return code, check.stdout + check.stderr, time.monotonic() - started


def _outcome(name: str, description: str, code: int, log: str, seconds: float, threads: int, seed_offset: int,
             mutated: bool, equivalent: str) -> Outcome:
    failures = [line.split("regression:", 1)[1].strip() for line in log.splitlines() if "regression:" in line]
    fingerprint_failures = sum(failure.startswith("fingerprint") for failure in failures)
    if code < 0:
        verdict = "crashed" if mutated else "false alarm"  # an unmutated run must not crash either
        # The error's own line (a traceback may wrap it), else the last line.
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"(error:|[\w.]*(Error|Exception): )", line)] or lines
        failures = [errors[-1][:160] if errors else f"exit {code}"]
    elif code == 0:
        verdict = "survived" if mutated else "clean"
    else:
        verdict = "killed" if mutated else "false alarm"
        if not failures:
            failures = [re.sub(r"\s+", " ", log.strip().splitlines()[-1])[:160]]
    return Outcome(name, description, verdict, len(failures) - fingerprint_failures if code > 0 else 0,
                   fingerprint_failures, failures[0] if failures else "", round(seconds, 1), threads, seed_offset,
                   equivalent)


def _table(outcomes: list[Outcome]) -> str:
    lines = ["| mutation | area | gate check | tests | first failure | s |", "| --- | --- | --- | --- | --- | --- |"]
    for item in outcomes:
        verdict = item.verdict + (f" (equivalent: {item.equivalent})" if item.equivalent else "")
        if item.verdict in ("killed", "survived"):
            verdict += f" ({item.quality_failures} metrics or configs, {item.fingerprint_failures} fingerprints)"
        lines.append(f"| {item.name} | {item.area or 'clean rerun'} | {verdict} | {item.pytest or 'not run'} | "
                     f"{item.first_failure.replace('|', '/')} | {item.seconds:.0f} |")
    mutated = [item for item in outcomes if item.verdict in ("killed", "crashed", "survived") and not item.equivalent]
    clean = [item for item in outcomes if item.verdict in ("clean", "false alarm")]
    by_check = sum(item.verdict != "survived" for item in mutated)
    by_ci = sum(item.verdict != "survived" or item.pytest == "failed" for item in mutated)
    share = f"{100 * by_check / len(mutated):.0f}%" if mutated else "-"
    lines.append("")
    lines.append(f"non-equivalent mutations: {len(mutated)}; killed by the gate's check {by_check} ({share}; "
                 f"{sum(item.quality_failures > 0 or item.verdict == 'crashed' for item in mutated)} by metrics, "
                 f"protocols, configs or a crash), by CI (check or tests) {by_ci}; false alarms "
                 f"{sum(item.verdict == 'false alarm' for item in clean)} of {len(clean)} clean reruns")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="gate", help="suite of the gate (default gate)")
    parser.add_argument("--baseline", default="results/baselines/gate.json", help="baseline, relative to the repo")
    parser.add_argument("--only", action="append", help="run only this mutation (repeatable)")
    parser.add_argument("--no-mutations", action="store_true", help="run only the clean reruns")
    parser.add_argument("--clean", type=int, default=0, help="unmutated reruns: seed offsets 100, 200, ...; "
                                                             "threads alternate 1 and 2")
    parser.add_argument("--clean-from", type=int, default=1, help="number of the first clean rerun (to continue "
                                                                   "an interrupted series)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the mutation runs (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="gate runs at once (default 1; e.g. 2 on 2 cores "
                                                               "with --threads 1)")
    parser.add_argument("--scratch", default="runs/mutations", help="where the scratch copies go")
    parser.add_argument("--json", help="also write the outcomes as JSON here")
    parser.add_argument("--fingerprints-only", action="store_true",
                        help="compare only the stored models' fingerprints (no gate run): seconds each")
    parser.add_argument("--pytest", action="store_true",
                        help="run the tests on each mutation the check did not kill (CI's other half)")
    arguments = parser.parse_args(argv)
    if arguments.clean < 0 or min(arguments.threads, arguments.workers, arguments.clean_from) < 1:
        parser.error("--clean must be at least 0; --threads, --workers and --clean-from at least 1")
    scratch = Path(arguments.scratch).resolve()
    jobs: list[tuple[str, Mutation | None, int, int]] = []
    if not arguments.no_mutations:
        jobs += [(mutation.name, mutation, arguments.threads, 0) for mutation in by_name(arguments.only)]
    jobs += [(f"clean-{number}", None, 2 - number % 2, 100 * number)
             for number in range(arguments.clean_from, arguments.clean_from + arguments.clean)]

    def gate(job: tuple[str, Mutation | None, int, int]) -> Outcome:
        name, mutation, threads, seed_offset = job
        root = _scratch_copy(scratch / name)
        if mutation is not None:
            mutation.apply(root)
        code, log, seconds = (_check_fingerprints(root, arguments.suite, arguments.baseline, threads)
                              if arguments.fingerprints_only
                              else _run_gate(root, arguments.suite, arguments.baseline, threads, seed_offset))
        (root / "gate.log").write_text(log)
        outcome = _outcome(name, mutation.description if mutation else f"unmutated, {threads} thread(s), "
                           f"seeds +{seed_offset}", code, log, seconds, threads, seed_offset, mutation is not None,
                           mutation.equivalent.get(arguments.suite, "") if mutation else "")
        if mutation is not None:
            outcome.area = mutation.area
            if arguments.pytest and outcome.verdict == "survived":
                outcome.pytest, failure = _run_tests(root)
                outcome.first_failure = outcome.first_failure or failure
        print(f"{name}: {outcome.verdict} ({outcome.quality_failures} metrics or configs, "
              f"{outcome.fingerprint_failures} fingerprints, {outcome.seconds:.0f} s) {outcome.first_failure}", flush=True)
        return outcome

    with ThreadPoolExecutor(arguments.workers) as pool:  # each gate run is its own process
        outcomes = list(pool.map(gate, jobs))
    print()
    print(_table(outcomes))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps([asdict(item) for item in outcomes], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
