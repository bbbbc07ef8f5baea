"""The published code's training iteration and sampler beside ours in one process (``perf --published DIR``).

DIR is a checkout of the authors' implementation (github.com/AlvinZhuyx/CDRL; never copied into
cdrl-bench). Its ``main_uncond.py`` is imported as it is, and its training iteration is the body
of the ``for counter in ...`` loop of its ``train()``, taken from its source up to the first
logging statement (``if counter % print_iter ...``) and run as written on our batch. Around it,
``train()``'s single-GPU set-up is rebuilt from the script's own classes and settings: its EBM and
U-Net, torch_ema averages, Adam and AdamW with its learning rates and warm-up (torch 2.14's
LambdaLR no longer takes the ``verbose=False`` the script passes, and one process needs no DDP
wrapper, as ours runs without one). Its sampler is its ``gen_samples()`` at its own K
(``n_updates``), ours ``generate()`` at the same 6xK and batch. Both run on the same threads and
inputs, iterations paired back to back in alternating order, as in :mod:`benchmarks.speed.compiled`.

The script imports torch_ema and einops (install them: ``pip install torch-ema einops``; a missing
one is named in one error line); pytorch_fid_wrapper, which only its FID code calls, is stood in
for when it is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import statistics
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.speed.perf import PerfSettings, _timed, write_json
from cdrl.checkpoint import LoadedModel
from cdrl.config import apply_overrides, preset
from cdrl.datasets import item_shape
from cdrl.errors import CdrlBenchError
from cdrl.generation import GenerationSpec, generate
from cdrl.performance import use_threads
from cdrl.training import CooperativeTrainer

SCRIPT = "main_uncond.py"
#: Modules the script imports for its FID and plots only: stood in for when missing.
STAND_INS = ("pytorch_fid_wrapper",)


@dataclass
class PublishedComparison:
    preset: str
    published: str
    batch_size: int
    threads: int
    load_average: tuple[float, float]
    ours_seconds: list[float]
    published_seconds: list[float]
    sampling: str
    sample_batch: int
    ours_sampling_seconds: float
    published_sampling_seconds: float

    @property
    def ratios(self) -> list[float]:
        """Our seconds / the published code's, per pair: below 1, ours is faster."""
        return [ours / theirs for ours, theirs in zip(self.ours_seconds, self.published_seconds)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios}

    def lines(self) -> list[str]:
        ratios = self.ratios
        ours, theirs = statistics.median(self.ours_seconds), statistics.median(self.published_seconds)
        return [
            f"{self.preset} batch {self.batch_size} against the published code in {self.published} "
            f"({self.threads} threads, load {self.load_average[0]:.1f} -> {self.load_average[1]:.1f})",
            f"training: ours {ours:.4g} s/iteration, published {theirs:.4g} s/iteration (medians of "
            f"{len(ratios)} pairs); ours/published {statistics.median(ratios):.2f} "
            f"(range {min(ratios):.2f}-{max(ratios):.2f})",
            f"sampling {self.sampling}, {self.sample_batch} images: ours {self.ours_sampling_seconds:.4g} s, "
            f"published {self.published_sampling_seconds:.4g} s; ours/published "
            f"{self.ours_sampling_seconds / self.published_sampling_seconds:.2f}",
        ]


def _import_script(directory: Path) -> types.ModuleType:
    """The published script as a module (its ``models`` package importable from DIR while it loads)."""
    script = directory / SCRIPT
    if not script.is_file() or not (directory / "models").is_dir():
        raise CdrlBenchError(f"--published {directory}: no {SCRIPT} and models/ there: pass a checkout of "
                             "github.com/AlvinZhuyx/CDRL")
    for name in [name for name in sys.modules if name == "models" or name.startswith("models.")]:
        del sys.modules[name]  # another checkout's networks, from an earlier call
    stand_ins = [name for name in STAND_INS if name not in sys.modules and importlib.util.find_spec(name) is None]
    sys.modules.update({name: types.ModuleType(name) for name in stand_ins})
    sharing = torch.multiprocessing.get_sharing_strategy()
    spec = importlib.util.spec_from_file_location("cdrl_bench_published_script", script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(directory))
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        raise CdrlBenchError(f"--published: the published code imports {error.name}, which is not installed: "
                             "pip install torch-ema einops (its requirements)") from None
    finally:
        sys.path.remove(str(directory))
        for name in stand_ins:
            del sys.modules[name]
        torch.multiprocessing.set_sharing_strategy(sharing)  # the script sets its own at import
    return module


