"""Typed experiment configuration, the paper's presets, and ``key=value`` overrides.

An :class:`ExperimentConfig` is everything needed to train and sample one model; it is saved
with every run and checkpoint (``to_dict``/``from_dict``) so a run can be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from cdrl.datasets import DataConfig, dataset_info
from cdrl.errors import CdrlBenchError
from cdrl.langevin import LangevinConfig
from cdrl.networks import EnergyNetConfig, InitializerConfig, build_energy_net, build_initializer, count_parameters
from cdrl.performance import PerformanceConfig
from cdrl.sampler import SamplerConfig
from cdrl.schedule import ScheduleConfig, ddpm_read_steps
from cdrl.typed import FieldError, above, at_least, bounds, build, check_field, check_tree, parse


class ConfigError(CdrlBenchError):
    """A configuration value or override that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class TrainingConfig:
    #: "cdrl": initializer + short Langevin (cooperative); "drl": chains start at x_t, no initializer.
    method: Literal["cdrl", "drl"] = "cdrl"
    iterations: int = field(default=500_000, metadata=at_least(1))
    #: The global batch: each of N processes trains on batch_size / N examples (the paper: 8 GPUs x 32 = 256).
    batch_size: int = field(default=256, metadata=at_least(1))
    ebm_lr: float = field(default=1e-4, metadata=at_least(0))
    initializer_lr: float = field(default=1e-5, metadata=at_least(0))
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=bounds(at_least=0, below=1))
    initializer_weight_decay: float = field(default=0.0, metadata=at_least(0))
    #: Largest gradient norm of each network; None: no clipping (DRL).
    grad_clip: float | None = field(default=1.0, metadata=above(0))
    ema_decay: float = field(default=0.9999, metadata=bounds(at_least=0, below=1))
    #: torch_ema's decay warm-up min(decay, (1 + n) / (10 + n)), as published.
    ema_warmup: bool = True
    warmup_iterations: int = field(default=10_000, metadata=at_least(0))
    #: The initializer's linear warm-up starts this many iterations ahead (published: 500).
    initializer_warmup_lead: int = field(default=500, metadata=at_least(0))
    #: x_t and x_s from the same noise (published); off: x_s ~ q(x_s | x_t, x).
    variance_reduction: bool = True
    #: Weight the EBM loss at each level by sigma_1 / sqrt(beta) (published).
    loss_weighting: bool = True
    #: Add sqrt(beta_tilde r_mul) noise to the initializer's proposal (published).
    initializer_noise: bool = True
    #: Conditional models: probability of replacing the label by the null class 0.
    label_dropout: float = field(default=0.1, metadata=bounds(at_least=0, at_most=1))
    #: Seeds torch's generators, which take 64-bit unsigned seeds.
    seed: int = field(default=0, metadata=bounds(at_least=0, below=2**63))



def per_process_batch(global_batch: int, world_size: int) -> int:
    """Each process's share of the global batch ``training.batch_size``; it must divide evenly."""
    if global_batch < world_size or global_batch % world_size:
        raise ConfigError(f"training.batch_size={global_batch} (the global batch) does not split evenly over "
                          f"{world_size} processes: run a number of processes that divides it, or set "
                          f"training.batch_size to a multiple of {world_size}")
    return global_batch // world_size


