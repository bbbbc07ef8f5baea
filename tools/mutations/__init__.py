"""A catalogue of realistic one-line bugs, to measure the regression gate's power.

The first part plants bugs in the method (``cdrl/``'s schedule, Langevin, sampler, training,
EMA, guidance); the second in everything that measures, loads, configures or feeds it: the
metrics and their statistics, the image pipeline, datasets, checkpoint loading, generation's
seeding and classes, the baselines and the config defaults (:attr:`Mutation.area`).

Each :class:`Mutation` replaces one exact snippet of one file; ``python -m
tools.mutations`` applies each to a scratch copy of the repository, runs the gate
(``cdrl-bench run --suite gate`` then ``cdrl-bench check``) there and prints which were
killed. ``equivalent`` says, per suite, why a mutation cannot change that suite's results
(so that surviving it there is no failure of the gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class MutationError(RuntimeError):
    """A mutation whose snippet is not found exactly once: the catalogue is out of date with the code."""


@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    path: str
    original: str
    mutated: str
    #: suite name -> why the mutation cannot change that suite's numbers.
    equivalent: dict[str, str] = field(default_factory=dict)
    #: What the bug breaks: "method", or a part of the ruler and plumbing around it.
    area: str = "method"

    def apply(self, root: Path) -> None:
        target = root / self.path
        text = target.read_text()
        if text.count(self.original) != 1:
            raise MutationError(f"mutation {self.name}: {self.path} holds its snippet {text.count(self.original)} "
                                f"times, not once: update tools/mutations/__init__.py")
        target.write_text(text.replace(self.original, self.mutated))


_TOY_ONLY_NO_TWEEDIE = {name: "2-D toy models take no Tweedie step (sampler.tweedie_step=false)"
                        for name in ("ci-smoke", "toy-steps")}
_UNCONDITIONAL = {name: "its models are unconditional: no labels, no guidance" for name in ("ci-smoke", "toy-steps")}

MUTATIONS: tuple[Mutation, ...] = (
    Mutation("no-step-scaling", "fewer Langevin steps keep the training step size (no sqrt(15/K) rule)",
             "cdrl/langevin.py", "return config.step_multiplier * math.sqrt(config.n_steps / n_steps)",
             "return config.step_multiplier"),
    Mutation("no-langevin-noise", "Langevin runs without its noise term by default (gradient ascent)",
             "cdrl/langevin.py", "add_noise: bool = True, noise_scale: float = 1.0) -> torch.Tensor:",
             "add_noise: bool = False, noise_scale: float = 1.0) -> torch.Tensor:"),
    Mutation("no-coupling-term", "the -||y - x_t||^2 / 2 beta term of the recovery likelihood is dropped",
             "cdrl/langevin.py", " - coupling * (y - x_t)", ""),
    Mutation("langevin-gradient-sign", "Langevin descends the energy instead of ascending it",
             "cdrl/langevin.py", "y = y + gradient_scale * energy_gradient", "y = y - gradient_scale * energy_gradient"),
    Mutation("no-tweedie-step", "the final Tweedie denoising step is skipped",
             "cdrl/sampler.py", "if config.tweedie_step and level is not None:", "if False and level is not None:",
             equivalent=_TOY_ONLY_NO_TWEEDIE),
    Mutation("tweedie-coefficient", "Tweedie's step uses sigma instead of sigma^2 (1 - alpha_bar)",
             "cdrl/sampler.py", "broadcast(level.variance_s, x) * gradient",
             "broadcast(torch.sqrt(level.variance_s), x) * gradient", equivalent=_TOY_ONLY_NO_TWEEDIE),
    Mutation("sampler-skips-noisiest-level", "sampling starts one level below pure noise (off by one)",
             "cdrl/sampler.py", "range(schedule.n_levels, 0, -1)", "range(schedule.n_levels - 1, 0, -1)"),
    Mutation("no-initializer-noise", "the initializer's proposal gets no sqrt(beta_tilde r_mul) noise",
             "cdrl/sampler.py", "    if add_noise:\n        start = start +", "    if False:\n        start = start +"),
    Mutation("schedule-endpoint", "the cosine-logSNR schedule is anchored at logsnr_max on both ends",
             "cdrl/schedule.py", "a = math.atan(math.exp(-0.5 * self.config.logsnr_min)) - b",
             "a = math.atan(math.exp(-0.5 * self.config.logsnr_max)) - b + 0.1"),
    Mutation("final-level-r-mul", "r_mul = r at the noisiest level too (the marginal there is mis-modelled)",
             "cdrl/schedule.py", "r_mul = torch.where(is_final > 0, torch.ones_like(r), r) if "
                                 "self.config.final_level_unscaled else r", "r_mul = r"),
    Mutation("no-variance-reduction", "x_s and x_t from independent noise (no shared-noise pairs)",
             "cdrl/training.py", "if self.config.training.variance_reduction:", "if False:"),
    Mutation("no-loss-weighting", "every level's EBM loss weighted 1 instead of sigma_1 / sqrt(beta)",
             "cdrl/training.py", "weight = self.sigma_lowest / torch.sqrt(level.beta) if training.loss_weighting "
                                 "else torch.ones_like(level.beta)", "weight = torch.ones_like(level.beta)"),
    Mutation("training-skips-noisiest-level", "training never draws the noisiest level (off by one)",
             "cdrl/training.py", "torch.randint(1, self.schedule.n_levels + 1,", "torch.randint(1, self.schedule.n_levels,"),
    Mutation("spectral-norm-in-train-mode", "training's Langevin revision runs the EBM in train mode "
             "(power iterations advance inside the chain)", "cdrl/training.py",
             "        # Revision in eval mode, so power iterations do not advance during sampling.\n"
             "        self.ebm.eval()",
             "        # Revision in eval mode, so power iterations do not advance during sampling.\n"
             "        self.ebm.train()"),
    Mutation("initializer-regresses-on-data", "the initializer regresses onto the data x_s, not the revised sample",
             "cdrl/training.py", "initializer_loss = (revised * root_r - initializer_start)",
             "initializer_loss = (x_s * root_r - initializer_start)"),
    Mutation("no-label-dropout", "labels are never dropped to the null class in training",
             "cdrl/training.py", ">= self.config.training.label_dropout", ">= 0.0", equivalent=_UNCONDITIONAL),
    Mutation("ema-decay-swapped", "the EMA keeps 1 - decay of its average at each update (weights of the "
             "latest step)", "cdrl/ema.py", "torch._foreach_lerp_(self.shadow, parameters, 1.0 - self.current_decay())",
             "torch._foreach_lerp_(self.shadow, parameters, self.current_decay())"),
    Mutation("guidance-sign", "classifier-free guidance pushes away from the class: (1 - w) h(c) + w h(0)",
             "cdrl/guidance.py", "Concept(label, 1.0 + guidance)", "Concept(label, 1.0 - guidance)",
             equivalent=_UNCONDITIONAL),
    Mutation("ebm-loss-sign", "the EBM's contrastive loss is negated", "cdrl/training.py",
             "positive_loss = -(positive * weight).mean()", "positive_loss = (positive * weight).mean()"),
    # ---- outside the method: the ruler (metrics, image pipeline), data, loading, generation, baselines, configs
    Mutation("fid-covariance-biased", "torch-fidelity's FID covariance normalised by n instead of n - 1",
             "cdrl/evaluation/backends/torch_fidelity.py", 'return statistics["mu"], statistics["sigma"]',
             'return statistics["mu"], statistics["sigma"] * (len(pool) - 1) / len(pool)', area="evaluation"),
    Mutation("clean-fid-covariance-biased", "clean-fid's FID covariance normalised by n (np.cov bias=True)",
             "cdrl/evaluation/backends/clean_fid.py", "np.cov(pool, rowvar=False)",
             "np.cov(pool, rowvar=False, bias=True)", area="evaluation"),
    Mutation("inception-input-scaling", "the fast CPU Inception scales pixels by (x - 127.5) / 127.5, not the TF "
             "network's (x - 128) / 128", "cdrl/evaluation/inception.py", "normalized = ((images - 128) / 128)",
             "normalized = ((images - 127.5) / 127.5)", area="evaluation"),
    Mutation("quantise-truncates", "samples become uint8 by truncation instead of rounding",
             "cdrl/evaluation/images.py", "return torch.round((samples.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)",
             "return ((samples.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)", area="evaluation"),
    Mutation("clean-resize-is-bilinear", "the clean resize mode resizes with the TF1 bilinear of legacy_tensorflow",
             "cdrl/evaluation/inception.py", "    if mode == LEGACY_TENSORFLOW:\n        if fast:",
             "    if mode in (LEGACY_TENSORFLOW, CLEAN):\n        if fast:", area="evaluation"),
    Mutation("kid-fewer-subsets", "KID averages 10 subsets instead of 100", "cdrl/evaluation/metrics.py",
             "KID_SUBSETS = 100", "KID_SUBSETS = 10", area="evaluation"),
    Mutation("energy-distance-biased", "the toy energy distance's within-set means keep the i = j pairs "
             "(a V-statistic)", "cdrl/toy_metrics.py", "return torch.cdist(points, points).sum() / (n * (n - 1))",
             "return torch.cdist(points, points).sum() / (n * n)", area="evaluation"),
    Mutation("image-normalisation", "CIFAR-10 and ImageNet pixels scaled by /128 - 1 instead of /127.5 - 1",
             "cdrl/datasets/common.py", "image = pixels.float().div_(127.5).sub_(1.0)",
             "image = pixels.float().div_(128.0).sub_(1.0)", area="datasets"),
    Mutation("digits-test-split", "the digits test split is every 4th image instead of every 5th",
             "cdrl/datasets/digits.py", "DIGITS_TEST_EVERY = 5", "DIGITS_TEST_EVERY = 4", area="datasets"),
    # (antialias=False would be no bug: torchvision always antialiases a PIL image.)
    Mutation("imagenet64-resize-nearest", "ImageNet 64x64 is resized to 32x32 by nearest neighbour, not bilinear",
             "cdrl/datasets/imagenet32.py", "transforms.Resize(32, antialias=True)",
             "transforms.Resize(32, interpolation=transforms.InterpolationMode.NEAREST)", area="datasets"),
    Mutation("toy-squares-scaled", "the checkerboard's squares are drawn at 0.95 of their scale",
             "cdrl/datasets/toy_truth.py", "return torch.tensor(CHECKERBOARD_SQUARES, dtype=torch.float32) * scale",
             "return torch.tensor(CHECKERBOARD_SQUARES, dtype=torch.float32) * (0.95 * scale)", area="datasets"),
    Mutation("floor-against-its-own-split", "a data floor scores the reference split against itself (an "
             "improved number)", "cdrl/scoring.py", 'split = "test" if reference_split == "train" else "train"',
             "split = reference_split", area="datasets"),
    Mutation("loads-live-weights", "loading swaps the weights: the live ones where the EMA's are asked for",
             "cdrl/checkpoint.py", "    if use_ema and ema_state is not None:",
             "    if not use_ema and ema_state is not None:", area="loading"),
    Mutation("noise-seeded-by-batch-position", "sample i's noise is seeded by its position in its batch",
             "cdrl/generation.py", "example_seed(spec.seed, int(i)) for i in batch_indices",
             "example_seed(spec.seed, position) for position, _ in enumerate(batch_indices)", area="generation"),
    Mutation("classes-off-by-one", "sample i of a conditional model is drawn for class i + 1 (mod classes)",
             "cdrl/guidance.py", "else indices % num_classes", "else (indices + 1) % num_classes",
             equivalent=_UNCONDITIONAL, area="generation"),
    Mutation("guidance-null-coefficient", "the null-class term of a guided energy loses its 1: -sum w_i h(0)",
             "cdrl/guidance.py", "terms = [(None, 1.0 - sum(concept.weight for concept in concepts))]",
             "terms = [(None, -sum(concept.weight for concept in concepts))]", equivalent=_UNCONDITIONAL,
             area="guidance"),
    Mutation("drl-full-step-size", "DRL keeps CDRL's step size instead of halving it", "baselines/__init__.py",
             'f"langevin.step_constant={config.langevin.step_constant / 2!r}"',
             'f"langevin.step_constant={config.langevin.step_constant!r}"', area="baselines"),
    Mutation("drl-test-noise", "DRL samples with full Langevin noise at test time (not x 0.99)",
             "baselines/__init__.py", "DRL_TEST_NOISE_SCALE = 0.99", "DRL_TEST_NOISE_SCALE = 1.0", area="baselines"),
    Mutation("ablation-wrong-field", "the no-variance-reduction ablation turns off the loss weighting instead",
             "baselines/__init__.py", '"no-variance-reduction": ("training.variance_reduction=false",)',
             '"no-variance-reduction": ("training.loss_weighting=false",)', area="baselines"),
    Mutation("schedule-logsnr-max-default", "the schedule's default logSNR at the cleanest level is 10 (not 9.8)",
             "cdrl/schedule.py", "logsnr_max: float = 9.8", "logsnr_max: float = 10.0", area="config defaults"),
    Mutation("toy-preset-initializer-lr", "the CPU-scale toy presets train the initializer at 1e-4",
             "cdrl/config.py", "batch_size=256, ebm_lr=1e-3, initializer_lr=1e-3,",
             "batch_size=256, ebm_lr=1e-3, initializer_lr=1e-4,", area="config defaults"),
)


def by_name(names: list[str] | None) -> tuple[Mutation, ...]:
    if not names:
        return MUTATIONS
    known = {mutation.name: mutation for mutation in MUTATIONS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise MutationError(f"unknown mutation(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    return tuple(known[name] for name in names)
