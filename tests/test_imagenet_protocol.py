"""ImageNet class orders (cdrl.imagenet_classes) and their use when importing published checkpoints.

The class files are written in their real formats (map_clsloc.txt, Keras' imagenet_class_index.json)
for 10 fake WNIDs, so that the small class-conditional preset digits-cond (10 classes) stands in
for the published ImageNet model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cdrl.checkpoint import (CheckpointError, import_official_checkpoint, load_checkpoint, load_model,
                             make_checkpoint, permute_classes, save_atomic)
from cdrl.config import preset
from cdrl.imagenet_classes import ClassMapError, load_class_map, read_imagenet_class_index, read_map_clsloc
from cdrl.networks import build_energy_net, build_initializer
from cli import app

PRESET = "digits-cond"
SORTED_WNIDS = [f"n{1_440_764 + 7_919 * index:08d}" for index in range(10)]
# The npz order: a permutation of the sorted WNIDs with no fixed point and no 2-cycle, so that
# the identity, the inverse permutation or a shift by one all give other maps.
NPZ_POSITIONS = (3, 7, 0, 9, 1, 5, 2, 8, 6, 4)
NPZ_WNIDS = [SORTED_WNIDS[position] for position in NPZ_POSITIONS]
# Each network: its key prefix in the published file, and its class-embedding weight (one column per label).
NETWORKS = {"ebm": ("pi", "y_map.weight_orig"), "initializer": ("p", "y_mlp.0.weight")}


def published_class(our_class: int) -> int:
    """The published code's index (sorted WNIDs) of our npz class ``our_class``: what the map must find."""
    return SORTED_WNIDS.index(NPZ_WNIDS[our_class])


def write_class_files(folder: Path, npz_wnids: list[str] = NPZ_WNIDS) -> tuple[Path, Path]:
    """(imagenet_class_index.json, map_clsloc.txt) in the real formats."""
    keras = folder / "imagenet_class_index.json"
    keras.write_text(json.dumps({str(index): [wnid, f"name_{wnid}"] for index, wnid in enumerate(SORTED_WNIDS)}))
    clsloc = folder / "map_clsloc.txt"
    clsloc.write_text("".join(f"{wnid} {index} name_{wnid}\n" for index, wnid in enumerate(npz_wnids, start=1)))
    return keras, clsloc


@pytest.fixture
def class_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_class_files(tmp_path)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, dict]:
    """A checkpoint in the published code's format (DDP prefixes, torch_ema states) of digits-cond networks."""
    config = preset(PRESET)
    torch.manual_seed(0)
    ebm, initializer = build_energy_net(config.energy), build_initializer(config.initializer)
    with torch.no_grad():  # spectral norm's power iterations, as in training: energies of a trained model's scale
        for _ in range(30):
            ebm(torch.randn(4, 1, 16, 16), torch.linspace(-4.0, 8.0, 4), torch.arange(4))
        # The initializer starts as the identity (zero-initialised output layers), blind to labels until trained.
        for parameter in initializer.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    contents = {}
    for key, module in (("pi", ebm), ("p", initializer)):
        contents[f"{key}_state_dict"] = {f"module.{name}": tensor for name, tensor in module.state_dict().items()}
        # EMA weights unlike the live ones, so that a permutation applied to one set only shows.
        shadow = [p.detach() + 0.01 * torch.randn_like(p) for p in module.parameters()]
        contents[f"{key}_ema_state_dict"] = {"decay": 0.9999, "num_updates": 7, "collected_params": None,
                                             "shadow_params": shadow}
    path = tmp_path_factory.mktemp("published") / "cond.pth.tar"
    torch.save(contents, path)
    return path, contents


def parameter_names(network: str) -> list[str]:
    """In parameters() order: the order of the EMA's shadow_params."""
    config = preset(PRESET)
    module = build_energy_net(config.energy) if network == "ebm" else build_initializer(config.initializer)
    return [name for name, _ in module.named_parameters()]


