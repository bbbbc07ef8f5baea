"""The commands of one model: list the presets, import a published checkpoint, train, sample, score a checkpoint
or files of samples, build reference statistics, and time a preset (perf). Each parses its options, builds the request values and calls
one function of ``cdrl``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from cdrl.errors import CdrlBenchError
from cdrl.files import check_writable
from cdrl.typed import key_values
from cli_commands.common import (BACKEND, BATCH_SIZE, CHECKPOINT, DATA_DIR, DEVICE, EXPERIMENT, GUIDANCE, LIVE, MODE,
                                 N_REFERENCE, PICK, REFERENCE_SPLIT, RICH_OR_JSON, SAMPLER_SET, SEED, STEPS, THREADS,
                                 TRACKING_URI, Mode, Pick, Split, backend_name, check_store, compute_setup, console,
                                 data_folder, progress)


def presets(output_format: Literal["rich", "json"] = RICH_OR_JSON) -> None:
    """List the model presets with their parameter counts.

    Example: cdrl-bench presets --format json
    """
    import json

    from cdrl.config import PRESETS, parameter_counts

    listed = []
    for name, build in PRESETS.items():
        config = build()
        ebm_count, initializer_count = parameter_counts(config)
        listed.append({"preset": name, "energy_network_parameters": ebm_count,
                       "initializer_parameters": initializer_count, "description": config.description})
    if output_format == "json":
        typer.echo(json.dumps(listed, indent=2))
        return
    table = Table(title="cdrl-bench presets")
    table.add_column("preset")
    table.add_column("energy network", justify="right")
    table.add_column("initializer", justify="right")
    table.add_column("description")
    for row in listed:
        table.add_row(row["preset"], f"{row['energy_network_parameters']:,}", f"{row['initializer_parameters']:,}",
                      row["description"])
    console.print(table)


def import_checkpoint(
    path: Path = typer.Argument(..., help="Checkpoint saved by the authors' published CDRL code (.pth.tar)."),
    preset: str = typer.Option(..., "--preset", help="Preset whose networks the checkpoint holds, e.g. cifar10."),
    out: Path = typer.Option(..., "--out", help="Where to write the cdrl-bench checkpoint."),
    class_map_from: Path = typer.Option(
        None, "--class-map-from", help="Class-conditional ImageNet only: the published code's class order, Keras' "
                                       "imagenet_class_index.json (WNIDs sorted). With --class-map-to, the "
                                       "checkpoint's classes are reordered to our npz labels, so that --class c "
                                       "draws npz label c + 1; without both, they stay in the published order."),
    class_map_to: Path = typer.Option(
        None, "--class-map-to", help="Class-conditional ImageNet only: our class order, the map_clsloc.txt that "
                                     "numbers the downsampled-ImageNet npz labels (lines 'n02119789 1 kit_fox')."),
) -> None:
    """Convert a published-code checkpoint (live and EMA weights) into cdrl-bench's format.

    Example: cdrl-bench import-checkpoint best.pth.tar --preset cifar10 --out cifar10.pt
    """
    from cdrl.checkpoint import import_official_checkpoint, save_atomic
    from cdrl.imagenet_classes import load_class_map

    check_writable(out, "--out")
    if (class_map_from is None) != (class_map_to is None):
        raise CdrlBenchError("--class-map-from and --class-map-to go together: pass imagenet_class_index.json "
                             "and map_clsloc.txt, or neither")
    class_map = load_class_map(class_map_from, class_map_to) if class_map_from is not None else None
    payload = import_official_checkpoint(path, preset, class_map)
    save_atomic(payload, out)
    classes = f", classes: {payload['class_order']['description']}" if "class_order" in payload else ""
    console.print(f"wrote {out} (preset {preset}, EMA weights: "
                  f"{'yes' if 'ebm_ema' in payload['trainer'] else 'no'}{classes})", highlight=False, soft_wrap=True)


def train(
    preset: str = typer.Option(None, "--preset", help="Preset to train, e.g. tiny, digits, toy-checkerboard, cifar10."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. training.ebm_lr=2e-4 "
                                                          "or run.checkpoint_every=500 (repeatable)."),
    data_dir: Path = DATA_DIR,
    iterations: int = typer.Option(None, "--iterations", min=1, help="Training iterations (training.iterations)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/PRESET-TIMESTAMP)."),
    resume: str = typer.Option(None, "--resume", help="Continue a run: a checkpoint, a run folder or an MLflow run id."),
    tracking_uri: str = TRACKING_URI,
    experiment: str = EXPERIMENT,
    tags: list[str] = typer.Option([], "--tag", help="Extra MLflow tag key=value, e.g. cdrl.suite=toy (repeatable)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda[:N] (default: this rank's GPU if any)."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads of each process "
                                                              "(performance.threads; default: torch's, all cores)."),
) -> None:
    """Train a preset (or resume a run) with MLflow tracking and resumable checkpoints; works under torchrun.

    Example: cdrl-bench train --preset toy-checkerboard --set run.select_every=500 --set run.select_samples=1000
    """
    from cdrl.config import ConfigError, preset as build_preset
    from cdrl.train_loop import train as run_training

    if preset is not None and resume is not None:
        raise ConfigError("--preset and --resume exclude each other: a resumed run keeps its preset")
    settings = list(overrides)
    if data_dir is not None:
        settings.append(f"data.data_dir={data_folder(data_dir)}")
    if iterations is not None:
        settings.append(f"training.iterations={iterations}")
    if threads is not None:
        settings.append(f"performance.threads={threads}")
    check_writable(out, "--out", folder=True)
    device = compute_setup(None, device)
    extra_tags = dict(key_values(tags, "--tag", "cdrl.suite=toy"))
    result = run_training(build_preset(preset) if preset is not None else None, resume=resume, overrides=settings,
                          out=out, tracking_uri=tracking_uri, experiment_name=experiment, tags=extra_tags,
                          device=device)
    if result.run_id is not None:
        console.print(f"trained {result.iteration} iterations into {result.run_dir} "
                      f"(checkpoint {result.checkpoint}, MLflow run {result.run_id})", highlight=False, soft_wrap=True)


def sample(
    checkpoint: str = CHECKPOINT,
    steps: int = STEPS,
    n: int = typer.Option(64, "--n-samples", "--n", min=1, max=10**9, help="Number of samples (--n for short, "
                                                                       "except under torchrun, whose own options "
                                                                       "begin with --n)."),
    out: Path = typer.Option(..., "--out", help="Folder of lossless PNGs, or FILE.npz (uint8 images / 2-D points)."),
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    guidance: float = GUIDANCE,
    class_label: int = typer.Option(None, "--class", min=0, help="Class to draw (0-based; default: all classes in "
                                                                  "turn)."),
    live: bool = LIVE,
    device: str = DEVICE,
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow store, to resolve a run id (default "
                                                                  "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    pick: Pick = PICK,
    sampler_overrides: list[str] = SAMPLER_SET,
    threads: int = THREADS,
) -> None:
    """Draw samples from a checkpoint (EMA weights by default) and save them losslessly.

    Example: cdrl-bench sample runs/digits-cond --n 64 --steps 5 --guidance 2 --class 7 --out sevens/
    """
    from cdrl.distributed import process_group
    from cdrl.datasets import dataset_info
    from cdrl.generation import check_sample_output, save_samples
    from cdrl.run_folder import locate_checkpoint
    from cdrl.scoring import SamplingRequest, draw_samples

    check_writable(out, "--out", folder=out.suffix != ".npz")  # a folder of PNGs, or one FILE.npz

    def is_image(config) -> bool:
        return dataset_info(config.data.dataset).is_image

    device = compute_setup(threads, device)
    store = check_store(tracking_uri)
    located = locate_checkpoint(checkpoint, store, pick)
    request = SamplingRequest(located.path, n, steps, seed, batch_size, guidance, class_label, not live,
                              tuple(sampler_overrides))
    # Under torchrun every rank draws its share of the samples; rank 0 writes them.
    with process_group(device) as (ranks, device), progress(ranks):
        samples, config, protocol = draw_samples(request, device=device,
                                                 check_config=lambda config: check_sample_output(out, is_image(config)))
    if not ranks.is_main:
        return
    written = save_samples(samples, out, is_image(config), {**protocol, "checkpoint_selection": located.selection})
    console.print(f"wrote {n} samples to {written} ({protocol['noise_levels']}x{protocol['steps_per_level']} steps, "
                  f"{protocol['weights']} weights, seed {seed})", highlight=False, soft_wrap=True)


def evaluate(
    checkpoint: str = CHECKPOINT,
    steps: int = STEPS,
    n_samples: int = typer.Option(5000, "--n-samples", min=2, max=10**9, help="Generated images (the paper's tables "
                                                                              "use 50,000)."),
    backend: str = BACKEND,
    mode: Mode = MODE,
    reference_split: Split = REFERENCE_SPLIT,
    n_reference: int = N_REFERENCE,
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    guidance: float = GUIDANCE,
    class_label: int = typer.Option(None, "--class", min=0, help="Score one class only (0-based)."),
    live: bool = LIVE,
    data_dir: Path = DATA_DIR,
    device: str = DEVICE,
    tracking_uri: str = TRACKING_URI,
    experiment: str = EXPERIMENT,
    pick: Pick = PICK,
    sampler_overrides: list[str] = SAMPLER_SET,
    threads: int = THREADS,
) -> None:
    """Score a checkpoint: FID/KID (IS when the extractor has logits), or exact metrics for 2-D toys; logs to MLflow.

    Example: cdrl-bench eval runs/c10 --n-samples 50000 --steps 15 --data-dir ~/data
    """
    from cdrl.distributed import process_group
    from cdrl.run_folder import locate_checkpoint
    from cdrl.scoring import Recording, SamplingRequest, ScoringRequest, score_checkpoint

    device = compute_setup(threads, device)
    store = check_store(tracking_uri)
    located = locate_checkpoint(checkpoint, store, pick)
    sampling = SamplingRequest(located.path, n_samples, steps, seed, batch_size, guidance, class_label, not live,
                               tuple(sampler_overrides))
    protocol = ScoringRequest(reference_split=reference_split, n_reference=n_reference, backend=backend_name(backend),
                              mode=mode, data_dir=data_folder(data_dir))
    # Under torchrun every rank draws its share of the samples; rank 0 scores them and logs one run.
    with process_group(device) as (ranks, device), progress(ranks):
        result = score_checkpoint(sampling, protocol, device=device, checkpoint_selection=located.selection,
                                  record=Recording(store, experiment))
    if result is not None:
        console.print(result.protocol_line, highlight=False, soft_wrap=True)
        console.print(f"MLflow run {result.run_id}", highlight=False)


def score(
    samples: Path = typer.Argument(..., help="A folder of PNGs, a .npz (uint8 'images' N x H x W x C, or 'arr_0') or "
                                             "a .pt tensor (float N x C x H x W in [-1, 1], or uint8)."),
    dataset: str = typer.Option(..., "--dataset", help="Reference dataset the samples are of, e.g. cifar10 (its "
                                                       "image size and channels are the samples')."),
    backend: str = BACKEND,
    mode: Mode = MODE,
    reference_split: Split = REFERENCE_SPLIT,
    n_reference: int = N_REFERENCE,
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed of KID's subsets (eval's --seed)."),
    reference_overrides: list[str] = typer.Option([], "--set", help="Reference data setting data.X=value, e.g. "
                                                                    "data.imagenet_source=npz64-resized (repeatable)."),
    data_dir: Path = DATA_DIR,
    log: bool = typer.Option(False, "--log", help="Also record the score as an MLflow run (--tracking-uri)."),
    tracking_uri: str = TRACKING_URI,
    experiment: str = EXPERIMENT,
    device: str = DEVICE,
    threads: int = THREADS,
) -> None:
    """Score samples from files (another model's, the authors' released ones) under eval's protocol.

    Example: cdrl-bench score samples/ --dataset cifar10 --data-dir ~/data --log
    """
    from cdrl.sample_files import score_sample_file
    from cdrl.scoring import Recording, ScoringRequest

    device = compute_setup(threads, device)
    # A store given by mistake without --log is refused too.
    store = check_store(tracking_uri) if log or tracking_uri is not None else None
    protocol = ScoringRequest(reference_split=reference_split, n_reference=n_reference, backend=backend_name(backend),
                              mode=mode, reference_overrides=tuple(reference_overrides),
                              data_dir=data_folder(data_dir))
    with progress():
        result = score_sample_file(samples, dataset, protocol, seed=seed, device=device,
                                   record=Recording(store, experiment) if log else None)
    console.print(result.protocol_line, highlight=False, soft_wrap=True)
    if result.run_id:
        console.print(f"MLflow run {result.run_id}", highlight=False)


def stats(
    dataset: str = typer.Option(..., "--dataset", help="Dataset whose reference statistics to build, e.g. cifar10."),
    split: Split = typer.Option("train", "--split", help="Dataset split."),
    n_images: int = typer.Option(None, "--n", min=2, help="Use the first N images (default: the whole split)."),
    backend: str = BACKEND,
    mode: Mode = MODE,
    data_dir: Path = DATA_DIR,
    device: str = DEVICE,
    threads: int = THREADS,
) -> None:
    """Build and cache FID reference statistics for (dataset, split, backend, mode, weights, N).

    Example: cdrl-bench stats --dataset cifar10 --data-dir ~/data
    """
    from cdrl.scoring import build_statistics

    device = compute_setup(threads, device)
    with progress():
        statistics = build_statistics(dataset, split=split, n_images=n_images, backend=backend_name(backend), mode=mode,
                                      data_dir=data_folder(data_dir), device=device)
    console.print(f"cached reference statistics {statistics.key.filename()} "
                  f"({statistics.key.n_images} images, {statistics.extractor_name})", highlight=False)


def perf(
    preset: str = typer.Option("tiny", "--preset", help="Preset to time, e.g. tiny or cifar10."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Training batch size (and sampling batch by "
                                                                  "default)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. "
                                                          "performance.channels_last=true (repeatable)."),
    device: str = DEVICE,
    threads: int = THREADS,
    warmup: int = typer.Option(1, "--warmup", min=0,
                               help="Untimed training iterations first (compilation happens here)."),
    iterations: int = typer.Option(2, "--iterations", min=1, help="Timed training iterations."),
    sampling_steps: str = typer.Option("15,5", "--sampling-steps", help="K of each timed 6xK sampling run; "
                                                                        "'' for none."),
    sample_batch: int = typer.Option(None, "--sample-batch", min=1,
                                     help="Samples per sampling run (default: batch size)."),
    inception: bool = typer.Option(False, "--inception", help="Also time Inception features (cdrl.evaluation)."),
    inception_images: int = typer.Option(32, "--inception-images", min=1, help="Images of the timed Inception pass."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Profile one more iteration: time and GFLOP/s by "
                                                              "kind of operation (convolutions, matmuls, other)."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", min=1e-9, max=1e6,
                                      help="Peak TFLOP/s to compare with (default: "
                                                                  "datasheet for H100/H200; on CPU the measured "
                                                                  "FMA peak, benchmarks.speed.cpu_peak)."),
    options_matrix: bool = typer.Option(False, "--options-matrix",
                                        help="Time the exact path, each speed option alone and all but bfloat16 "
                                             "together; print a table."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
    compiled: bool = typer.Option(False, "--compile", help="Pairs of training iterations, eager and "
                                                          "performance.chain_compile=inductor, in one process: "
                                                          "speed-up, compile time, % of peak of each."),
    pairs: int = typer.Option(5, "--pairs", min=1, max=1000, help="Pairs of iterations timed by --compile or "
                                                                   "--published."),
    published: Path = typer.Option(None, "--published", help="A checkout of the authors' code "
                                                             "(github.com/AlvinZhuyx/CDRL): time its training "
                                                             "iteration and sampler beside ours, same inputs and "
                                                             "threads, and print the ratio."),
) -> None:
    """Training s/iteration, Langevin steps/s, sampling images/s, FLOPs and the fraction of peak of a preset.

    Example: cdrl-bench perf --preset digits --iterations 5
    """
    import torch

    from benchmarks.speed.perf import PerfSettings, execute, parse_sampling_steps

    device = compute_setup(None, device)
    check_writable(json_out, "--json")
    settings = PerfSettings(
        preset=preset, batch_size=batch_size, overrides=tuple(overrides),
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"), threads=threads, warmup=warmup,
        iterations=iterations, sampling_steps=parse_sampling_steps(sampling_steps), sample_batch=sample_batch,
        inception=inception,
        inception_images=inception_images, peak_tflops=peak_tflops, breakdown=breakdown)
    console.print(execute(settings, options_matrix=options_matrix, compiled=compiled, published=published,
                          pairs=pairs, json_path=json_out), highlight=False, soft_wrap=True)
