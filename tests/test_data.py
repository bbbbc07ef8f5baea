"""Tests of cdrl.datasets on tiny archives written in the real on-disk formats."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from benchmarks.archives import asymmetric_images, images64, write_cifar10, write_imagenet32, write_imagenet64
from cdrl.datasets import (
    DATASETS,
    DataConfig,
    DatasetError,
    DatasetInfo,
    TensorPairDataset,
    UNCONDITIONAL_LABEL,
    batches_per_epoch,
    build_dataset,
    dataset_info,
    infinite_batches,
    item_shape,
    reference_name,
    register,
    toy_in_support,
    toy_mode_index,
    toy_sample,
)
from cdrl.datasets.imagenet32 import resize_as_published

TOY_NAMES = ["toy-checkerboard", "toy-8gaussians", "toy-2rings", "toy-quadrants"]


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A cifar-10-batches-py/ like the official one's, but with 4 images per train batch and 3 test images."""
    return write_cifar10(tmp_path)


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    """Two train batches (one np.savez, one np.savez_compressed) and a val file, with 1-based labels."""
    return write_imagenet32(tmp_path)


def expected_image(row: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1.0


def published_image(row: np.ndarray) -> torch.Tensor:
    """What the published code's test transform makes of one 64x64 row: a (3, 32, 32) tensor in [-1, 1]."""
    transform = transforms.Compose([transforms.Resize(32, antialias=True), transforms.CenterCrop(32),
                                    transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    return transform(Image.fromarray(row.reshape(3, 64, 64).transpose(1, 2, 0)))


@pytest.fixture
def imagenet64_dir(tmp_path: Path) -> Path:
    """Batches 1 (np.savez) and 6 (np.savez_compressed) in the two folders the train zips unpack to, and a val file."""
    return write_imagenet64(tmp_path)


# ---------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_reads_python_archive_layout(cifar_dir: Path) -> None:
    config = DataConfig("cifar10", data_dir=str(cifar_dir), download=False, horizontal_flip=False, class_conditional=True)
    dataset = build_dataset(config)
    assert len(dataset) == 20
    assert dataset.classes[0] == "airplane"
    for index in (0, 7, 19):
        x, label = dataset[index]
        batch, row = divmod(index, 4)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, expected_image(asymmetric_images(4, seed=batch + 1)[row]))
        assert label == (batch + 1 + row) % 10
    assert x.min() == -1.0 and x.max() == 1.0
    assert item_shape(config) == (3, 32, 32)


def test_cifar10_test_split_and_unconditional_labels(cifar_dir: Path) -> None:
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), split="test", download=False))
    assert len(dataset) == 3
    assert [dataset[i][1] for i in range(3)] == [UNCONDITIONAL_LABEL] * 3
    # The test split is never flipped, even with flips on by default.
    assert torch.equal(dataset[0][0], expected_image(asymmetric_images(3, seed=0)[0]))


def test_cifar10_train_flips_half_of_the_time(cifar_dir: Path) -> None:
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False))
    original = expected_image(asymmetric_images(4, seed=1)[0])
    torch.manual_seed(0)
    draws = [dataset[0][0] for _ in range(200)]
    flipped = sum(torch.equal(x, original.flip(-1)) for x in draws)
    assert sum(torch.equal(x, original) for x in draws) + flipped == 200
    assert 70 < flipped < 130


def test_cifar10_missing_without_download_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"CIFAR-10 not found in .*--data-dir.*cifar-10-batches-py/"):
        build_dataset(DataConfig("cifar10", data_dir=str(tmp_path), download=False))


def test_cifar10_failed_download_names_the_fix_and_leaves_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, root: str, **kwargs: object) -> None:
        # As torchvision does: the folder and a partial archive exist before the network fails.
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("cdrl.datasets.cifar10.download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match=r"download failed \(no network\?\): pass --data-dir") as caught:
        build_dataset(DataConfig("cifar10", data_dir=str(tmp_path / "new")))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "new").exists()
    # A folder that was there before is the user's: it stays.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match="download failed"):
        build_dataset(DataConfig("cifar10", data_dir=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cifar10_rejects_a_malformed_batch(cifar_dir: Path) -> None:
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DatasetError, match="data_batch_3 is not a batch"):
        build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False))


