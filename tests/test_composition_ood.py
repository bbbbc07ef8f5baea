"""Attribute composition (coloured digits, CelebA) and out-of-distribution detection (digits, CIFAR-100, CelebA):
their datasets read from archives in the real formats, the composed sampling, the per-concept and OOD metrics,
and both suites run end to end on tiny models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from benchmarks import runner
from benchmarks.archives import CELEBA_ROWS, asymmetric_images, write_celeba, write_cifar100
from benchmarks.suite import SuiteError, expand, load_suite
from cdrl import metrics
from cdrl.checkpoint import LoadedModel
from cdrl.composition import requested_values
from cdrl.config import apply_overrides, preset
from cdrl.datasets import DataConfig, DatasetError, build_dataset, dataset_info
from cdrl.evaluation.concepts import concept_accuracies
from cdrl.generation import GenerationSpec, generate
from cdrl.guidance import composed_classes
from cdrl.networks import build_energy_net, build_initializer
from cdrl.ood import detection_metrics, energies, ood_images
from cli import app

#: A tiny coloured-digits model: narrow networks, 2 Langevin steps.
TINY = ["energy.width=8", "initializer.width=32", "langevin.n_steps=2", "schedule.n_levels=2"]


def _model(name: str, seed: int = 0) -> LoadedModel:
    config = apply_overrides(preset(name), TINY)
    torch.manual_seed(seed)
    return LoadedModel(config, build_energy_net(config.energy).eval(), build_initializer(config.initializer).eval(),
                       0, True)


def test_composed_classes_ask_every_combination_equally_often():
    digits, colours = composed_classes(torch.arange(60), [range(10), (10, 11, 12)])
    pairs = list(zip(digits.tolist(), colours.tolist()))
    assert sorted(pairs[:30]) == [(d, c) for d in range(10) for c in (10, 11, 12)]  # each of the 30 once
    assert pairs[30:] == pairs[:30]
    # Group sizes with a common factor: running through each group on its own would repeat pairs.
    halves, quarters = composed_classes(torch.arange(8), [(0, 1), (2, 3, 4, 5)])
    assert sorted(zip(halves.tolist(), quarters.tolist())) == [(h, q) for h in (0, 1) for q in (2, 3, 4, 5)]


def test_coloured_digits_draw_each_digit_in_one_ink_chosen_apart_from_the_digit():
    config = DataConfig(dataset="digits-colour", class_conditional=True)
    data = build_dataset(config)
    truth = dataset_info("digits-colour").concept_labels(config)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    # Every channel draws the strokes: the ink's colour at full strength, the other two at half.
    ink = (images + 1.0) / 2.0
    full = ink.gather(1, truth[:, 1, None, None, None].expand(-1, 1, 8, 8))
    assert torch.allclose(ink.sum(dim=1, keepdim=True), full * 2.0, atol=1e-6) and full.amax() == 1.0
    # Each image is labelled with its digit (0-9) or its colour (10-12), about half each.
    shows_colour = labels >= 10
    assert labels[~shows_colour].equal(truth[~shows_colour, 0]) and labels[shows_colour].equal(truth[shows_colour, 1] + 10)
    assert 0.4 < shows_colour.float().mean() < 0.6
    # Colour is independent of digit: every digit comes in every colour.
    assert len(set(map(tuple, truth.tolist()))) == 30
    # The classifiers read the real test images' digit and colour (the data floor).
    test = replace(config, split="test")
    test_images = torch.stack([item[0] for item in build_dataset(test)])
    floor = concept_accuracies("digits-colour", test_images, dataset_info("digits-colour").concept_labels(test))
    assert floor["concept_b_accuracy"] == 1.0 and floor["joint_accuracy"] > 0.9


def test_concept_accuracies_count_only_what_each_sample_asked_for():
    images = torch.stack([item[0] for item in build_dataset(DataConfig(dataset="digits-colour", split="test"))])[:40]
    truth = dataset_info("digits-colour").concept_labels(DataConfig(dataset="digits-colour", split="test"))[:40]
    asked = truth.clone()
    asked[:10, 1] = -1  # digit only
    asked[10:20, 0] = -1  # colour only
    asked[20:, 1] = (truth[20:, 1] + 1) % 3  # both, every colour wrong
    values = concept_accuracies("digits-colour", images, asked)
    assert values["concept_b_accuracy"] == pytest.approx(10 / 30)  # right in the colour-only ten alone
    assert values["joint_accuracy"] == 0.0  # over the 20 that asked for both
    digit_only = concept_accuracies("digits-colour", images[:10], asked[:10])
    assert set(digit_only) == {"concept_a_accuracy"}


def test_requested_values_name_within_concept_values_and_minus_one_for_none():
    config = preset("digits-colour-cond")
    values = requested_values(31, config, ["colour", "digit"])  # colour fastest
    assert values[:4].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert requested_values(3, config, ["colour"]).tolist() == [[-1, 0], [-1, 1], [-1, 2]]


def test_composed_sampling_is_the_guidance_composition_of_each_samples_classes():
    model = _model("digits-colour-cond")
    composed = generate(model, GenerationSpec.resolve(model.config, 4, seed=3, concepts=((7,), (11,))))
    fixed = generate(model, GenerationSpec.resolve(model.config, 4, seed=3, classes=(7, 11)))
    assert torch.equal(composed, fixed)  # f(7) + f(11) - f(∅) for every sample
    per_sample = generate(model, GenerationSpec.resolve(model.config, 2, seed=3, concepts=((6, 7), (11,))))
    assert torch.equal(per_sample[1], fixed[1]) and not torch.equal(per_sample[0], fixed[0])
    with pytest.raises(Exception, match="concepts or a class"):
        GenerationSpec.resolve(model.config, 2, classes=3, concepts=((7,),))


def test_detection_metrics_are_sklearns_auroc_and_the_fpr_at_95_percent_true_positives():
    inside = torch.arange(1.0, 21.0)  # 20 in-distribution scores: 95% of them are 2 and above
    outside = torch.tensor([0.0, 1.5, 2.5, 100.0])
    values = detection_metrics(inside, outside)
    labels = np.r_[np.ones(20), np.zeros(4)]
    assert values["auroc"] == pytest.approx(roc_auc_score(labels, torch.cat([inside, outside]).numpy()))
    assert values["fpr95"] == 0.5  # 2.5 and 100 of the four pass the threshold 2 that keeps 19 of 20
    assert detection_metrics(inside + 100, outside - 200) == {"auroc": 1.0, "fpr95": 0.0}


def test_ood_energy_is_the_positive_phase_energy_of_the_least_noisy_level():
    model = _model("digits-0to4")
    images = torch.stack([item[0] for item in build_dataset(replace(model.config.data, split="test"))])[:5]
    scores = energies(model, images, seed=0)
    from cdrl.schedule import LogSNRSchedule, diffuse

    level = LogSNRSchedule(model.config.schedule).level(1, batch_size=5)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    x_s = diffuse(images, level.logsnr_s, noise) * level.r_mul.sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(scores, model.ebm(x_s, level.logsnr_s))
    # Interpolations: each the average of two test images.
    mixed = ood_images(model.config, "interpolation", 5, seed=0)
    assert all(any(torch.allclose(2 * mixed[i] - images[i], images[j]) for j in range(5)) for i in range(5))


def test_cifar100_reads_the_python_archive_with_fine_labels(tmp_path: Path):
    write_cifar100(tmp_path)
    config = DataConfig(dataset="cifar100", data_dir=str(tmp_path), class_conditional=True, download=False)
    train = build_dataset(config)
    assert len(train) == 4 and [train[i][1] for i in range(4)] == [99, 0, 42, 7] and train.classes[99] == "class99"
    expected = torch.tensor(asymmetric_images(3, seed=31)[2].reshape(3, 32, 32)).float() / 127.5 - 1
    assert torch.equal(build_dataset(replace(config, split="test"))[2][0], expected)
    with pytest.raises(DatasetError, match=r"^CIFAR-100 not found in .* download is off: pass --data-dir"):
        build_dataset(replace(config, data_dir=str(tmp_path / "none")))


def test_celeba_reads_torchvisions_layout_crops_the_face_and_labels_one_attribute_per_image(tmp_path: Path):
    write_celeba(tmp_path)
    config = DataConfig(dataset="celeba", data_dir=str(tmp_path), class_conditional=True, download=False,
                        horizontal_flip=False)
    train, test = build_dataset(config), build_dataset(replace(config, split="test"))
    partitions = [row[0] for row in CELEBA_ROWS]
    assert (len(train), len(test)) == (partitions.count(0), partitions.count(2))
    image, label = train[0]
    assert image.shape == (3, 64, 64) and image.min() > 0.95  # the white 140x140 centre, none of the black border
    truth = dataset_info("celeba").concept_labels(config)
    assert truth.tolist() == [[(male + 1) // 2, (smiling + 1) // 2] for part, male, smiling in CELEBA_ROWS if part == 0]
    for index in range(len(train)):  # female/male 0-1 or not smiling/smiling 2-3
        label = train[index][1]
        assert label == truth[index, 0] if label < 2 else label - 2 == truth[index, 1]
    assert build_dataset(replace(config, image_size=32))[0][0].shape == (3, 32, 32)


def test_celeba_that_cannot_be_downloaded_says_which_files_to_fetch(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    def drive_refuses(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(torchvision.datasets, "CelebA", drive_refuses)
    with pytest.raises(DatasetError) as error:
        build_dataset(DataConfig(dataset="celeba", data_dir=str(tmp_path)))
    assert str(error.value).startswith(f"CelebA not found in {tmp_path} and torchvision could not download it "
                                       "(RuntimeError): download img_align_celeba.zip")
    assert "\n" not in str(error.value)


OOD_SUITE = """
name = "tiny-ood"
version = 1
metrics = ["auroc", "fpr95"]
reference = "cifar10_ood_auroc.csv"

