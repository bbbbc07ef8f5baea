"""Where the jobs of a suite run: in this process (``local``), on SLURM through submitit, or on Ray.

A suite is cut into jobs that ``cdrl-bench run --suite S --only KEY --phase P`` would run: each
training (phase ``train``, itself a process group of ``processes_per_training`` ranks, one GPU
each) and, after it, its evaluations (phase ``eval``, one process); evaluations that need no
training (given or stored checkpoints, data floors) are jobs of their own. A :class:`SuiteJob`
carries only names and paths and rebuilds its part of the plan where it runs, through the same
code as the command line, so a job that is run twice (a requeue, a retry) skips what is done.

* ``local``: :func:`benchmarks.runner.run_plan` here; under torchrun every rank runs it.
* ``submitit``: one SLURM job per training with its evaluation job depending on it
  (``afterok``); a training job that SLURM signals before its time limit or preempts checkpoints
  (:mod:`cdrl.preemption`) and is requeued, and continues from its run folder. submitit's
  ``local`` cluster (processes on this machine) and ``debug`` cluster (in this process) run
  the same jobs without SLURM, one after another.
* ``ray``: each training through Ray Train's ``TorchTrainer`` (it places the ranks on the
  cluster's GPUs, possibly across nodes, sets up their process group and restarts failed
  workers, which continue from the last checkpoint), each evaluation as a Ray task that waits
  for its training's result. Trainings and evaluations of different models run concurrently
  as the cluster's resources allow.

Every job must see the same ``runs_dir`` and tracking store: a shared file system and an MLflow
tracking server on a cluster (SQLite must not live on NFS; see the README).
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

import typer

from cdrl.errors import CdrlBenchError

# The command line imports this module for its options (the registry at the end), so the suite machinery
# (and torch behind it) is imported where a job runs, not here.
if TYPE_CHECKING:
    from rich.console import Console

    from benchmarks.runner import Phase
    from benchmarks.suite import Plan


def _require(module: str, executor: str, extra: str) -> None:
    """Refuse, in one line saying how to install it, an executor whose optional module is missing."""
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise CdrlBenchError(f"--executor {executor} needs {module}, an optional dependency: "
                         f"pip install 'cdrl-bench[{extra}]'")


@dataclass(frozen=True)
class JobSettings:
    """What every job of one ``run --suite`` shares: the suite, its profile, and where things go."""

    suite: str
    quick: bool = False
    seeds: int | None = None
    seed_offset: int = 0
    checkpoint: str | None = None
    tracking_uri: str | None = None
    runs_dir: str = "runs"
    data_dir: str | None = None
    device: str | None = None
    threads: int | None = None

    def portable(self) -> JobSettings:
        """The same settings with every path absolute, so that a job started elsewhere finds them."""
        from cdrl.store import Store

        suite = Path(self.suite)
        uri = Store.resolve(self.tracking_uri).portable().uri
        return replace(self, suite=str(suite.absolute()) if suite.suffix == ".toml" else self.suite,
                       checkpoint=str(Path(self.checkpoint).absolute()) if self.checkpoint else None,
                       tracking_uri=uri, runs_dir=str(Path(self.runs_dir).absolute()),
                       data_dir=str(Path(self.data_dir).absolute()) if self.data_dir else None)

    def plan(self) -> Plan:
        from benchmarks.suite import expand, load_suite

        return expand(load_suite(self.suite), quick=self.quick, seeds=self.seeds, seed_offset=self.seed_offset,
                      checkpoint=self.checkpoint)


@dataclass(frozen=True)
class SuiteJob:
    """``run --suite SUITE --only ONLY --phase PHASE``, as a picklable callable; returns the keys it scored."""

    settings: JobSettings
    only: str
    phase: Phase
    #: The evaluations this job may run (its shard's part of ``only``'s); empty: all of them.
    keys: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{Path(self.settings.suite).stem}:{self.only}:{self.phase}"

    def __call__(self) -> list[str]:
        from benchmarks.runner import run_plan
        from benchmarks.suite import select
        from cdrl.performance import use_threads

        use_threads(self.settings.threads)
        plan = select(self.settings.plan(), only=self.only)
        if self.keys:
            plan = replace(plan, evaluations=tuple(job for job in plan.evaluations if job.key in self.keys))
        settings = self.settings
        summary = run_plan(plan, tracking_uri=settings.tracking_uri, runs_dir=Path(settings.runs_dir),
                           data_dir=settings.data_dir, device=settings.device, phase=self.phase)
        return summary.evaluated if summary is not None else []


@dataclass(frozen=True)
class WorkUnit:
    """A training job (None when nothing needs training) and the evaluation job that follows it."""

    training: SuiteJob | None
    evaluation: SuiteJob


def work_units(plan: Plan, settings: JobSettings, processes_per_training: int = 1) -> list[WorkUnit]:
    """The jobs of the part of ``plan`` that is not finished yet, in the plan's order.

    A training whose global batch does not split over ``processes_per_training`` is refused here,
    before any job is submitted.
    """
    from benchmarks.runner import pending_evaluations
    from cdrl.config import per_process_batch

    pending = pending_evaluations(plan, settings.tracking_uri)
    units = []
    for training in plan.trainings:
        mine = tuple(job.key for job in pending if job.training is training)
        if mine:
            per_process_batch(training.config.training.batch_size, processes_per_training)
            units.append(WorkUnit(SuiteJob(settings, training.key, "train"),
                                  SuiteJob(settings, training.key, "eval", mine)))
    # Jobs name a model; their keys keep each to this plan's part (a shard's) of that model's evaluations.
    untrained: dict[str, list[str]] = {}
    for job in pending:
        if job.training is None:
            untrained.setdefault(job.model.key, []).append(job.key)
    return [WorkUnit(None, SuiteJob(settings, model, "eval", tuple(keys))) for model, keys in untrained.items()] + units


class Executor(Protocol):
    def execute(self, plan: Plan, settings: JobSettings, console: Console) -> str:
        """Run (or submit) the unfinished part of ``plan``; returns a line saying what was done."""


@dataclass
class LocalExecutor:
    """The plan in this process (every rank of a torchrun): trainings and evaluations in turn."""

    phase: Phase = "all"

    def execute(self, plan: Plan, settings: JobSettings, console: Console) -> str:
        from benchmarks.runner import run_plan

        summary = run_plan(plan, tracking_uri=settings.tracking_uri, runs_dir=Path(settings.runs_dir),
                           data_dir=settings.data_dir, device=settings.device, console=console, phase=self.phase)
        if summary is None:  # a rank other than 0: rank 0 reports
            return ""
        elsewhere = ""
        if summary.elsewhere:
            running = len(summary.elsewhere) - len(summary.finished_elsewhere)
            elsewhere = (f", {len(summary.finished_elsewhere)} scored by another process running this suite"
                         + (f" ({running} still running there: the same command again reports them)" if running
                            else ""))
        return (f"{len(summary.trained)} trained, {len(summary.evaluated)} scored, {summary.already_finished} "
                f"already finished{elsewhere}; time: {summary.phases_line()}")


@dataclass(frozen=True)
class _SubmititTask:
    """A job as submitit runs it: a process group across its tasks, and a requeue of itself when preempted."""

    job: SuiteJob

    def __call__(self) -> list[str]:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from SLURM's (or the local cluster's) tasks;
            # every task keeps all GPUs visible and takes cuda:LOCAL_RANK (cdrl.distributed).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return self.job()

    def checkpoint(self):
        """Called by submitit when the job is preempted or near its time limit: run the same job again.

        The training has already checkpointed (cdrl.preemption); the requeued job resumes its run folder.
        """
        import submitit

        return submitit.helpers.DelayedSubmission(self)


@dataclass
class SubmititExecutor:
    """Jobs through submitit: SLURM (``cluster="slurm"``), or this machine (``local``, ``debug``)."""

    folder: Path
    cluster: Literal["slurm", "local", "debug"] = "slurm"
    processes_per_training: int = 1
    gpus_per_node: int = 8
    use_gpus: bool = True
    timeout_min: int = 24 * 60
    partition: str | None = None
    slurm_options: dict[str, str] = field(default_factory=dict)
    wait: bool = False

    def _parameters(self, job: SuiteJob, processes: int, after: str | None) -> dict:
        nodes = math.ceil(processes / self.gpus_per_node)
        tasks = math.ceil(processes / nodes)
        if nodes * tasks != processes:
            raise CdrlBenchError(f"--processes-per-training {processes} does not fill {nodes} nodes of "
                             f"{self.gpus_per_node} GPUs evenly: use a multiple of --gpus-per-node")
        extra = {**self.slurm_options, **({"dependency": f"afterok:{after}"} if after else {})}
        return dict(name=job.name, nodes=nodes, tasks_per_node=tasks, gpus_per_node=tasks if self.use_gpus else 0,
                    timeout_min=self.timeout_min, slurm_signal_delay_s=120,
                    **({"slurm_partition": self.partition} if self.partition else {}),
                    **({"slurm_additional_parameters": extra} if extra else {}))

    def execute(self, plan: Plan, settings: JobSettings, console: Console) -> str:
        _require("submitit", "submitit", "slurm")
        import submitit

        from cdrl.distributed import collective_timeout
        from cdrl.store import Store

        collective_timeout()  # a bad value stops here, not in every job (they read the same variable)
        if self.cluster == "slurm" and Store.resolve(settings.tracking_uri).database is not None:
            console.print("[yellow]warning:[/] SLURM jobs on several nodes need a shared tracking store: pass "
                          "--tracking-uri http://SERVER:5000 (an MLflow server; SQLite must not live on NFS)",
                          highlight=False, soft_wrap=True)
        executor = submitit.AutoExecutor(folder=self.folder, cluster=None if self.cluster == "slurm"
                                         else self.cluster)
        submitted = []
        for unit in work_units(plan, settings, self.processes_per_training):
            after = None
            if unit.training is not None:
                executor.update_parameters(**self._parameters(unit.training, self.processes_per_training, None))
                training = executor.submit(_SubmititTask(unit.training))
                submitted.append((unit.training, training))
                console.print(f"submitted {unit.training.name} as job {training.job_id}", highlight=False)
                if self.cluster == "slurm":
                    after = training.job_id
                else:  # submitit's local clusters know no dependencies: the evaluation waits here
                    _finished(unit.training, training)
            executor.update_parameters(**self._parameters(unit.evaluation, 1, after))
            evaluation = executor.submit(_SubmititTask(unit.evaluation))
            submitted.append((unit.evaluation, evaluation))
            console.print(f"submitted {unit.evaluation.name} as job {evaluation.job_id}"
                          + (f" (after job {after})" if after else ""), highlight=False)
            if self.cluster != "slurm":
                _finished(unit.evaluation, evaluation)
        if self.wait:
            for job, submission in submitted:
                _finished(job, submission)
        finished = self.wait or self.cluster != "slurm"
        return (f"{len(submitted)} jobs {'finished' if finished else 'submitted'} through submitit ({self.cluster}); "
                f"logs in {self.folder}")


def _finished(job: SuiteJob, submission) -> None:
    """Wait for a submitted job (every task of it); a failed one is one line naming its log."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        submission.results()
    except (FailedJobError, UncompletedJobError) as error:
        raise CdrlBenchError(f"job {job.name} ({submission.job_id}) failed: {_cause(str(error))}; its log: "
                             f"{submission.paths.stderr}") from None