class _RunsCode:
    """What a crafted pickle holds: unpickling it calls ``function(*arguments)``."""

    def __init__(self, function: object, *arguments: object):
        self.function, self.arguments = function, arguments

    def __reduce__(self) -> tuple:
        return self.function, self.arguments


@pytest.mark.parametrize("make, loaded", [
    (lambda marker: _RunsCode(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),  # posix.system
    (lambda marker: _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    (lambda marker: {b"data": _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()"), b"labels": [0]},
     "builtins.exec"),
], ids=["system", "exec", "exec-inside-the-dict"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_refuses_a_pickle_that_runs_code(cifar_dir: Path, make, loaded: str, protocol: int) -> None:
    marker = cifar_dir / "pwned"
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps(make(marker), protocol=protocol))
    with pytest.raises(DatasetError) as caught:
        build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False))
    assert not marker.exists(), "the crafted pickle ran its code"
    assert str(caught.value) == (f"{batch} tries to load {loaded}: not a CIFAR-10 batch; delete {batch.parent} and "
                                 "download again")


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the official archive: protocol 2, str keys, numpy.core globals."""
    raw = data.tobytes()
    return (b"\x80\x02}q\x00(U\x04data"
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"  # empty uint8 array,
            b"(K\x01" + b"K%c" % len(data) + b"M\x00\x0c\x86"  # then its state: version 1, shape (N, 3072),
            b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype,
            b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"  # C order and the pixels as a Python 2 str
            b"U\x06labels](" + b"".join(b"K%c" % label for label in labels) + b"eU\x0bbatch_labelU\x0e"
            b"training batchu.")


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_cifar10_reads_batches_of_every_pickle_protocol(cifar_dir: Path, protocol: int) -> None:
    folder = cifar_dir / "cifar-10-batches-py"
    for number in range(1, 6):
        batch = {b"batch_label": b"training batch", b"labels": [(number + i) % 10 for i in range(4)],
                 b"data": asymmetric_images(4, seed=number), b"filenames": [b"x.png", b""] * 2}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch, protocol=protocol))
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False, horizontal_flip=False,
                                       class_conditional=True))
    image, label = dataset[4]
    assert torch.equal(image, expected_image(asymmetric_images(4, seed=2)[0])) and label == 2


def test_cifar10_reads_a_python2_pickled_batch(cifar_dir: Path) -> None:
    images = asymmetric_images(4, seed=9)
    (cifar_dir / "cifar-10-batches-py" / "data_batch_5").write_bytes(_python2_batch(images, [9, 0, 1, 2]))
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False, horizontal_flip=False,
                                       class_conditional=True))
    assert len(dataset) == 20
    image, label = dataset[19]
    assert torch.equal(image, expected_image(images[3])) and label == 2


def test_cifar10_only_at_native_size(cifar_dir: Path) -> None:
    with pytest.raises(DatasetError, match="32x32"):
        build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False, image_size=64))


# ---------------------------------------------------------------------------
# ImageNet 32x32


def test_imagenet32_reads_npz_batches(imagenet_dir: Path) -> None:
    config = DataConfig("imagenet32", data_dir=str(imagenet_dir), horizontal_flip=False, class_conditional=True)
    with pytest.warns(UserWarning, match="2 of 10 batch files"):
        dataset = build_dataset(config)
    assert len(dataset) == 5
    # np.savez stores arrays uncompressed: memory-mapped; the compressed batch is read into memory.
    assert isinstance(dataset.chunks[0], np.memmap) and not isinstance(dataset.chunks[1], np.memmap)
    assert [dataset[i][1] for i in range(5)] == [0, 499, 999, 1, 2]
    assert torch.equal(dataset[1][0], expected_image(asymmetric_images(3, seed=10)[1]))
    assert torch.equal(dataset[3][0], expected_image(asymmetric_images(2, seed=11)[0]))
    assert dataset[4][0].min() == -1.0 and dataset[4][0].max() == 1.0


def test_imagenet32_val_split(imagenet_dir: Path) -> None:
    dataset = build_dataset(DataConfig("imagenet32", data_dir=str(imagenet_dir), split="test", class_conditional=True))
    assert len(dataset) == 2 and [dataset[0][1], dataset[1][1]] == [999, 0]
    assert torch.equal(dataset[0][0], expected_image(asymmetric_images(2, seed=12)[0]))


def test_imagenet32_missing_names_where_files_go(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"Imagenet32_train_npz/train_data_batch_1\.npz.*--data-dir"):
        build_dataset(DataConfig("imagenet32", data_dir=str(tmp_path)))


def test_imagenet32_rejects_zero_based_labels(tmp_path: Path) -> None:
    val = tmp_path / "Imagenet32_val_npz"
    val.mkdir()
    np.savez(val / "val_data.npz", data=asymmetric_images(2, seed=0), labels=[0, 1])
    with pytest.raises(DatasetError, match="1-based"):
        build_dataset(DataConfig("imagenet32", data_dir=str(tmp_path), split="test"))


@pytest.mark.parametrize("array", ["data", "labels"])
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_imagenet32_never_unpickles_an_object_array(tmp_path: Path, array: str, save) -> None:
    val = tmp_path / "Imagenet32_val_npz"
    val.mkdir()
    marker = tmp_path / "pwned"
    crafted = np.empty(1, dtype=object)
    crafted[0] = _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    arrays = {"data": asymmetric_images(1, seed=0), "labels": np.array([1]), array: crafted}
    save(val / "val_data.npz", **arrays)  # object arrays are stored as pickles
    with pytest.raises(DatasetError) as caught:
        build_dataset(DataConfig("imagenet32", data_dir=str(tmp_path), split="test"))
    assert not marker.exists(), "the crafted pickle ran its code"
    assert str(val / "val_data.npz") in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------
# ImageNet 64x64 resized to 32x32, as the published code prepares ImageNet


def test_imagenet64_resized_train_reads_both_part_folders(imagenet64_dir: Path) -> None:
    config = DataConfig("imagenet32", data_dir=str(imagenet64_dir), imagenet_source="npz64-resized",
                        horizontal_flip=False, class_conditional=True)
    with pytest.warns(UserWarning, match="2 of 10 batch files"):
        dataset = build_dataset(config)
    assert len(dataset) == 5 and item_shape(config) == (3, 32, 32)
    assert isinstance(dataset.chunks[0], np.memmap)
    assert [dataset[i][1] for i in range(5)] == [0, 499, 999, 1, 2]
    for index, (rows, row) in {1: (images64(3, seed=20), 1), 4: (images64(2, seed=21), 1)}.items():
        x, _ = dataset[index]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.allclose(x, published_image(rows[row]), rtol=0, atol=1e-6)
    assert x.min() == -1.0 and x.max() == 1.0


def test_imagenet64_resized_val_split(imagenet64_dir: Path) -> None:
    config = DataConfig("imagenet32", data_dir=str(imagenet64_dir), split="test", imagenet_source="npz64-resized",
                        class_conditional=True)
    dataset = build_dataset(config)
    assert len(dataset) == 2 and [dataset[0][1], dataset[1][1]] == [999, 0]
    assert torch.allclose(dataset[0][0], published_image(images64(2, seed=22)[0]), rtol=0, atol=1e-6)


def test_resize_as_published_is_torchvisions_resize_and_centre_crop_of_the_pil_image() -> None:
    rng = np.random.default_rng(0)
    for height, width in ((64, 64), (64, 80)):  # the real images are square; 64x80 shows the crop
        pixels = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
        pil = Image.fromarray(pixels.transpose(1, 2, 0))
        expected = transforms.CenterCrop(32)(transforms.Resize(32, antialias=True)(pil))
        resized = resize_as_published(torch.from_numpy(pixels))
        assert resized.dtype == torch.uint8 and resized.shape == (3, 32, 32)
        assert torch.equal(resized, torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_imagenet64_missing_names_where_files_go(tmp_path: Path) -> None:
    for split, where in (("train", r"Imagenet64_train\*_npz/train_data_batch_1\.npz"),
                         ("test", r"Imagenet64_val_npz/val_data\.npz")):
        config = DataConfig("imagenet32", data_dir=str(tmp_path), split=split, imagenet_source="npz64-resized")
        with pytest.raises(DatasetError, match=rf"ImageNet64 {split} split not found.*Imagenet64_val_npz\.zip.*"
                                               rf"{where}.*--data-dir") as caught:
            build_dataset(config)
        assert "\n" not in str(caught.value)


def test_imagenet64_rejects_32x32_rows_and_duplicated_batches(imagenet64_dir: Path) -> None:
    np.savez(imagenet64_dir / "Imagenet64_val_npz" / "val_data.npz", data=asymmetric_images(2, seed=0), labels=[1, 2])
    with pytest.raises(DatasetError, match=r"not an ImageNet64 batch \(expected 'data' uint8 \(N, 12288\)"):
        build_dataset(DataConfig("imagenet32", data_dir=str(imagenet64_dir), split="test",
                                 imagenet_source="npz64-resized"))
    merged = imagenet64_dir / "Imagenet64_train_npz"
    merged.mkdir()
    (merged / "train_data_batch_6.npz").write_bytes(
        (imagenet64_dir / "Imagenet64_train_part2_npz" / "train_data_batch_6.npz").read_bytes())
    with pytest.raises(DatasetError, match=r"train_data_batch_6\.npz is in more than one"):
        build_dataset(DataConfig("imagenet32", data_dir=str(imagenet64_dir), imagenet_source="npz64-resized"))


def test_imagenet_source_is_a_checked_option_of_imagenet32_only() -> None:
    from cdrl.config import ConfigError, apply_overrides, preset

    config = apply_overrides(preset("imagenet32-cond"), ["data.imagenet_source=npz64-resized"])
    assert config.data.imagenet_source == "npz64-resized"
    with pytest.raises(ConfigError, match="must be one of npz32, npz64-resized"):
        apply_overrides(preset("imagenet32-cond"), ["data.imagenet_source=npz64"])
    with pytest.raises(DatasetError, match="applies to imagenet32 only"):
        build_dataset(DataConfig("digits", imagenet_source="npz64-resized"))
    with pytest.raises(DatasetError, match="unknown imagenet_source 'png'"):
        build_dataset(DataConfig("imagenet32", imagenet_source="png"))


# ---------------------------------------------------------------------------
# scikit-learn digits


def test_digits_shapes_range_and_split() -> None:
    train = build_dataset(DataConfig("digits", class_conditional=True))
    test = build_dataset(DataConfig("digits", split="test"))
    assert (len(train), len(test)) == (1437, 360)
    x, label = train[0]
    assert x.shape == (1, 16, 16) == item_shape(DataConfig("digits"))
    assert 0 <= label <= 9 and test[0][1] == UNCONDITIONAL_LABEL
    assert train.x.min() >= -1.0 and train.x.max() <= 1.0 and train.x.min() == -1.0
    rgb = build_dataset(DataConfig("digits", image_size=32, channels=3))
    assert rgb[0][0].shape == (3, 32, 32)
    assert torch.equal(rgb[0][0][0], rgb[0][0][2])


def test_each_digits_size_is_its_own_reference() -> None:
    """8x8 and 16x16 digits are other pixels for the Inception: one cached reference must not serve both."""
    names = {size: reference_name(DataConfig("digits", image_size=size)) for size in (8, 16, 32)}
    assert len(set(names.values())) == 3
    assert reference_name(DataConfig("digits")) == names[16] == "digits-16px"
    assert reference_name(DataConfig("digits", image_size=8, channels=3)) == names[8]


def test_digits_refuse_flips() -> None:
    with pytest.raises(DatasetError, match="not flipped"):
        build_dataset(DataConfig("digits", horizontal_flip=True))


# ---------------------------------------------------------------------------
# 2-D toy densities


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_dataset_is_a_fixed_draw(name: str) -> None:
    config = DataConfig(name, toy_size=1000, class_conditional=True)
    first, again = build_dataset(config), build_dataset(config)
    test = build_dataset(DataConfig(name, toy_size=1000, split="test"))
    assert len(first) == 1000 and first[0][0].shape == (2,) == item_shape(config)
    assert torch.equal(first.x, again.x) and not torch.equal(first.x, test.x)
    assert set(first.labels.tolist()) == set(range(dataset_info(name).num_classes))
    assert set(test.labels.tolist()) == {UNCONDITIONAL_LABEL}


def test_checkerboard_support_and_modes_are_exact() -> None:
    points, labels = toy_sample("toy-checkerboard", 20_000, torch.Generator().manual_seed(0))
    assert toy_in_support("toy-checkerboard", points).float().mean().item() == 1.0
    assert torch.equal(toy_mode_index("toy-checkerboard", points), labels)
    assert points.abs().max() <= 8.0
    # The published (-1, 0, -1, -2) square is x in [-4, 0], y in [-8, -4]; unlisted squares are outside.
    probes = torch.tensor([[-2.0, -6.0], [-2.0, -2.0], [2.0, 2.0], [6.0, 2.0], [9.0, 0.0]])
    assert toy_mode_index("toy-checkerboard", probes).tolist() == [4, -1, -1, 0, -1]


def test_quadrants_label_the_checkerboard_by_quadrant() -> None:
    points, labels = toy_sample("toy-quadrants", 2000, torch.Generator().manual_seed(0))
    assert toy_in_support("toy-quadrants", points).all()
    left_below = (points[:, 0] < 0).long() + 2 * (points[:, 1] < 0).long()
    assert torch.equal(labels, torch.tensor([0, 1, 3, 2])[left_below])


@pytest.mark.parametrize(("name", "mass"), [("toy-8gaussians", 1 - np.exp(-4.5)), ("toy-2rings", 0.9973)])
def test_mixture_support_holds_the_documented_mass(name: str, mass: float) -> None:
    points, labels = toy_sample(name, 50_000, torch.Generator().manual_seed(0))
    inside = toy_in_support(name, points)
    assert abs(inside.float().mean().item() - mass) < 0.003
    assert torch.equal(toy_mode_index(name, points)[inside], labels[inside])
    assert toy_mode_index(name, torch.zeros(1, 2)).item() == -1


# ---------------------------------------------------------------------------
# Registry


def test_registry_lists_every_dataset() -> None:
    assert set(DATASETS) == {"cifar10", "cifar100", "celeba", "imagenet32", "digits", "digits-colour", "digits-0to4",
                             "digits-5to9", "photo-patches", *TOY_NAMES}
    assert dataset_info("cifar10").num_classes == 10 and dataset_info("imagenet32").num_classes == 1000
    assert not dataset_info("toy-2rings").is_image
    known = ("cifar10, cifar100, celeba, imagenet32, digits, digits-colour, digits-0to4, digits-5to9, photo-patches, "
             "toy-checkerboard, toy-8gaussians, toy-2rings, toy-quadrants")
    for lookup in (dataset_info, build_dataset, item_shape, reference_name):
        with pytest.raises(DatasetError) as caught:
            lookup("mnist" if lookup is dataset_info else DataConfig("mnist"))
        assert str(caught.value) == f"unknown dataset 'mnist': choose one of {known}"
    with pytest.raises(DatasetError, match="unknown split"):
        build_dataset(DataConfig("toy-2rings", split="val"))


def test_a_registered_dataset_is_found_everywhere() -> None:
    """A module's one register() call is all the front door needs: info, shape, build, reference name."""

    def build(config: DataConfig) -> TensorPairDataset:
        return TensorPairDataset(torch.zeros(3, 2, 5, 5), torch.full((3,), UNCONDITIONAL_LABEL), classes=["a", "b"])

    info = register(DatasetInfo("throwaway", "a test's dataset", (2, 5, 5), 2, True, None, build,
                                class_names=("a", "b")))
    try:
        assert dataset_info("throwaway") is info and list(DATASETS)[-1] == "throwaway"
        assert item_shape(DataConfig("throwaway")) == (2, 5, 5) == build_dataset(DataConfig("throwaway"))[0][0].shape
        assert item_shape(DataConfig("throwaway", image_size=7, channels=1)) == (1, 7, 7)
        assert reference_name(DataConfig("throwaway")) == "throwaway"
        with pytest.raises(DatasetError, match="applies to imagenet32 only: drop it for throwaway"):
            build_dataset(DataConfig("throwaway", imagenet_source="npz64-resized"))
        with pytest.raises(DatasetError, match="'throwaway' is registered twice"):
            register(info)
    finally:
        del DATASETS["throwaway"]
    with pytest.raises(DatasetError, match="unknown dataset 'throwaway'"):
        item_shape(DataConfig("throwaway"))


# ---------------------------------------------------------------------------
# Infinite batches


def index_dataset(size: int) -> TensorPairDataset:
    return TensorPairDataset(torch.arange(size).float().unsqueeze(1), torch.arange(size), classes=[])


def take(stream, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(stream) for _ in range(count)]


def test_resume_from_an_iteration_repeats_the_stream_with_flips(cifar_dir: Path) -> None:
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False))
    assert batches_per_epoch(len(dataset), batch_size=3) == 6
    full = take(infinite_batches(dataset, batch_size=3, seed=7), 14)
    resumed = take(infinite_batches(dataset, batch_size=3, seed=7, start_iteration=8), 6)
    for (x, labels), (x_again, labels_again) in zip(full[8:], resumed):
        assert torch.equal(x, x_again) and torch.equal(labels, labels_again)
    # Batches do differ across epochs, and flips are on.
    assert not torch.equal(full[0][0], full[6][0])


