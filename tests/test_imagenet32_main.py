"""The unconditional ImageNet 32x32 preset and the paper's table it answers (suite imagenet32-main)."""

from __future__ import annotations

import dataclasses
import math

from benchmarks.suite import expand, load_suite
from benchmarks.tables import build_table, render
from cdrl.config import preset


def test_imagenet32_is_the_published_conditional_config_without_classes():
    unconditional, conditional = preset("imagenet32"), preset("imagenet32-cond")
    assert not unconditional.data.class_conditional and unconditional.data.dataset == "imagenet32"
    assert unconditional.energy.num_classes is None and unconditional.initializer.num_classes is None
    # Everything else is the published conditional config's: nothing dropped or changed on the way.
    assert dataclasses.replace(unconditional, name=conditional.name, description=conditional.description,
                               data=conditional.data, energy=conditional.energy,
                               initializer=conditional.initializer) == conditional
    assert dataclasses.replace(unconditional.energy, num_classes=1000) == conditional.energy
    assert unconditional.training.iterations == 1_000_000 and unconditional.langevin.n_steps == 15
    assert "paper" in unconditional.description and "inferred" in unconditional.description


def test_imagenet32_main_prints_the_papers_table_with_drl_not_converging(tmp_path):
    suite = load_suite("imagenet32-main")
    plan = expand(suite)
    assert [job.key for job in plan.evaluations] == ["cdrl/K15/seed0"]
    assert plan.trainings[0].config.data.dataset == "imagenet32" and plan.trainings[0].config.run.select_every == 20_000
    table = build_table(suite, tracking_uri=f"sqlite:///{tmp_path}/absent.db")
    printed = dict(zip(table.display["method"], table.display["paper FID ↓"]))
    assert printed["CDRL"] == "9.35" and printed["DRL"] == "does not converge"  # not a blank, not 0
    numbers = dict(zip(table.frame["method"], table.frame["paper_fid"]))
    assert numbers["CDRL"] == 9.35 and math.isnan(numbers["DRL"])  # no number in CSV and JSON either
    sources = dict(zip(table.frame["method"], table.frame["paper_source"]))
    assert "does not converge" in sources["DRL"]
    assert "{does not converge}" in render(table, "latex")  # text, not a number, in the siunitx column