def _cause(report: str) -> str:
    """The last line of the traceback in submitit's failure report (between its lines of dashes)."""
    lines = report.splitlines()
    rules = [index for index, line in enumerate(lines) if len(line.strip()) > 5 and set(line.strip()) == {"-"}]
    body = lines[rules[0] + 1:rules[1]] if len(rules) >= 2 else lines
    return next((line.strip() for line in reversed(body) if line.strip()), "see its log")


def _fit_training(job: SuiteJob, processes: int, use_gpus: bool, storage: str, max_failures: int,
                  timeout_s: int) -> str:
    """One training through Ray Train: ``processes`` workers in one process group, restarted on failure.

    Ray Train starts the process group, with ``timeout_s``: the timeout torchrun's groups get
    (:func:`cdrl.distributed.collective_timeout`).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(_train_worker, train_loop_config={"job": job},
                           torch_config=TorchConfig(timeout_s=timeout_s),
                           scaling_config=ScalingConfig(num_workers=processes, use_gpu=use_gpus),
                           run_config=RunConfig(name=job.name.replace(":", "_").replace("/", "_"),
                                                storage_path=storage,
                                                failure_config=FailureConfig(max_failures=max_failures)))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return job.only


def _train_worker(config: dict) -> None:
    # Ray Train has set RANK, WORLD_SIZE, LOCAL_RANK and started the process group: the job joins it.
    config["job"]()


def _evaluate(job: SuiteJob, trained: str | None) -> list[str]:
    """An evaluation job; ``trained`` is its training's result, which Ray waits for before starting it."""
    return job()


