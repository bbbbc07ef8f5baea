"""Pricing a plan: seconds per training iteration measured by finished runs in an MLflow store, else
stated in the suite's ``[cost]``, turned into GPU-hours (CPU-hours for a CPU suite)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from benchmarks.suite.planning import Plan
from benchmarks.suite.schema import SuiteError
from cdrl.config import ExperimentConfig

#: Settings that set what one training iteration costs, besides the preset and each process's batch
#: (which the cost is scaled by): a finished training run measures a planned training's speed when
#: it trained the same preset and agrees on all of them (performance.threads aside: a machine's
#: setting, like its device). Learning rates, loss weights and the like change no arithmetic.
COST_SETTINGS = ("training.method", "langevin.n_steps", "energy.", "initializer.", "data.dataset",
                 "data.image_size", "data.channels", "performance.")

#: Metric a training logs at every run.log_every iterations (cdrl.train_loop).
SPEED_METRIC = "iterations_per_second"


def _sets_cost(setting: str) -> bool:
    return setting != "performance.threads" and any(
        setting == other or (other.endswith(".") and setting.startswith(other)) for other in COST_SETTINGS)


@dataclass(frozen=True)
class MeasuredRun:
    """The speed of one finished training run, and what it trained where."""

    run_id: str
    preset: str
    device: str
    world_size: int
    per_process_batch: int
    #: Wall seconds per iteration: the mean of 1 / iterations_per_second over its logged intervals
    #: (run.log_every iterations each), so checkpoints, sample grids and selection scores count.
    seconds_per_iteration: float
    #: Its params (the flat config) as MLflow keeps them: str() of each value.
    params: dict[str, str] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        """Seconds per iteration per image of one process's batch: what scales to another batch or GPU count."""
        return self.seconds_per_iteration / self.per_process_batch

    def measures(self, config: ExperimentConfig) -> bool:
        """Whether this run trained what ``config`` trains, as far as the cost of an iteration goes."""
        return self.preset == config.name and all(
            self.params.get(key, str(value)) == str(value) for key, value in config.flat().items() if _sets_cost(key))


def measured_runs(tracking_uri: str | None, configs: Sequence[ExperimentConfig]) -> list[MeasuredRun]:
    """FINISHED training runs (tag ``cdrl.kind=train``), in every experiment of the store, that measure one of ``configs``.

    Runs that logged no ``iterations_per_second`` are left out. A SQLite store that does not
    exist holds none (and is not created).
    """
    from cdrl.search_filter import tag_clause
    from cdrl.store import Store, open_store
    from cdrl.tags import TAG_DEVICE, TAG_KIND, TAG_PER_PROCESS_BATCH, TAG_PRESET, TAG_WORLD_SIZE

    store = Store.resolve(tracking_uri)
    if not configs or not store.exists():
        return []
    client, _ = open_store(store)
    experiments, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        experiments += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            break
    found = []
    for name in sorted({config.name for config in configs}):
        query = " AND ".join([tag_clause(TAG_KIND, "train"), tag_clause(TAG_PRESET, name),
                              "attributes.status = 'FINISHED'"])
        token = None
        while experiments:
            page = client.search_runs(experiments, query, page_token=token)
            for run in page:
                tags, params = run.data.tags, run.data.params
                try:
                    world_size = int(tags.get(TAG_WORLD_SIZE, "1"))
                    batch = tags.get(TAG_PER_PROCESS_BATCH)
                    per_process = int(batch) if batch else int(params.get("training.batch_size", "0")) // world_size
                except (ValueError, ZeroDivisionError):  # not written by cdrl-bench's training
                    continue
                candidate = MeasuredRun(run.info.run_id, name, tags.get(TAG_DEVICE, "an unnamed device"),
                                        world_size, per_process, math.nan, params)
                if per_process < 1 or not any(candidate.measures(config) for config in configs):
                    continue
                rates = [metric.value for metric in client.get_metric_history(run.info.run_id, SPEED_METRIC)
                         if metric.value > 0 and math.isfinite(metric.value)]
                if rates:
                    found.append(replace(candidate, seconds_per_iteration=statistics.fmean(1 / r for r in rates)))
            token = page.token
            if not token:
                break
    return found