@dataclass(frozen=True)
class RunConfig:
    """Cadences and policies of a training run (``cdrl.train_loop``); none changes the model."""

    #: Log losses and energies to MLflow at every this many iterations.
    log_every: int = field(default=10, metadata=at_least(1))
    #: Send buffered metrics to the tracking store at least this often (seconds), and at every checkpoint.
    flush_seconds: float = field(default=30.0, metadata=at_least(0))
    #: Draw a sample grid (images) or scatter plot (2-D toy) under EMA weights every this many iterations.
    sample_every: int = field(default=5000, metadata=at_least(1))
    #: Samples per grid; 2-D toy presets also report the in-support fraction of these.
    n_samples: int = field(default=64, metadata=at_least(1))
    checkpoint_every: int = field(default=5000, metadata=at_least(1))
    #: Keep only the newest this many checkpoints of the run.
    keep_checkpoints: int = field(default=3, metadata=at_least(1))
    #: A divergence (below: divergence_bound): "rollback" reloads the newest healthy checkpoint with lower
    #: learning rates; "stop" ends the run.
    on_divergence: Literal["rollback", "stop"] = "rollback"
    #: Learning rates are multiplied by this at each rollback.
    rollback_lr_factor: float = field(default=0.5, metadata=bounds(above=0, below=1))
    #: Stop after this many rollbacks in one run.
    max_rollbacks: int = field(default=3, metadata=at_least(0))
    #: Score EMA samples every this many iterations (and at the last) and keep the best-scoring
    #: checkpoint as checkpoints/best.pt, as the published code does (FID every 20k iterations); 0: off.
    select_every: int = field(default=0, metadata=at_least(0))
    #: Samples per selection score; FID's reference is the first this many training images. FID needs
    #: a covariance and the energy distance pairs of distinct samples: one sample scores nothing.
    select_samples: int = field(default=5000, metadata=at_least(2))
    #: The selection score: "auto" is fid for images (kid_mean the alternative) and the exact
    #: energy_distance for 2-D toy presets. Only lower-is-better metrics (their directions are in
    #: cdrl.metrics.METRICS), so the best is always the smallest; in_support_fraction is left out:
    #: it saturates at 1, where it cannot tell checkpoints apart.
    select_metric: Literal["auto", "fid", "kid_mean", "energy_distance"] = "auto"
    #: Divergence: a non-finite |loss|, |energy| or initializer loss, or one above this bound, is a
    #: divergence (run.on_divergence), and a checkpoint whose weights or EMA weights are non-finite or
    #: exceed it in magnitude is never rolled back to. Healthy training stays orders of magnitude
    #: below (measured peaks: tiny 15 in 200 iterations, toy-checkerboard 2.6 in 300, cifar10 and
    #: imagenet32-cond at initialisation ~900, the initializer loss, a sum over 3,072 pixels; weights
    #: ~1, spectrally normalised), while a blow-up passes it within a few iterations (tiny at
    #: training.ebm_lr=0.03: 2 to 2e6 in 11 iterations, then 1e10; the issue's ebm_lr=1: 5.6e17).
    divergence_bound: float = field(default=1e6, metadata=above(0))
    #: Divergence by behaviour: a check window's largest |loss| or |energy| more than this many times
    #: the median of the last healthy windows' (cdrl.divergence.DivergenceWatch). A finite blow-up
    #: jumps by orders of magnitude (toy-checkerboard at training.ebm_lr=1: ~10 to 2e3 from iteration
    #: 80 to 100, 2e4 later), while healthy runs of every CPU preset stay within 5x (results/measurements.md).
    divergence_jump: float = field(default=100.0, metadata=above(1))


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    description: str
    data: DataConfig
    energy: EnergyNetConfig
    initializer: InitializerConfig
    schedule: ScheduleConfig = ScheduleConfig()
    langevin: LangevinConfig = LangevinConfig()
    sampler: SamplerConfig = SamplerConfig()
    training: TrainingConfig = TrainingConfig()
    run: RunConfig = RunConfig()
    #: Speed options that keep the math (defaults: the exact float32 path); see cdrl.performance.
    performance: PerformanceConfig = PerformanceConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
        try:
            config = build(cls, values)
            _check_relations(config)
        except FieldError as error:
            raise ConfigError(f"saved config: {error}: the file was written by another version of cdrl-bench") \
                from None
        return config

    def flat(self) -> dict[str, Any]:
        """``{"training.ebm_lr": 1e-4, ...}``: every setting under its override key (MLflow params, diffs)."""
        return flatten(self.to_dict())



#: Selection metrics by "is an image dataset", the default first; all lower-is-better (RunConfig.select_metric).
SELECTION_METRICS = {True: ("fid", "kid_mean"), False: ("energy_distance",)}


def selection_metric(config: ExperimentConfig) -> str:
    """The metric that run.select_metric names for this data ("auto": fid for images, energy_distance for toys)."""
    allowed = SELECTION_METRICS[dataset_info(config.data.dataset).is_image]
    chosen = config.run.select_metric
    if chosen == "auto":
        return allowed[0]
    if chosen not in allowed:
        raise ConfigError(f"run.select_metric={chosen} cannot score {config.data.dataset} samples: "
                          f"set run.select_metric to auto or {' or '.join(allowed)}")
    return chosen


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> one level, keys joined by dots."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --------------------------------------------------------------------------- presets