@dataclass
class RayExecutor:
    """Jobs on a Ray cluster: ``address`` "local" starts one on this machine, else it is Ray's address."""

    address: str = "local"
    processes_per_training: int = 1
    use_gpus: bool = True
    max_failures: int = 2

    def execute(self, plan: Plan, settings: JobSettings, console: Console) -> str:
        _require("ray.train", "ray", "ray")
        import ray

        from cdrl.distributed import collective_timeout

        units = work_units(plan, settings, self.processes_per_training)
        timeout_s = math.ceil(collective_timeout().total_seconds())
        # ray.init takes over SIGTERM and friends in this process; they are given back after ray.shutdown.
        handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        # Trainings queue for the cluster's GPUs (or an autoscaler's nodes) as long as they need to, instead of
        # failing after Ray Train's default minute of waiting for their workers.
        ray.init(address=self.address, include_dashboard=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(7 * 24 * 3600)}})
        try:
            fit = ray.remote(num_cpus=0)(_fit_training)  # a driver for TorchTrainer: its workers hold the resources
            evaluate = ray.remote(num_cpus=1, num_gpus=1 if self.use_gpus else 0)(_evaluate)
            storage = str(Path(settings.runs_dir) / "ray")
            pending = []
            for unit in units:
                trained = (fit.remote(unit.training, self.processes_per_training, self.use_gpus, storage,
                                      self.max_failures, timeout_s) if unit.training is not None else None)
                pending.append(evaluate.remote(unit.evaluation, trained))
            scored = sum(len(keys) for keys in ray.get(pending))
        finally:
            ray.shutdown()
            for number, handler in handlers.items():
                signal.signal(number, handler)
        trainings = sum(unit.training is not None for unit in units)
        return f"{trainings} trained and {scored} scored through Ray ({self.address})"