def test_worker_count_does_not_change_the_stream(cifar_dir: Path) -> None:
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False, class_conditional=True))
    in_process = take(infinite_batches(dataset, batch_size=4, seed=3), 7)
    with_workers = take(infinite_batches(dataset, batch_size=4, seed=3, num_workers=2), 7)
    for (x, labels), (x_again, labels_again) in zip(in_process, with_workers):
        assert torch.equal(x, x_again) and torch.equal(labels, labels_again)


def test_ranks_split_each_epoch_without_overlap() -> None:
    dataset = index_dataset(25)
    per_epoch = batches_per_epoch(25, batch_size=4, world_size=2)
    assert per_epoch == 3
    epochs = []
    for rank in range(2):
        batches = take(infinite_batches(dataset, batch_size=4, seed=1, rank=rank, world_size=2), 2 * per_epoch)
        epochs.append([torch.cat([labels for _, labels in batches[e * 3 : e * 3 + 3]]) for e in range(2)])
    for epoch in range(2):
        seen = torch.cat([epochs[0][epoch], epochs[1][epoch]]).tolist()
        assert len(seen) == len(set(seen)) == 24
    assert epochs[0][0].tolist() != epochs[0][1].tolist()


def test_stream_leaves_the_global_rng_alone(cifar_dir: Path) -> None:
    dataset = build_dataset(DataConfig("cifar10", data_dir=str(cifar_dir), download=False))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(infinite_batches(dataset, batch_size=4, seed=0), 3)
    assert torch.equal(torch.rand(3), expected)


def test_stream_arguments_are_checked_at_the_call() -> None:
    with pytest.raises(DatasetError, match="no full batch"):
        infinite_batches(index_dataset(5), batch_size=8, seed=0)
    with pytest.raises(DatasetError, match="outside world_size"):
        infinite_batches(index_dataset(5), batch_size=1, seed=0, rank=2, world_size=2)