#: The published code keeps the checkpoint with the best FID of 5,000 samples, measured every 20k iterations.
PUBLISHED_SELECTION = RunConfig(select_every=20_000, select_samples=5000)


def _cifar10() -> ExperimentConfig:
    return ExperimentConfig(
        name="cifar10",
        description="paper: unconditional CIFAR-10, 6 levels x 15 steps, global batch 256 (8 GPUs x 32), 500k its",
        data=DataConfig(dataset="cifar10", image_size=32, channels=3, horizontal_flip=True),
        energy=EnergyNetConfig(),
        initializer=InitializerConfig(),
        run=PUBLISHED_SELECTION,
    )


def _cifar10_large() -> ExperimentConfig:
    base = _cifar10()
    return dataclasses.replace(
        base, name="cifar10-large",
        # The paper gives no exact size for CDRL-large: base width 192 is our choice.
        description="ours: CDRL-large on CIFAR-10, EBM base width 192 (paper gives no size)",
        energy=dataclasses.replace(base.energy, width=192))


def _cifar10_drl_network() -> ExperimentConfig:
    base = _cifar10()
    return dataclasses.replace(
        base, name="cifar10-drl-network",
        description="DRL's published CIFAR-10 energy network (Gao et al. 2021: width 128, (1,2,2,2), 8 blocks, "
                    "conditioned on the level index; cdrl.drl_network), for method drl, which builds no "
                    "initializer (the count beside it is the preset's unused one)",
        energy=dataclasses.replace(base.energy, architecture="drl"))


def _imagenet32_cond() -> ExperimentConfig:
    return ExperimentConfig(
        name="imagenet32-cond",
        description="paper: class-conditional ImageNet 32x32 (1000 classes + null) for guidance, 1M its",
        data=DataConfig(dataset="imagenet32", image_size=32, channels=3, horizontal_flip=True,
                        class_conditional=True),
        energy=EnergyNetConfig(num_classes=1000),
        initializer=InitializerConfig(blocks_per_level=2, num_classes=1000),
        # The published run: 1M iterations (CIFAR-10: 500k).
        training=TrainingConfig(iterations=1_000_000),
        run=PUBLISHED_SELECTION,
    )


def _imagenet32() -> ExperimentConfig:
    # The published code has configs for CIFAR-10 and conditional ImageNet 32x32 only: this is the
    # conditional one without its class embedding (the two agree on everything but the dataset's).
    conditional = _imagenet32_cond()
    return dataclasses.replace(
        conditional, name="imagenet32",
        description="paper: unconditional ImageNet 32x32 (its FID table: 6 levels x 15 steps, global batch 256); "
                    "inferred from the published conditional ImageNet-32 config without the class embedding: "
                    "1M its, initializer 2 blocks per level (learning rates, EMA, clipping, selection: as CIFAR-10)",
        data=dataclasses.replace(conditional.data, class_conditional=False),
        energy=dataclasses.replace(conditional.energy, num_classes=None),
        initializer=dataclasses.replace(conditional.initializer, num_classes=None))


def _official_small() -> ExperimentConfig:
    return ExperimentConfig(
        name="official-small",
        description="the published-code fixtures' small networks (parity tests, quick checks)",
        data=DataConfig(dataset="cifar10", image_size=32, channels=3, horizontal_flip=True),
        energy=EnergyNetConfig(width=32, blocks_per_level=1),
        initializer=InitializerConfig(width=32, blocks_per_level=1),
    )