# --------------------------------------------------------------------------- the registry

#: An executor's command-line option: its type and the typer.Option that declares it (``run`` offers them all).
Option = tuple[Any, Any]

_PROCESSES_PER_TRAINING: Option = (int, typer.Option(1, "--processes-per-training", min=1, max=4096,
                                                     help="submitit/ray: ranks of each training, one GPU each."))


@dataclass(frozen=True)
class ExecutorKind:
    """One way of running a suite's jobs, as ``run --executor NAME`` offers it."""

    name: str
    #: What ``--executor``'s help says of it.
    summary: str
    #: Its options on the command line, by parameter name.
    options: dict[str, Option]
    #: The executor from the parsed options and the run's settings (which it may make portable).
    build: Callable[[dict[str, Any], JobSettings], tuple[Executor, JobSettings]]
    #: Said when an option of another executor is given with this one.
    instead: str = ""


def _local(options: dict[str, Any], settings: JobSettings) -> tuple[Executor, JobSettings]:
    return LocalExecutor(options["phase"]), settings


def _submitit(options: dict[str, Any], settings: JobSettings) -> tuple[Executor, JobSettings]:
    from cdrl.files import check_writable
    from cdrl.typed import key_values

    check_writable(options["jobs_dir"], "--jobs-dir", folder=True)
    sbatch = dict(key_values(options["slurm_options"], "--slurm-option", "account=abc"))
    executor = SubmititExecutor(Path(options["jobs_dir"]).absolute(), options["cluster"],
                                options["processes_per_training"], options["gpus_per_node"], settings.device != "cpu",
                                options["time_limit"], options["partition"], sbatch, options["wait"])
    return executor, settings.portable()