[train]
preset = "digits-0to4"
global_batch = 8
overrides = ["energy.width=8", "initializer.width=32", "langevin.n_steps=2", "run.sample_every=1000"]

[eval]
checkpoint = "last"

[profiles.full]
iterations = 2
n_samples = 12

[[models]]
key = "near"
ood = "digits-5to9"
paper = { method = "CDRL", ood_dataset = "CIFAR-100" }

[[models]]
key = "interpolation"
scores = "near"
ood = "interpolation"
paper = { method = "CDRL", ood_dataset = "CIFAR-10 interpolation" }
"""

COMPOSE_SUITE = """
name = "tiny-compose"
version = 1
metrics = ["concept_a_accuracy", "concept_b_accuracy", "joint_accuracy"]

[train]
preset = "digits-colour-cond"
global_batch = 8
overrides = ["energy.width=8", "initializer.width=32", "langevin.n_steps=2", "run.sample_every=1000"]

[eval]
checkpoint = "last"

[profiles.full]
iterations = 2
n_samples = 30

[[models]]
key = "digit"
concepts = ["digit"]

[[models]]
key = "composed"
scores = "digit"
concepts = ["digit", "colour"]

[[models]]
key = "data"
floor = true
"""


def _run(tmp_path: Path, text: str) -> dict[str, dict[str, float]]:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner.run_plan(expand(load_suite(path)), tracking_uri=uri, runs_dir=tmp_path / "runs")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"cdrl-suite-{load_suite(path).name}").experiment_id
    return {run.data.tags["cdrl.run_key"]: run.data.metrics for run in client.search_runs([experiment])
            if run.data.tags.get("cdrl.kind") == "eval"}


def _table(tmp_path, output_format: str):
    """`cdrl-bench table` of the suite file _run wrote, from its store."""
    return CliRunner().invoke(app, ["table", "--suite", str(tmp_path / "suite.toml"), "--tracking-uri",
                                    f"sqlite:///{tmp_path / 'mlflow.db'}", "--format", output_format])


def test_ood_suite_scores_each_set_against_the_test_images_beside_the_papers_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scored = _run(tmp_path, OOD_SUITE)
    assert set(scored) == {"near/K2/seed0", "interpolation/K2/seed0"}
    assert all(0 <= values["auroc"] <= 1 and 0 <= values["fpr95"] <= 1 for values in scored.values())
    assert scored["near/K2/seed0"]["auroc"] != scored["interpolation/K2/seed0"]["auroc"]
    table = _table(tmp_path, "csv")
    assert table.exit_code == 0, table.output
    assert "0.78" in table.output and "0.75" in table.output  # the paper's CIFAR-100 and interpolation AUROCs
    markdown = _table(tmp_path, "markdown").output
    assert "AUROC" in markdown and "levels × steps" not in markdown  # nothing is sampled: no empty column


def test_composition_suite_asks_each_row_its_concepts_and_scores_the_floor_on_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Inception has tests of its own: left out here, the rows get the concept metrics alone.
    monkeypatch.setattr(metrics, "METRICS", {name: metric for name, metric in metrics.METRICS.items()
                                             if metric.computed_by is not metrics.INCEPTION})
    scored = _run(tmp_path, COMPOSE_SUITE)
    assert set(scored["digit/K2/seed0"]) >= {"concept_a_accuracy"}
    assert not {"concept_b_accuracy", "joint_accuracy"} & set(scored["digit/K2/seed0"])
    assert {"concept_a_accuracy", "concept_b_accuracy", "joint_accuracy"} <= set(scored["composed/K2/seed0"])
    assert scored["data/seed0"]["joint_accuracy"] > 0.9
    table = _table(tmp_path, "markdown").output
    assert "| data " in table and "source" not in table  # trained rows and a floor: no source column to tell apart


@pytest.mark.parametrize("field, value, message", [
    ("concepts", '["digit", "shape"]', "concepts = ['digit', 'shape'] must name each of its concepts once, from "
                                       "the dataset's: digit, colour"),
    ("ood", '"svhn"', "ood = 'svhn' is neither a dataset"),
])
def test_a_suite_naming_an_unknown_concept_or_ood_set_is_refused_before_any_work(tmp_path, field, value, message):
    text = COMPOSE_SUITE.replace('concepts = ["digit", "colour"]', f"{field} = {value}")
    if field == "ood":
        text = text.replace('concepts = ["digit"]\n', "")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert str(error.value).startswith(f"bad.toml: models[1].{message}")


def test_composition_figure_puts_each_samples_asked_values_in_its_row_and_column(tmp_path, monkeypatch):
    from benchmarks import composition_figure

    def asked(model, spec, **kwargs):  # each sample an image of one value: its classes, the first + 100 x the second
        classes = composed_classes(torch.arange(spec.n_samples), spec.concepts)
        code = sum(values * 100 ** index for index, values in enumerate(classes))
        return code.float().view(-1, 1, 1, 1).expand(-1, 3, 8, 8)

    monkeypatch.setattr(composition_figure, "generate", asked)
    model = _model("digits-colour-cond")
    grids = {panel: grid[:, :, 0, 0, 0].long() for panel, grid in composition_figure.composition_grids(model).items()}
    assert grids["A"].tolist() == [list(range(10))] * 3  # column a asks for digit a
    assert grids["B"].tolist() == [[10 + b] * 10 for b in range(3)]  # row b asks for colour b (class 10 + b)
    assert grids["A∧B"].tolist() == [[a + 100 * (10 + b) for a in range(10)] for b in range(3)]  # both
    monkeypatch.undo()
    assert composition_figure.save_composition_figure(model, tmp_path / "figure.png").stat().st_size > 0