def _toy(density: str, published: bool = False) -> Callable[[], ExperimentConfig]:
    """The published 2-D toy example's networks and sampler; its training settings, or CPU-scale ones.

    Published: batch 2500, learning rates 3e-6 / 1e-5, 100k iterations (hours on a CPU). CPU
    scale (ours): batch 256, both learning rates 1e-3 after a 100-iteration warm-up, 2000
    iterations: the same model and chains, minutes on two cores.
    """
    def build() -> ExperimentConfig:
        if published:
            training = TrainingConfig(iterations=100_000, batch_size=2500, ebm_lr=3e-6, initializer_lr=1e-5)
            run = RunConfig(n_samples=5000)
            description = f"published 2-D toy example (MLP networks, batch 2500, 100k iterations) on {density}"
        else:
            training = TrainingConfig(iterations=2000, batch_size=256, ebm_lr=1e-3, initializer_lr=1e-3,
                                      warmup_iterations=100, initializer_warmup_lead=0)
            run = RunConfig(sample_every=1000, n_samples=5000, checkpoint_every=500)
            description = f"ours: the published 2-D toy networks on {density} at CPU scale (batch 256, 2000 iterations)"
        return ExperimentConfig(
            name=f"toy-{density}" + ("-published" if published else ""),
            description=description,
            data=DataConfig(dataset=f"toy-{density}", horizontal_flip=False),
            energy=EnergyNetConfig(architecture="mlp", in_channels=2, width=128, blocks_per_level=1),
            initializer=InitializerConfig(architecture="mlp", channels=2, width=64, blocks_per_level=1,
                                          dropout=0.0, time_width=128),
            langevin=LangevinConfig(step_constant=1e-3, step_scales_with_noise=False),
            sampler=SamplerConfig(tweedie_step=False, clamp=False),
            training=training,
            run=run,
        )
    return build


def _digits() -> ExperimentConfig:
    return ExperimentConfig(
        name="digits",
        description="ours: CPU-scale model of scikit-learn digits at 1x16x16",
        data=DataConfig(dataset="digits", image_size=16, channels=1, horizontal_flip=False),
        energy=EnergyNetConfig(in_channels=1, width=32, channel_mults=(1, 2, 2), blocks_per_level=1),
        initializer=InitializerConfig(channels=1, image_size=16, width=32, channel_mults=(1, 1),
                                      blocks_per_level=1, attention_resolutions=(8,)),
        training=TrainingConfig(iterations=4000, batch_size=64, ebm_lr=2e-4, initializer_lr=2e-4,
                                warmup_iterations=200, initializer_warmup_lead=20, ema_decay=0.999),
        run=RunConfig(sample_every=500, checkpoint_every=500),
    )


def _digits_8px(dataset: str, channels: int) -> Callable[[], ExperimentConfig]:
    """The digits-cfg suite's CPU-scale model at the digits' native 8x8, on another digits dataset."""
    def build() -> ExperimentConfig:
        return ExperimentConfig(
            name=dataset,
            description=f"ours: CPU-scale model of {dataset} at {channels}x8x8",
            data=DataConfig(dataset=dataset, image_size=8, channels=channels, horizontal_flip=False),
            energy=EnergyNetConfig(in_channels=channels, width=32, channel_mults=(1, 2), blocks_per_level=1),
            initializer=InitializerConfig(channels=channels, image_size=8, width=32, channel_mults=(1, 1),
                                          blocks_per_level=1, attention_resolutions=(4,)),
            training=TrainingConfig(iterations=1000, batch_size=64, ebm_lr=5e-4, initializer_lr=5e-4,
                                    warmup_iterations=100, initializer_warmup_lead=20, ema_decay=0.999),
            run=RunConfig(sample_every=500, checkpoint_every=500),
        )
    return build


def _celeba64() -> ExperimentConfig:
    # The paper composes CelebA attributes with networks it does not tabulate: we take the CIFAR-10
    # networks of the published code one resolution deeper (64 -> 4 pixels, as 32 -> 4 there) and its
    # CIFAR-10 recipe (batch 256, 500k iterations, the published best-FID selection).
    return ExperimentConfig(
        name="celeba64",
        description="paper setting, inferred networks: CelebA 64x64 (the paper's composition figure's faces), "
                    "CIFAR-10 networks with one more resolution",
        data=DataConfig(dataset="celeba", image_size=64, channels=3, horizontal_flip=True),
        energy=EnergyNetConfig(channel_mults=(1, 2, 2, 2, 2)),
        initializer=InitializerConfig(image_size=64, channel_mults=(1, 1, 1, 1)),
        run=PUBLISHED_SELECTION,
    )