def _ray(options: dict[str, Any], settings: JobSettings) -> tuple[Executor, JobSettings]:
    executor = RayExecutor(options["ray_address"], options["processes_per_training"], settings.device != "cpu")
    return executor, settings.portable()


#: Every executor by name; adding one is its class above and an entry here.
EXECUTORS: dict[str, ExecutorKind] = {kind.name: kind for kind in (
    ExecutorKind("local", "here (under torchrun: every rank)", {
        "phase": (Literal["all", "train", "eval"], typer.Option(
            "all", "--phase", help="local: only the trainings, or only the evaluations (of finished trainings), of "
                                   "the suite.")),
    }, _local, instead="here, start a training's ranks with torchrun --nproc_per_node N"),
    ExecutorKind("submitit", "as SLURM jobs through submitit", {
        "processes_per_training": _PROCESSES_PER_TRAINING,
        "cluster": (Literal["slurm", "local", "debug"], typer.Option(
            "slurm", "--cluster", help="submitit: SLURM, or this machine's processes (local) or this process "
                                       "(debug).")),
        "jobs_dir": (Path, typer.Option(Path("runs/jobs"), "--jobs-dir",
                                        help="submitit: where job scripts and logs go.")),
        "partition": (str, typer.Option(None, "--partition", help="submitit: the SLURM partition.")),
        "time_limit": (int, typer.Option(24 * 60, "--time-limit", min=1, max=525_600, help="submitit: minutes per "
                                         "job; trainings checkpoint and requeue at the limit.")),
        "gpus_per_node": (int, typer.Option(8, "--gpus-per-node", min=1, max=1024, help="submitit: GPUs per node (a "
                                            "training spans ceil(ranks/this) nodes).")),
        "slurm_options": (list[str], typer.Option([], "--slurm-option", help="submitit: an sbatch option key=value, "
                                                  "e.g. account=abc or qos=high (repeatable).")),
        "wait": (bool, typer.Option(False, "--wait", help="submitit on SLURM: wait for the jobs to finish.")),
    }, _submitit, instead="submitit schedules each training's phases itself"),
    ExecutorKind("ray", "on a Ray cluster", {
        "processes_per_training": _PROCESSES_PER_TRAINING,
        "ray_address": (str, typer.Option("local", "--ray-address", help="ray: a cluster's address (auto, "
                                          "ray://HOST:10001), or local to start one here.")),
    }, _ray, instead="Ray schedules each training's phases itself"),
)}


def executor_options() -> dict[str, Option]:
    """Every executor's options by parameter name, once each (an option two executors share is one option)."""
    return {name: option for kind in EXECUTORS.values() for name, option in kind.options.items()}


def build_executor(name: str, options: dict[str, Any], settings: JobSettings) -> tuple[Executor, JobSettings]:
    """Executor ``name`` from ``run``'s parsed executor options; an option of another executor that is given (not
    its default) is refused in one line naming the executors it is for."""
    kind = EXECUTORS[name]
    for parameter, (_, option) in executor_options().items():
        if parameter not in kind.options and options[parameter] != option.default:
            owners = " or ".join(other.name for other in EXECUTORS.values() if parameter in other.options)
            raise CdrlBenchError(f"{option.param_decls[0]} is for --executor {owners}: {kind.instead}")
    return kind.build(options, settings)