@dataclass(frozen=True)
class TrainingCost:
    """What one training of a plan costs: seconds per iteration x iterations x GPUs / 3600 GPU-hours."""

    key: str
    iterations: int
    #: Wall seconds per iteration on ``gpus`` GPUs; None: unknown.
    seconds_per_iteration: float | None
    gpus: int
    #: "given" (--seconds-per-iteration), "measured", "stated" (the suite file) or "unknown".
    kind: str
    #: Where the seconds come from, for people: "measured: 3 runs on NVIDIA H100 80GB HBM3".
    source: str
    #: Seconds of CPU processes rather than of GPUs (a CPU suite's stated cost, or runs measured on a CPU).
    on_cpu: bool = False

    @property
    def gpu_hours(self) -> float | None:
        if self.seconds_per_iteration is None:
            return None
        return self.seconds_per_iteration * self.iterations * self.gpus / 3600

    @property
    def wall_hours(self) -> float | None:
        return None if self.seconds_per_iteration is None else self.seconds_per_iteration * self.iterations / 3600


def _count_list(values: Sequence[float]) -> str:
    return "/".join(f"{value:g}" for value in sorted(set(values)))


def training_costs(plan: Plan, *, runs: Sequence[MeasuredRun] = (), seconds_per_iteration: float | None = None,
                   gpus: int | None = None) -> list[TrainingCost]:
    """The cost of every training of ``plan`` in GPU-hours (seconds/iteration x iterations x GPUs / 3600).

    Seconds per iteration, first that applies: ``seconds_per_iteration`` (given, on ``gpus`` GPUs,
    default the suite's ``[cost] gpus``); measured by those of ``runs`` that trained the same
    preset with the same :data:`COST_SETTINGS` (the runs of one device, a GPU before a CPU, the
    most runs first; the median of their seconds per image of one process's batch); stated by the
    model or the suite's ``[cost]``; else unknown. Measured and stated seconds are scaled to
    ``gpus`` GPUs (default: the measured runs' world size, or ``[cost] gpus``) by each GPU's share
    of the global batch: time per iteration proportional to it, communication not counted.
    """
    if gpus is not None and gpus < 1:
        raise SuiteError(f"--gpus must be at least 1, got {gpus}")
    if seconds_per_iteration is not None and not (math.isfinite(seconds_per_iteration) and seconds_per_iteration > 0):
        raise SuiteError(f"--seconds-per-iteration must be a positive number, got {seconds_per_iteration}")
    stated_cost = plan.suite.cost
    costs = []
    for job in plan.trainings:
        batch, iterations = job.config.training.batch_size, job.config.training.iterations
        stated = job.model.seconds_per_iteration or stated_cost.seconds_per_iteration
        mine = [run for run in runs if run.measures(job.config)]
        if seconds_per_iteration is not None:
            count = gpus or stated_cost.gpus
            costs.append(TrainingCost(job.key, iterations, seconds_per_iteration, count, "given",
                                      "given: --seconds-per-iteration"))
        elif mine:
            by_device: dict[str, list[MeasuredRun]] = {}
            for run in mine:
                by_device.setdefault(run.device, []).append(run)
            device, chosen = max(by_device.items(),
                                 key=lambda item: (item[0].lower() != "cpu", len(item[1]), item[0]))
            count = gpus or statistics.mode(run.world_size for run in chosen)
            share = batch / count
            batches = [run.per_process_batch for run in chosen]
            scaled = (f", scaled from {_count_list(batches)} to {share:g} images per GPU"
                      if set(batches) != {share} else "")
            seconds = statistics.median(run.seconds_per_image for run in chosen) * share
            costs.append(TrainingCost(job.key, iterations, seconds, count, "measured",
                                      f"measured: {len(chosen)} run{'s' if len(chosen) > 1 else ''} on {device}"
                                      f"{scaled}", on_cpu=device.lower() == "cpu"))
        elif stated is not None:
            count = gpus or stated_cost.gpus
            about = ", ".join(part for part in (stated_cost.device, stated_cost.basis) if part)
            scaled = f", scaled from {stated_cost.gpus} to {count} GPUs" if count != stated_cost.gpus else ""
            costs.append(TrainingCost(job.key, iterations, stated * stated_cost.gpus / count, count, "stated",
                                      f"stated{': ' + about if about else ''}{scaled}", on_cpu=stated_cost.on_cpu))
        else:
            costs.append(TrainingCost(job.key, iterations, None, gpus or stated_cost.gpus, "unknown",
                                      "unknown: pass --seconds-per-iteration S"))
    return costs


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def cost_units(costs: Sequence[TrainingCost]) -> tuple[str, str]:
    """What the costs count: ("GPUs", "GPU-hours"), or for trainings all on CPUs ("processes", "CPU-hours")."""
    return ("processes", "CPU-hours") if costs and all(cost.on_cpu for cost in costs) else ("GPUs", "GPU-hours")