def _tiny() -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny",
        description="ours: smallest image networks (1x8x8 digits), for tests",
        data=DataConfig(dataset="digits", image_size=8, channels=1, horizontal_flip=False),
        energy=EnergyNetConfig(in_channels=1, width=32, channel_mults=(1, 1), blocks_per_level=1),
        initializer=InitializerConfig(channels=1, image_size=8, width=32, channel_mults=(1, 1),
                                      blocks_per_level=1, attention_resolutions=(4,)),
        langevin=LangevinConfig(n_steps=3),
        training=TrainingConfig(iterations=20, batch_size=8, warmup_iterations=1, initializer_warmup_lead=0,
                                ema_decay=0.9),
        run=RunConfig(log_every=1, sample_every=10, checkpoint_every=10, n_samples=16),
    )


def _class_conditional(build: Callable[[], ExperimentConfig], name: str,
                       description: str) -> Callable[[], ExperimentConfig]:
    """``build``'s preset trained on class labels (null class 0 added), for guidance and composition."""
    def conditional() -> ExperimentConfig:
        base = build()
        classes = dataset_info(base.data.dataset).num_classes
        return dataclasses.replace(
            base, name=name, description=description,
            data=dataclasses.replace(base.data, class_conditional=True),
            energy=dataclasses.replace(base.energy, num_classes=classes),
            initializer=dataclasses.replace(base.initializer, num_classes=classes))
    return conditional


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "cifar10": _cifar10,
    "cifar10-large": _cifar10_large,
    "cifar10-drl-network": _cifar10_drl_network,
    "imagenet32": _imagenet32,
    "imagenet32-cond": _imagenet32_cond,
    "official-small": _official_small,
    "toy-checkerboard": _toy("checkerboard"),
    "toy-checkerboard-published": _toy("checkerboard", published=True),
    "toy-8gaussians": _toy("8gaussians"),
    "toy-2rings": _toy("2rings"),
    "digits": _digits,
    "tiny": _tiny,
    "toy-quadrants-cond": _class_conditional(
        _toy("quadrants"), "toy-quadrants-cond",
        "ours: 2-D checkerboard conditional on its quadrant (4 classes + null), for guidance"),
    "digits-cond": _class_conditional(
        _digits, "digits-cond", "ours: digits conditional on the digit (10 classes + null), for guidance"),
    "digits-colour-cond": _class_conditional(
        _digits_8px("digits-colour", 3), "digits-colour-cond",
        "ours: coloured 3x8x8 digits conditional on a concept, the digit (0-9) or the ink colour (red, green, "
        "blue), one per image (13 classes + null), for attribute composition at CPU scale"),
    "digits-0to4": _digits_8px("digits-0to4", 1),
    "celeba64-compose": _class_conditional(
        _celeba64, "celeba64-compose",
        "paper setting (composition): CelebA 64x64 conditional on the attributes Male (female/male) and Smiling "
        "(no/yes), one per image (4 classes + null): two near-independent binary attributes that every face "
        "shows and a person can judge; networks inferred (CIFAR-10's, one resolution deeper)"),
}


def preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (see `cdrl-bench presets`)")
    config = PRESETS[name]()
    try:
        check_tree(config)
        _check_relations(config)
    except FieldError as error:
        raise ConfigError(f"preset {name!r}: {error}") from None  # a broken preset is a bug here, said plainly
    return config


def parameter_counts(config: ExperimentConfig) -> tuple[int, int]:
    """(energy network, initializer) parameter counts of a config."""
    return count_parameters(build_energy_net(config.energy, config.schedule)), count_parameters(build_initializer(config.initializer))


# --------------------------------------------------------------------------- overrides

def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.field=value`` overrides, e.g. ``training.ebm_lr=2e-4`` or ``langevin.n_steps=5``."""
    for override in overrides:
        key, separator, raw = override.partition("=")
        if not separator or not key:
            raise ConfigError(f"override {override!r} is not key=value: write e.g. training.ebm_lr=2e-4")
        config = _replace_path(config, key.strip().split("."), raw.strip(), key)
    if overrides:
        try:
            _check_relations(config)
        except FieldError as error:
            raise ConfigError(f"{error}: fix the --set values") from None
    return config


def _example(field: dataclasses.Field, key: str) -> str:
    """The fix for a bad value: the field's default, written as the override that sets it."""
    default = field.default
    if default is dataclasses.MISSING:
        return f"set a valid {key}"
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    elif isinstance(default, bool):
        default = str(default).lower()
    return f"e.g. --set {key}={default}"