# ---------------------------------------------------------------------------
# The class files


def test_class_files_are_read_in_their_real_formats(class_files) -> None:
    keras, clsloc = class_files
    published_order, npz_order = read_imagenet_class_index(keras), read_map_clsloc(clsloc)
    assert published_order.wnids == tuple(SORTED_WNIDS) and npz_order.wnids == tuple(NPZ_WNIDS)
    assert (published_order.file, npz_order.file) == ("imagenet_class_index.json", "map_clsloc.txt")
    assert published_order.sha256 == hashlib.sha256(keras.read_bytes()).hexdigest()
    assert npz_order.sha256 == hashlib.sha256(clsloc.read_bytes()).hexdigest()
    # Both orders are those of the files' indices, not of their lines or keys.
    lines = clsloc.read_text().splitlines()
    clsloc.write_text("\n".join(lines[5:] + lines[:5]) + "\n")
    assert read_map_clsloc(clsloc).wnids == tuple(NPZ_WNIDS)
    entries = json.loads(keras.read_text())
    keras.write_text(json.dumps({key: entries[key] for key in reversed(entries)}))
    assert read_imagenet_class_index(keras).wnids == tuple(SORTED_WNIDS)


def test_class_map_matches_the_two_orders_by_wnid(class_files) -> None:
    mapping = load_class_map(*class_files)
    assert mapping.published_index == tuple(published_class(c) for c in range(10)) == NPZ_POSITIONS


@pytest.mark.parametrize("content, message", [
    ("n01440764 1 tench\nn01443537 goldfish\n", r"line 2 is not 'WNID INDEX NAME'"),
    ("n01440764 1 tench\nn01443537 3 goldfish\n", r"does not number its classes 1\.\.N once each"),
    ("n01440764 1 tench\nn01440764 2 tench\n", r"lists WNID n01440764 twice"),
    ("tench 1 n01440764\n", r"has 'tench' where a WNID"),
])
def test_malformed_map_clsloc_is_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "map_clsloc.txt"
    path.write_text(content)
    with pytest.raises(ClassMapError, match=message) as caught:
        read_map_clsloc(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content", ['["n01440764", "tench"]', '{"1": ["n01440764", "tench"]}',
                                     '{"0": "n01440764"}', "not json"])
def test_malformed_class_index_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "imagenet_class_index.json"
    path.write_text(content)
    with pytest.raises(ClassMapError, match=r"imagenet_class_index\.json") as caught:
        read_imagenet_class_index(path)
    assert "\n" not in str(caught.value)


def test_files_of_different_classes_are_refused_in_one_line(tmp_path: Path) -> None:
    other = NPZ_WNIDS[:-1] + ["n09999999"]
    keras, clsloc = write_class_files(tmp_path, other)
    with pytest.raises(ClassMapError, match=rf"list different classes \(1 WNIDs only in imagenet_class_index\.json, "
                                            rf"e\.g\. {NPZ_WNIDS[-1]}; 1 only in map_clsloc\.txt, e\.g\. n09999999\)"
                       ) as caught:
        load_class_map(keras, clsloc)
    assert "\n" not in str(caught.value)
    with pytest.raises(ClassMapError, match="cannot read"):
        load_class_map(keras, tmp_path / "missing.txt")


# ---------------------------------------------------------------------------
# Import of a published class-conditional checkpoint


