"""cdrl-bench: Cooperative Diffusion Recovery Likelihood (CDRL) and DRL, reproducibly.

The method lives here, one module per idea: ``schedule`` (logSNR schedule, diffusion),
``networks`` (energy network, initializer), ``langevin`` (the revision MCMC), ``training``
(one cooperative step), ``sampler`` (Algorithm 2), ``ema``, ``checkpoint``, ``config``
(typed configs and the paper's presets).
"""

__version__ = "0.1.0"