def cost_rows(costs: Sequence[TrainingCost]) -> list[dict[str, str]]:
    """One row per training: what ``cdrl-bench plan`` prints under the plan."""
    count, hours = cost_units(costs)
    return [{"run": cost.key, "iterations": f"{cost.iterations:,}",
             "s/iteration": "?" if cost.seconds_per_iteration is None else f"{cost.seconds_per_iteration:.3g}",
             count: str(cost.gpus), hours: "?" if cost.gpu_hours is None else _hours(cost.gpu_hours),
             "seconds from": cost.source} for cost in costs]


def cost_total(costs: Sequence[TrainingCost]) -> str:
    """The total line: GPU-hours of every training whose cost is known, by source, and the longest one's wall time."""
    if not costs:
        return "total: no trainings (stored checkpoints and data only)"
    known = [cost for cost in costs if cost.gpu_hours is not None]
    kinds = {kind: sum(cost.kind == kind for cost in costs) for kind in ("given", "measured", "stated", "unknown")}
    count, hours = cost_units(costs)
    line = (f"total: {_hours(sum(cost.gpu_hours for cost in known))} {hours} for {len(known)} of {len(costs)} "
            f"trainings ({', '.join(f'{number} {kind}' for kind, number in kinds.items() if number)})")
    if known:
        longest = max(known, key=lambda cost: cost.wall_hours)
        one = {"GPUs": "GPU", "processes": "process"}[count]
        line += (f"; the longest, {longest.key}, {_hours(longest.wall_hours)} h on {longest.gpus} "
                 f"{count if longest.gpus > 1 else one}")
    if len(known) < len(costs):
        line += f"; {len(costs) - len(known)} unknown: pass --seconds-per-iteration S"
    return line


def cost_table(costs: Sequence[TrainingCost]):
    """:func:`cost_rows` as the table ``cdrl-bench plan`` prints under the plan."""
    from rich.table import Table

    count, hours = cost_units(costs)
    priced = Table(title=f"cost: s/iteration x iterations x {count} / 3600 = {hours}")
    rows = cost_rows(costs)
    for column in rows[0]:
        priced.add_column(column, overflow="fold", no_wrap=column not in ("run", "seconds from"),
                          justify="left" if column in ("run", "seconds from") else "right")
    for row in rows:
        priced.add_row(*row.values())
    return priced


def plan_document(plan: Plan, world_size: int, rows: list[dict], costs: Sequence[TrainingCost]) -> dict:
    """``cdrl-bench plan --format json``: the plan's rows, each training's cost and the total."""
    known = [cost.gpu_hours for cost in costs if cost.gpu_hours is not None]
    return {"suite": plan.suite.name, "version": plan.suite.version, "profile": plan.profile,
            "processes_per_training": world_size, "rows": rows,
            "costs": [{**asdict(cost), "gpu_hours": cost.gpu_hours} for cost in costs],
            "total_gpu_hours": sum(known), "unknown": len(costs) - len(known), "total": cost_total(costs)}