def test_import_with_the_map_moves_embedding_columns_by_wnid(published, class_files) -> None:
    path, contents = published
    payload = import_official_checkpoint(path, PRESET, load_class_map(*class_files))
    trainer = payload["trainer"]
    for network, (key, embedding) in NETWORKS.items():
        position = parameter_names(network).index(embedding)
        theirs = contents[f"{key}_state_dict"][f"module.{embedding}"]
        theirs_ema = contents[f"{key}_ema_state_dict"]["shadow_params"][position]
        ours, ours_ema = trainer[network][embedding], trainer[f"{network}_ema"]["shadow_params"][position]
        assert torch.equal(ours[:, 0], theirs[:, 0]) and torch.equal(ours_ema[:, 0], theirs_ema[:, 0])  # null class
        for our_class in range(10):
            column = published_class(our_class) + 1
            assert torch.equal(ours[:, our_class + 1], theirs[:, column])
            assert torch.equal(ours_ema[:, our_class + 1], theirs_ema[:, column])
        # Every other tensor is the published one as it was.
        for name, tensor in trainer[network].items():
            if name not in (embedding, "y_map.weight_v"):
                assert torch.equal(tensor, contents[f"{key}_state_dict"][f"module.{name}"]), name
    # Spectral norm's vector over the embedding's inputs moves with its columns.
    theirs_v = contents["pi_state_dict"]["module.y_map.weight_v"]
    assert torch.equal(trainer["ebm"]["y_map.weight_v"], theirs_v[[0] + [published_class(c) + 1 for c in range(10)]])


def test_imported_model_draws_the_published_class_of_the_same_wnid(published, class_files, tmp_path: Path) -> None:
    path, _ = published
    as_published, permuted = tmp_path / "as_published.pt", tmp_path / "permuted.pt"
    save_atomic(import_official_checkpoint(path, PRESET), as_published)
    save_atomic(import_official_checkpoint(path, PRESET, load_class_map(*class_files)), permuted)
    torch.manual_seed(1)
    x, logsnr = torch.randn(11, 1, 16, 16), torch.linspace(-4.0, 8.0, 11)
    ours_labels = torch.arange(11)  # 0: the null class, then our classes 0..9
    their_labels = torch.tensor([0] + [published_class(c) + 1 for c in range(10)])
    for use_ema in (True, False):
        theirs, ours = load_model(as_published, use_ema=use_ema), load_model(permuted, use_ema=use_ema)
        with torch.no_grad():
            assert torch.allclose(ours.ebm(x, logsnr, ours_labels), theirs.ebm(x, logsnr, their_labels),
                                  rtol=1e-5, atol=1e-6)
            assert torch.allclose(ours.initializer(x, logsnr, ours_labels),
                                  theirs.initializer(x, logsnr, their_labels), rtol=1e-5, atol=1e-6)
            # ...and the labels as given really do select different classes.
            assert not torch.allclose(ours.ebm(x, logsnr, ours_labels), theirs.ebm(x, logsnr, ours_labels))
            assert not torch.allclose(ours.initializer(x, logsnr, ours_labels),
                                      theirs.initializer(x, logsnr, ours_labels))


def test_the_class_order_is_recorded_in_the_checkpoint(published, class_files, tmp_path: Path) -> None:
    path, _ = published
    keras, clsloc = class_files
    save_atomic(import_official_checkpoint(path, PRESET, load_class_map(keras, clsloc)), tmp_path / "permuted.pt")
    _, payload = load_checkpoint(tmp_path / "permuted.pt")  # weights_only: the record is plain data
    record = payload["class_order"]
    assert record["permuted"] is True
    assert record["description"] == ("map_clsloc.txt order (npz labels), permuted from imagenet_class_index.json "
                                      "order (published code)")
    assert record["published_sha256"] == hashlib.sha256(keras.read_bytes()).hexdigest()
    assert record["npz_sha256"] == hashlib.sha256(clsloc.read_bytes()).hexdigest()
    assert record["published_index"] == list(NPZ_POSITIONS)
    unpermuted = import_official_checkpoint(path, PRESET)
    assert unpermuted["class_order"]["permuted"] is False
    assert unpermuted["class_order"]["description"].startswith("published code's order")


