"""Benchmark suites: versioned, declarative TOML files under ``benchmarks/suites/``, expanded into runs.

A suite names the models to train (a preset, a method, ablations and overrides), where to
evaluate each (Langevin steps per level, guidance weights), the seeds and sample counts of
its two profiles (``full`` and ``quick``), the metrics of its table, the paper's table it
is compared with (a CSV of ``results/paper/``) and, for CI, the tolerances of its regression
check. ``benchmarks/suites/README.md`` describes every key.

One module per concern, this package's face re-exporting what the rest of the project uses:
:mod:`~benchmarks.suite.schema` (what a suite is), :mod:`~benchmarks.suite.reading` (file to
:class:`Suite`, validated), :mod:`~benchmarks.suite.composing` (each model's config),
:mod:`~benchmarks.suite.planning` (a :class:`Plan` of trainings and evaluations, ``--only``,
``--shard``) and :mod:`~benchmarks.suite.cost` (GPU-hours).
"""

from benchmarks.suite.composing import (NOT_MODEL_SETTINGS, base_config, config_delta, defines_model, model_config,
                                        model_differences, scoring_sampler_overrides, split_differences)
from benchmarks.suite.cost import (COST_SETTINGS, SPEED_METRIC, MeasuredRun, TrainingCost, cost_rows, cost_table,
                                   cost_total, cost_units, measured_runs, plan_document, training_costs)
from benchmarks.suite.planning import (EvalJob, EvalPoint, Plan, TrainingJob, checkpoint_source, eval_steps, expand,
                                       parse_shard, plan_rows, plan_table, select, selection_rule)
from benchmarks.suite.reading import available_suites, load_suite, suite_listing, suite_path, suites_table
from benchmarks.suite.schema import (PAPER_FOLDER, PROFILES, REPO_FOLDER, SUITES_FOLDER, CheckSpec, CostSpec,
                                     EvalSection, ModelSpec, PlotSpec, Profile, Suite, SuiteError, TrainSection,
                                     is_safe_name, results_path)

__all__ = ["NOT_MODEL_SETTINGS", "base_config", "config_delta", "defines_model", "model_config", "model_differences",
           "scoring_sampler_overrides", "split_differences", "COST_SETTINGS", "SPEED_METRIC", "MeasuredRun",
           "TrainingCost", "cost_rows", "cost_table", "cost_total", "cost_units", "measured_runs", "plan_document",
           "training_costs", "EvalJob", "EvalPoint", "Plan", "TrainingJob", "checkpoint_source", "eval_steps",
           "expand", "parse_shard", "plan_rows", "plan_table", "select", "selection_rule", "available_suites",
           "load_suite", "suite_path", "suite_listing", "suites_table", "PAPER_FOLDER", "PROFILES", "REPO_FOLDER", "SUITES_FOLDER", "CheckSpec",
           "CostSpec", "EvalSection", "ModelSpec", "PlotSpec", "Profile", "Suite", "SuiteError", "TrainSection",
           "is_safe_name", "results_path"]
