"""``cdrl-bench score``: samples from files scored under eval's protocol (cdrl.sample_files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cdrl.generation import save_samples
from cdrl.sample_files import SampleFileError, read_sample_file, reference_config, score_sample_file
from cdrl.scoring import SamplingRequest, ScoringRequest, draw_samples, score_checkpoint
from cdrl.tracking import get_run_tags
from cli import app

REPO = Path(__file__).resolve().parents[1]
DIGITS_MODEL = REPO / "results" / "gate" / "digits-cond.pt"
#: Few samples and one step per level: seconds, and every number still depends on every pixel.
SAMPLING = SamplingRequest(DIGITS_MODEL, n_samples=10, steps_per_level=1, guidance=1.0, seed=0)


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_score_gives_evals_numbers_on_the_gates_digits_samples_written_every_way(isolated_cache):
    """The gate's stored digits model, sampled as eval samples it: PNGs and npz as `sample` writes
    them, and the raw float tensor, score exactly the FID and KID that eval gives."""
    tmp_path = isolated_cache
    evaluated = score_checkpoint(SAMPLING, record=None)
    samples, config, protocol = draw_samples(SAMPLING)
    written = [save_samples(samples, tmp_path / "pngs", True, protocol),
               save_samples(samples, tmp_path / "samples.npz", True, protocol), tmp_path / "samples.pt"]
    torch.save(samples, written[2])
    protocol_keys = ("backend", "mode", "weights_sha256", "reference_name", "reference_split", "n_generated",
                     "n_reference", "kid_subsets", "kid_subset_size")
    for path in (written[0], written[2]):  # the npz through the command, below
        scored = score_sample_file(path, "digits", ScoringRequest(backend=evaluated.protocol["backend"]))
        assert {name: scored.metrics[name] for name in ("fid", "kid_mean", "kid_std")} == \
               {name: evaluated.metrics[name] for name in ("fid", "kid_mean", "kid_std")}, path
        assert {key: scored.protocol[key] for key in protocol_keys} == \
               {key: evaluated.protocol[key] for key in protocol_keys}, path
    # The command: the protocol in its output, and in MLflow when asked.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["score", str(written[1]), "--dataset", "digits", "--log", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"FID {evaluated.metrics['fid']:.2f}" in result.output and "10 gen vs 1437 digits-8px/train" in result.output
    run_id = result.output.split("MLflow run ")[1].split()[0]
    import mlflow

    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert {name: run.data.metrics[name] for name in ("fid", "kid_mean", "kid_std")} == \
           {name: evaluated.metrics[name] for name in ("fid", "kid_mean", "kid_std")}
    assert {key: run.data.params[f"eval.{key}"] for key in protocol_keys} == \
           {key: str(evaluated.protocol[key]) for key in protocol_keys}
    assert run.data.params["eval.samples_format"] == "npz" and get_run_tags(run_id, uri)["cdrl.kind"] == "eval"


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _pt(path: Path, tensor) -> Path:
    torch.save(tensor, path)
    return path


def _pngs(folder: Path, *images: Image.Image) -> Path:
    folder.mkdir()
    for index, image in enumerate(images):
        image.save(folder / f"{index:06d}.png")
    return folder


BAD_FILES = {
    "float npz": (lambda d: _npz(d / "s.npz", images=np.zeros((4, 8, 8, 1), np.float32)), "is float32"),
    "channels-first npz": (lambda d: _npz(d / "s.npz", images=np.zeros((4, 1, 8, 8), np.uint8)), "has shape 4x1x8x8"),
    "npz of no samples": (lambda d: _npz(d / "s.npz", labels=np.zeros(4)), "holds labels"),
    "pt beyond [-1, 1]": (lambda d: _pt(d / "s.pt", torch.full((4, 1, 8, 8), 2.0)), "outside [-1, 1]"),
    "pt in 0..255 floats": (lambda d: _pt(d / "s.pt", torch.full((4, 3, 8, 8), 255.0)), "outside [-1, 1]"),
    "int64 pt": (lambda d: _pt(d / "s.pt", torch.zeros((4, 1, 8, 8), dtype=torch.int64)), "is torch.int64"),
    "non-finite pt": (lambda d: _pt(d / "s.pt", torch.full((4, 1, 8, 8), float("nan"))), "non-finite"),
    "channels-last pt": (lambda d: _pt(d / "s.pt", torch.zeros((4, 8, 8, 3))), "has shape 4x8x8x3"),
    "a dict in a pt": (lambda d: _pt(d / "s.pt", {"images": torch.zeros(4, 1, 8, 8)}), "holds a dict"),
    "one sample": (lambda d: _pt(d / "s.pt", torch.zeros((1, 1, 8, 8))), "at least 2"),
    "RGBA PNGs": (lambda d: _pngs(d / "p", *[Image.new("RGBA", (8, 8))] * 2), "is a RGBA PNG"),
    "PNGs of two sizes": (lambda d: _pngs(d / "p", Image.new("L", (8, 8)), Image.new("L", (9, 9))), "one size"),
    "no PNGs": (lambda d: _pngs(d / "p"), "holds no .png files"),
    "another suffix": (lambda d: _npz(d / "s.npz", images=np.zeros((4, 8, 8, 1), np.uint8)).rename(d / "s.jpg"),
                       "neither a folder of PNGs"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_wrong_shapes_ranges_and_dtypes_are_refused_in_one_line(tmp_path, name):
    make, named = BAD_FILES[name]
    path = make(tmp_path)
    with pytest.raises(SampleFileError, match="^[^\n]*$") as error:
        read_sample_file(path)
    assert named in str(error.value) and str(path) in str(error.value)


def test_samples_that_do_not_fit_the_reference_are_refused(tmp_path):
    digits = read_sample_file(_npz(tmp_path / "d.npz", images=np.zeros((4, 8, 8, 1), np.uint8)))
    with pytest.raises(SampleFileError, match="1x8x8 images .* which cifar10 is not scored at .* its shape, 3x32x32$"):
        reference_config(digits, "cifar10")
    wide = read_sample_file(_pt(tmp_path / "w.pt", torch.zeros((4, 1, 8, 16))))
    with pytest.raises(SampleFileError, match="pass square samples"):
        reference_config(wide, "digits")
    with pytest.raises(SampleFileError, match="holds images but toy-checkerboard is scored on 2-D points"):
        reference_config(digits, "toy-checkerboard")
    with pytest.raises(SampleFileError, match="data.\\* settings of the reference only"):
        reference_config(digits, "digits", ["sampler.tweedie_step=false"])
    points = read_sample_file(_npz(tmp_path / "p.npz", points=np.zeros((4, 2), np.float32)))
    assert reference_config(points, "toy-checkerboard").data.dataset == "toy-checkerboard"
    assert reference_config(digits, "digits").data.image_size == 8
    upsampled = read_sample_file(_pt(tmp_path / "u.pt", torch.zeros((4, 3, 16, 16))))  # digits take other sizes
    assert (reference_config(upsampled, "digits").data.image_size, reference_config(upsampled, "digits").data.channels) \
        == (16, 3)


def test_the_command_refuses_a_bad_file_in_one_line_and_writes_nothing(tmp_path):
    bad = _pt(tmp_path / "s.pt", torch.full((4, 1, 8, 8), 2.0))
    completed = subprocess.run([sys.executable, "-m", "cli", "score", str(bad), "--dataset", "digits"],
                               capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 2
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "outside [-1, 1]" in lines[0], completed.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.pt"]
