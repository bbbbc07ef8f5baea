"""A catalogue of realistic one-line bugs in the method (``cdrl/``), to measure the regression gate's power.

Each :class:`Mutation` replaces one exact snippet of one file; ``python -m
benchmarks.mutations`` applies each to a scratch copy of the repository, runs the gate
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

    def apply(self, root: Path) -> None:
        target = root / self.path
        text = target.read_text()
        if text.count(self.original) != 1:
            raise MutationError(f"mutation {self.name}: {self.path} holds its snippet {text.count(self.original)} "
                                f"times, not once: update benchmarks/mutations/__init__.py")
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
)


def by_name(names: list[str] | None) -> tuple[Mutation, ...]:
    if not names:
        return MUTATIONS
    known = {mutation.name: mutation for mutation in MUTATIONS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise MutationError(f"unknown mutation(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    return tuple(known[name] for name in names)
