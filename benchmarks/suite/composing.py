"""Composing a suite model's config: preset -> suite and profile overrides -> method -> ablations -> model
overrides -> budget; and how two configs differ in what defines a trained model."""

from __future__ import annotations

from typing import Any

from baselines import ablation_overrides, apply_method
from benchmarks.suite.schema import ModelSpec, Suite, SuiteError
from cdrl.config import ExperimentConfig, apply_overrides, preset


def base_config(suite: Suite, model: ModelSpec, profile: str) -> ExperimentConfig:
    """The model's preset with the suite's and the profile's overrides: what its method and ablations change."""
    return apply_overrides(preset(model.preset), [*suite.train.overrides, *suite.profiles[profile].overrides])


def model_config(suite: Suite, model: ModelSpec, profile: str, seed: int) -> ExperimentConfig:
    """base_config -> method -> ablations -> model overrides -> global batch, selection, budget, seed."""
    settings = suite.profiles[profile]
    config = apply_method(base_config(suite, model, profile), model.method)
    config = apply_overrides(config, [*ablation_overrides(model.ablations), *model.overrides])
    budget = [f"training.seed={seed}"]
    if model.global_batch or suite.train.global_batch:
        budget.append(f"training.batch_size={model.global_batch or suite.train.global_batch}")
    if settings.iterations is not None:
        budget.append(f"training.iterations={settings.iterations}")
    if settings.select_every is not None:
        budget.append(f"run.select_every={settings.select_every}")
    if settings.select_samples is not None:
        budget.append(f"run.select_samples={settings.select_samples}")
    if model.checkpoint_selection == "last":
        budget.append("run.select_every=0")
    return apply_overrides(config, budget)


def split_differences(differences: list[tuple[str, str, str]]
                      ) -> tuple[list[tuple[str, str, str]], tuple[str, ...]]:
    """``differences`` (:func:`model_differences`) as (those a training would have to make, the
    ``sampler.*`` overrides that give a trained model the rest of the wanted config)."""
    trained = [difference for difference in differences if not difference[0].startswith("sampler.")]
    return trained, tuple(f"{key}={wanted}" for key, wanted, _ in differences if key.startswith("sampler."))


def scoring_sampler_overrides(suite: Suite, model: ModelSpec, profile: str) -> tuple[str, ...]:
    """How a model with ``scores`` samples the trainings it scores: the ``sampler.*`` settings in
    which its config (preset, method, ablations, overrides) differs from the scored model's."""
    target = next(other for other in suite.models if other.key == model.scores)
    trained, overrides = split_differences(model_differences(model_config(suite, model, profile, seed=0),
                                                             model_config(suite, target, profile, seed=0)))
    if trained:
        raise SuiteError(f"model {model.key!r} scores {model.scores!r} but would train differently "
                         f"({', '.join(_wanted(trained))}): a model that scores another may change only sampler.* "
                         "settings; drop scores to train it, or the training settings to score that model")
    return overrides


def config_delta(suite: Suite, model: ModelSpec, profile: str = "full") -> list[str]:
    """``key=value`` of every setting the model's method, ablations and overrides change from its base config."""
    base = base_config(suite, model, profile)
    changed = apply_overrides(apply_method(base, model.method), [*ablation_overrides(model.ablations),
                                                                 *model.overrides]).flat()
    before = base.flat()
    return [f"{key}={value}" for key, value in changed.items() if before.get(key) != value]


#: Settings that do not define a trained model: ``--from-checkpoint`` evaluates a model from a
#: checkpoint when their configs agree on every other setting. Left out: the preset's description;
#: the run's cadences and checkpoint selection (``run.*``); its budget and scale
#: (``training.iterations``: a checkpoint of any iteration; ``training.batch_size``: the global
#: batch, which the plan shows from the checkpoint); its seed (``training.seed``); where the data
#: files are (``data.data_dir``, ``data.download``); and the speed options (``performance.*``).
#: Compared: the preset (``name``), the method, the networks, schedule, Langevin, training
#: recipe and data, and ``sampler.*``, since a checkpoint is sampled with its own sampler settings.
NOT_MODEL_SETTINGS = ("description", "run.", "performance.", "training.iterations", "training.batch_size",
                      "training.seed", "data.data_dir", "data.download")


def defines_model(setting: str) -> bool:
    """Whether ``setting`` (a flat config key) is part of what a trained model is (:data:`NOT_MODEL_SETTINGS`)."""
    return not any(setting == other or (other.endswith(".") and setting.startswith(other))
                   for other in NOT_MODEL_SETTINGS)


def _setting_text(value: Any) -> str:
    """A config value as an override writes it: ``false``, ``none``, ``0.9,0.999``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(_setting_text, value))
    return str(value)


def model_differences(wanted: ExperimentConfig, saved: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(setting, wanted value, saved value) of every setting defining a model where the two configs differ.

    The preset comes first (as ``preset``), then the method, then the rest in config order.
    """
    mine, theirs = wanted.flat(), saved.flat()
    settings = [key for key in dict.fromkeys([*mine, *theirs]) if defines_model(key)]
    settings.sort(key=lambda key: (key != "name", key != "training.method"))
    return [("preset" if key == "name" else key, _setting_text(mine.get(key)), _setting_text(theirs.get(key)))
            for key in settings if mine.get(key) != theirs.get(key)]


def mismatch(differences: list[tuple[str, str, str]], shown: int = 3) -> str:
    """"needs training.variance_reduction=false; the checkpoint has true" (the first few, and how many more)."""
    first = differences[:shown]
    more = f" and {len(differences) - shown} more setting{'s' if len(differences) > shown + 1 else ''}" \
        if len(differences) > shown else ""
    return f"needs {', '.join(_wanted(first))}{more}; the checkpoint has {', '.join(saved for _, _, saved in first)}"


def _wanted(differences: list[tuple[str, str, str]]) -> list[str]:
    """"energy.width=128", or "preset cifar10": each difference's wanted value."""
    return [f"{key}={value}" if key != "preset" else f"preset {value}" for key, value, _ in differences]