def _training_iteration(script: Path) -> types.CodeType:
    """The statements of one iteration of ``train()``'s training loop, before its first logging statement."""
    tree = ast.parse(script.read_text(), str(script))
    train = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train"), None)
    loop = None if train is None else next(
        (node for node in ast.walk(train) if isinstance(node, ast.For) and ast.unparse(node.target) == "counter"), None)
    if loop is None:
        raise CdrlBenchError(f"--published: {script} has no train() with a `for counter in ...` loop: pass a checkout "
                             "of github.com/AlvinZhuyx/CDRL")
    body = list(itertools.takewhile(lambda node: "print_iter" not in ast.unparse(node), loop.body))
    return compile(ast.Module(body=body, type_ignores=[]), str(script), "exec")


def _published_setup(module: types.ModuleType, device: torch.device, x: torch.Tensor) -> dict[str, Any]:
    """The names the loop body reads, as ``train()`` sets them up on one device (no DDP wrapper)."""
    g = module.__dict__
    pi = module.EBM(add_q=g["add_q"], temb_dim=g["pi_dim"], n_blocks=g["pi_n_blocks"], use_sn=g["with_sn"],
                    act_fn=g["ebm_act"]).to(device)
    p = module.Unet(tanh_out=False, residual=True, dim=g["p_dim"]).to(device)
    pi_optimizer = torch.optim.Adam(pi.parameters(), lr=g["pi_lr"], betas=(0.9, 0.999))
    p_optimizer = torch.optim.AdamW(p.parameters(), lr=g["p_lr"], betas=(0.9, 0.999), weight_decay=g["p_weight_decay"])
    warmup = g["warmup_steps"]
    return {
        **g, "device": device, "pi": pi, "p": p, "counter": 0,
        "pi_ema": module.ExponentialMovingAverage(pi.parameters(), decay=g["pi_ema_decay"]),
        "p_ema": module.ExponentialMovingAverage(p.parameters(), decay=g["p_ema_decay"]),
        "pi_optimizer": pi_optimizer, "p_optimizer": p_optimizer,
        "p_lr_scheduler": torch.optim.lr_scheduler.LambdaLR(p_optimizer, lambda i: min(1.0, (i + 500) / float(warmup))),
        "pi_lr_scheduler": torch.optim.lr_scheduler.LambdaLR(pi_optimizer, lambda i: min(1.0, i / float(warmup))),
        # The loop reads (images, labels) batches: ours, every time.
        "train_iter": itertools.repeat((x, None)),
    }


def compare(settings: PerfSettings, directory: Path, pairs: int) -> PublishedComparison:
    use_threads(settings.threads)
    device = torch.device(settings.device)
    module = _import_script(directory)
    iteration = _training_iteration(directory / SCRIPT)
    config = apply_overrides(preset(settings.preset), [f"training.batch_size={settings.batch_size}",
                                                       *settings.overrides])
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    x = torch.rand((settings.batch_size, *item_shape(config.data)), generator=generator, device=device) * 2 - 1
    torch.manual_seed(settings.seed)
    ours = CooperativeTrainer(config, device=device, generator=generator)
    published = _published_setup(module, device, x)

    def step(name: str) -> None:
        if name == "ours":
            ours.step(x)
        else:
            exec(iteration, published)
            published["counter"] += 1

    for _ in range(settings.warmup):
        step("ours")
        step("published")
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {"ours": [], "published": []}
    for pair in range(pairs):
        for name in (("ours", "published") if pair % 2 == 0 else ("published", "ours")):
            with _timed(device) as timing:
                step(name)
            seconds[name].append(timing.wall_seconds)

    # Sampling at the published K and batch, live weights, both networks in eval mode.
    steps, n_samples = int(module.n_updates), settings.sample_batch or settings.batch_size
    model = LoadedModel(config, ours.ebm, ours.initializer, ours.iteration, uses_ema=False)
    spec = GenerationSpec.resolve(config, n_samples, steps_per_level=steps, batch_size=n_samples, weights="live")
    with _timed(device) as ours_sampling:
        generate(model, spec, device=device, chain=ours.chain_ebm)
    published["pi"].eval()
    published["p"].eval()
    with _timed(device) as published_sampling:
        module.gen_samples(n_samples, published["p"], published["pi"], device=device)
    return PublishedComparison(
        preset=settings.preset, published=str(directory), batch_size=settings.batch_size,
        threads=torch.get_num_threads(), load_average=(load_before, os.getloadavg()[0]),
        ours_seconds=seconds["ours"], published_seconds=seconds["published"],
        sampling=f"{config.schedule.n_levels}x{steps}", sample_batch=n_samples,
        ours_sampling_seconds=ours_sampling.wall_seconds, published_sampling_seconds=published_sampling.wall_seconds)


def execute(settings: PerfSettings, directory: Path, pairs: int, json_path: Path | None = None) -> str:
    """Run the comparison, write the JSON if asked; returns the text to print."""
    comparison = compare(settings, directory, pairs)
    write_json(json_path, comparison.to_dict())
    return "\n".join(comparison.lines())
