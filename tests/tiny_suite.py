"""The tiny suite that suite tests train and score for real."""

# A suite small enough to train and score for real in seconds: 3 iterations of narrow toy networks.
TINY_SUITE = """
name = "tiny-test"
version = 1
title = "tiny test suite"
metrics = ["in_support_fraction", "mode_coverage", "energy_distance"]

[train]
preset = "toy-checkerboard"
global_batch = 32
overrides = ["energy.width=16", "initializer.width=32",
             "data.toy_size=256", "langevin.n_steps=2", "run.n_samples=16", "run.sample_every=1000",
             "run.checkpoint_every=1000"]

[eval]
batch_size = 64
checkpoint = "last"

[profiles.full]
iterations = 3
n_samples = 64
seeds = [0]

[check]
k = 4

[[models]]
key = "cdrl"
label = "CDRL"
steps = [2, 1]

[[models]]
key = "drl"
label = "DRL"
method = "drl"
overrides = ["langevin.n_steps=3"]
steps = [3]
"""