def _check_relations(config: ExperimentConfig) -> None:
    """The rules between fields (each field's own range is declared on it, cdrl.typed)."""
    if config.name in ("", ".", "..") or any(separator in config.name for separator in ("/", "\\", "\0")):
        raise FieldError("name", f"must be a plain name (it names the run folder runs/NAME-TIMESTAMP), without path "
                                 f"separators, got {config.name!r}")
    schedule = config.schedule
    if schedule.logsnr_min >= schedule.logsnr_max:
        raise FieldError("schedule.logsnr_min", f"must be below schedule.logsnr_max ({schedule.logsnr_max:g}), "
                                                f"got {schedule.logsnr_min:g}")
    if schedule.kind == "ddpm-linear":
        if schedule.beta_start >= schedule.beta_end:
            raise FieldError("schedule.beta_start", f"must be below schedule.beta_end ({schedule.beta_end:g}), "
                                                    f"got {schedule.beta_start:g}")
        try:
            ddpm_read_steps(schedule.n_levels, schedule.ddpm_steps)
        except ValueError as error:
            raise FieldError("schedule.n_levels", f"must fit the schedule: {error}") from None
    initializer = config.initializer
    if initializer.architecture == "unet" and len(set(initializer.channel_mults)) > 1:
        raise FieldError("initializer.channel_mults", f"must all be equal (the published U-Net's skip connections "
                                                      f"assume one width), got {list(initializer.channel_mults)}")
    if config.energy.architecture == "drl" and config.energy.num_classes is not None:
        raise FieldError("energy.num_classes", "must be unset for energy.architecture=drl (DRL's published network "
                                               f"is unconditional), got {config.energy.num_classes}")
    if config.energy.num_classes != config.initializer.num_classes and config.training.method == "cdrl":
        raise FieldError("initializer.num_classes", f"must equal energy.num_classes ({config.energy.num_classes}), "
                                                    f"got {config.initializer.num_classes}")


def check_networks_fit_data(config: ExperimentConfig) -> None:
    """The networks take the data's items: their channels and, for the U-Net initializer, the image size.

    Checked when a training starts rather than on every config, because a suite's data-only rows
    (floors) change the data without networks to match.
    """
    shape = dataset_info(config.data.dataset).item_shape(config.data)
    pairs = [("energy.in_channels", config.energy.in_channels, shape[0])]
    if config.training.method == "cdrl":
        pairs.append(("initializer.channels", config.initializer.channels, shape[0]))
        if config.initializer.architecture == "unet":
            # It places attention by resolution: a wrong size puts it at other levels, with no error.
            pairs.append(("initializer.image_size", config.initializer.image_size, shape[-1]))
    wrong = [(key, value, fits) for key, value, fits in pairs if value != fits]
    if wrong:
        given = ", ".join(f"{key}={value}" for key, value, _ in wrong)
        fixes = " ".join(f"--set {key}={fits}" for key, _, fits in wrong)
        raise ConfigError(f"{given} {'does' if len(wrong) == 1 else 'do'} not fit the data ({config.data.dataset} "
                          f"items of shape {tuple(shape)}): add {fixes}")


def _replace_path(node: Any, path: list[str], raw: str, full_key: str) -> Any:
    names = {f.name for f in dataclasses.fields(node)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key {full_key!r}: {type(node).__name__} has {', '.join(sorted(names))}")
    if len(path) == 1:
        field = next(f for f in dataclasses.fields(node) if f.name == head)
        try:
            value = parse(raw, typing.get_type_hints(type(node))[head], full_key)
            check_field(field, value, full_key)
        except FieldError as error:
            raise ConfigError(f"{error}: {_example(field, full_key)}") from None
    else:
        child = getattr(node, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"config key {full_key!r} goes below a plain value: drop the part after {head!r}")
        value = _replace_path(child, path[1:], raw, full_key)
    return dataclasses.replace(node, **{head: value})
