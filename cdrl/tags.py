"""Every MLflow tag cdrl-bench writes or searches for: the one vocabulary of its runs.

Commands filter on these (``cdrl-bench table`` finds a suite's evaluations by suite, version,
profile and kind), so each name is spelled here once and imported everywhere else.
"""

# What a run is and what it trained.
TAG_KIND = "cdrl.kind"  # "train" or "eval"
TAG_PRESET = "cdrl.preset"
TAG_METHOD = "cdrl.method"  # "cdrl" | "drl" ("data" for a floor row)
#: training.batch_size (the global batch) and each process's share of it.
TAG_GLOBAL_BATCH = "cdrl.global_batch"
TAG_PER_PROCESS_BATCH = "cdrl.per_process_batch"

# Where and how a training ran (cdrl.train_loop).
TAG_CHECKPOINT_DIR = "cdrl.checkpoint_dir"
TAG_VERSION = "cdrl.version"
TAG_TORCH_VERSION = "cdrl.torch_version"
TAG_PYTHON_VERSION = "cdrl.python_version"
TAG_WORLD_SIZE = "cdrl.world_size"
TAG_DEVICE = "cdrl.device"
TAG_SELECTION = "cdrl.selection"
TAG_BEST_CHECKPOINT = "cdrl.best_checkpoint"
TAG_BEST_ITERATION = "cdrl.best_iteration"
#: Followed by the selection metric's name: the best checkpoint's score (cdrl.best_fid).
TAG_BEST_PREFIX = "cdrl.best_"
TAG_LAST_CHECKPOINT = "cdrl.last_checkpoint"
TAG_PREEMPTED = "cdrl.preempted"
TAG_ROLLBACKS = "cdrl.rollbacks"
TAG_DIVERGED = "cdrl.diverged"

# The process that last opened a run, and why a run ended KILLED (cdrl.tracking's crash safety).
TAG_HOST = "cdrl.host"
TAG_PID = "cdrl.pid"
TAG_KILLED = "cdrl.killed"

# A suite's runs (benchmarks.runner); evaluations also carry the point they score.
TAG_SUITE = "cdrl.suite"
TAG_SUITE_VERSION = "cdrl.suite_version"
TAG_PROFILE = "cdrl.profile"  # "full" | "quick"
TAG_RUN_KEY = "cdrl.run_key"
TAG_MODEL = "cdrl.model"
TAG_SEED = "cdrl.seed"
TAG_SOURCE = "cdrl.source"  # "trained", "checkpoint-<sha256 prefix>" or "data"
TAG_STEPS = "cdrl.steps_per_level"
TAG_GUIDANCE = "cdrl.guidance"
#: A gate model's training run (tools.gate_models).
TAG_GATE_MODEL = "cdrl.gate_model"

# MLflow's own tags.
#: Nesting a run under another (a suite's evaluation under its training).
TAG_PARENT_RUN = "mlflow.parentRunId"
#: The description of an experiment (or a run), shown above its runs.
TAG_DESCRIPTION = "mlflow.note.content"
#: MLflow 3's kind of an experiment: unset, its UI guesses, and opened runs without logged models in its GenAI
#: (traces) view; "custom_model_development" is its classic view of training runs, metrics and artifacts (MLflow
#: 3.17's UI lets its own GenAI / Model training switch, where shown, take precedence: README).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