def test_unconditional_models_refuse_a_class_map(class_files, tmp_path: Path) -> None:
    mapping = load_class_map(*class_files)
    # Refused before the (possibly large) file is read: no file is needed.
    with pytest.raises(CheckpointError, match=r"preset 'tiny' is unconditional: .*drop the class map") as caught:
        import_official_checkpoint(tmp_path / "absent.pth.tar", "tiny", mapping)
    assert "\n" not in str(caught.value)
    config = preset("tiny")
    model_state = {"iteration": 0, "ebm": build_energy_net(config.energy).state_dict()}
    with pytest.raises(CheckpointError, match="unconditional"):
        permute_classes(make_checkpoint(config, model_state), mapping)


def test_a_map_of_another_size_a_second_permutation_and_a_training_state_are_refused(published, class_files) -> None:
    path, _ = published
    mapping = load_class_map(*class_files)
    with pytest.raises(CheckpointError, match=r"lists 10 classes but preset 'toy-quadrants-cond' has 4"):
        import_official_checkpoint(path, "toy-quadrants-cond", mapping)
    with pytest.raises(CheckpointError, match="already permuted"):
        permute_classes(import_official_checkpoint(path, PRESET, mapping), mapping)
    payload = import_official_checkpoint(path, PRESET)
    payload["trainer"]["ebm_optimizer"] = {"state": {}, "param_groups": []}
    with pytest.raises(CheckpointError, match="optimizer states"):
        permute_classes(payload, mapping)


def test_permute_classes_leaves_its_input_alone(published, class_files) -> None:
    path, _ = published
    payload = import_official_checkpoint(path, PRESET)
    before = payload["trainer"]["ebm"]["y_map.weight_orig"].clone()
    permute_classes(payload, load_class_map(*class_files))
    assert torch.equal(payload["trainer"]["ebm"]["y_map.weight_orig"], before)
    assert payload["class_order"]["permuted"] is False


# ---------------------------------------------------------------------------
# cdrl-bench import-checkpoint


def test_cli_import_with_and_without_the_class_map(published, class_files, tmp_path: Path) -> None:
    path, _ = published
    keras, clsloc = class_files
    runner = CliRunner()
    result = runner.invoke(app, ["import-checkpoint", str(path), "--preset", PRESET, "--out", str(tmp_path / "a.pt"),
                                 "--class-map-from", str(keras), "--class-map-to", str(clsloc)])
    assert result.exit_code == 0, result.output
    assert "classes: map_clsloc.txt order (npz labels), permuted from imagenet_class_index.json" in result.output
    assert load_checkpoint(tmp_path / "a.pt")[1]["class_order"]["permuted"] is True
    result = runner.invoke(app, ["import-checkpoint", str(path), "--preset", PRESET, "--out", str(tmp_path / "b.pt")])
    assert result.exit_code == 0 and "classes: published code's order" in result.output
    result = runner.invoke(app, ["import-checkpoint", str(path), "--preset", PRESET, "--out", str(tmp_path / "c.pt"),
                                 "--class-map-to", str(clsloc)])
    assert "--class-map-from and --class-map-to go together" in str(result.exception)
    assert not (tmp_path / "c.pt").exists()


def test_each_imagenet_pipeline_keys_its_own_reference_statistics() -> None:
    from cdrl.datasets import DataConfig, reference_name
    from cdrl.evaluation.reference import ReferenceKey

    def key(source: str) -> str:
        name = reference_name(DataConfig(dataset="imagenet32", split="test", imagenet_source=source))
        return ReferenceKey(name, "test", "torch-fidelity", "tf-inception", "0" * 64, 5000).filename()

    assert key("npz32") != key("npz64-resized")
    assert key("npz32").startswith("imagenet32_test_")  # statistics cached before the option keep their name


def test_samples_of_an_imported_model_record_its_class_order(published, class_files, tmp_path: Path) -> None:
    from cdrl.scoring import SamplingRequest, draw_samples

    path = tmp_path / "imported.pt"
    save_atomic(import_official_checkpoint(published[0], PRESET, class_map=load_class_map(*class_files)), path)
    _, _, protocol = draw_samples(SamplingRequest(path, 2, 1, batch_size=2), device="cpu")
    assert protocol["class_order"].startswith("map_clsloc.txt order")
