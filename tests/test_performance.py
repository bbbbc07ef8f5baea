"""Speed options keep the math: each fast path against the exact path, on the tiny preset (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.speed import perf
from cdrl.config import apply_overrides, preset
from cdrl.langevin import energy_gradient, langevin_revision
from cdrl.networks import build_energy_net, frozen_spectral_norm
from cdrl.noise import GeneratorNoise, PerExampleNoise
from cdrl.performance import ChainEnergy, PerformanceError
from cdrl.schedule import LogSNRSchedule
from cdrl.training import CooperativeTrainer


def _trainer(*overrides: str) -> CooperativeTrainer:
    torch.manual_seed(0)
    return CooperativeTrainer(apply_overrides(preset("tiny"), list(overrides)),
                              generator=torch.Generator().manual_seed(1))


def _steps(trainer: CooperativeTrainer, n: int = 2) -> list[dict[str, float]]:
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return [trainer.step(x).as_floats() for _ in range(n)]


def _chain_inputs(config):
    schedule = LogSNRSchedule(config.schedule)
    level = schedule.level(torch.tensor([1, 2, 3, 4, 5, 6, 6, 2]))
    start = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x_t = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    return level, start, x_t


def test_frozen_spectral_norm_is_bit_identical_and_restores_the_hooks():
    config = preset("tiny")
    torch.manual_seed(0)
    ebm = build_energy_net(config.energy).eval()
    hooks_before = {name: list(module._forward_pre_hooks) for name, module in ebm.named_modules()}
    level, start, x_t = _chain_inputs(config)

    def revise(energy):
        return langevin_revision(energy, start, x_t, level, config.langevin, config.schedule.logsnr_max,
                                 noise=GeneratorNoise(torch.Generator().manual_seed(5)))

    exact = revise(lambda y, logsnr: ebm(y, logsnr))
    ebm.temb_final.weight.requires_grad_(False)  # a flag of the caller's, kept as it was
    with ChainEnergy(ebm, config.performance, "cpu").frozen() as chain_energy:
        assert not any(parameter.requires_grad for parameter in ebm.parameters())
        frozen = revise(lambda y, logsnr: chain_energy(y, logsnr))
    assert torch.equal(exact, frozen)
    assert [name for name, parameter in ebm.named_parameters() if not parameter.requires_grad] == [
        "temb_final.weight"]
    assert {name: list(module._forward_pre_hooks) for name, module in ebm.named_modules()} == hooks_before
    # Power iterations run again in train mode after the context.
    u_before = ebm.temb_map1.weight_u.clone()
    ebm.train()
    ebm(start, level.logsnr_s)
    assert not torch.equal(u_before, ebm.temb_map1.weight_u)


def test_frozen_spectral_norm_refuses_train_mode():
    ebm = build_energy_net(preset("tiny").energy)
    with pytest.raises(RuntimeError, match="eval mode"):
        with frozen_spectral_norm(ebm):
            pass


def test_default_training_step_matches_the_unfrozen_chain_exactly():
    """The default trainer (frozen chain weights) against the same step with plain network calls."""
    fast, plain = _trainer(), _trainer()
    plain.chain_ebm.frozen = lambda: _PlainChain(plain.ebm)
    assert _steps(fast) == _steps(plain)
    for a, b in zip(fast.ebm.parameters(), plain.ebm.parameters()):
        assert torch.equal(a, b)


class _PlainChain:
    """Context yielding the bare network: the chain as it ran before weights were frozen."""

    def __init__(self, network):
        self.network = network

    def __enter__(self):
        return self.network

    def __exit__(self, *exc_info):
        return None


def _ddp_step(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        trainer = CooperativeTrainer(preset("tiny"), distributed=True, generator=torch.Generator().manual_seed(1))
        _steps(trainer)
        if rank == 0:
            torch.save([parameter.detach() for parameter in trainer.ebm.parameters()], out)
    finally:
        dist.destroy_process_group()


def test_ddp_positive_phase_without_sync_gives_the_single_process_update(tmp_path, free_port):
    """Both ranks see the same batch and noise: the all-reduced average equals one process's gradient."""
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_step, args=(2, free_port, out), nprocs=2, join=True)
    single = _trainer()
    _steps(single)
    for ddp_parameter, parameter in zip(torch.load(out), single.ebm.parameters()):
        torch.testing.assert_close(ddp_parameter, parameter.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("overrides", [
    ("performance.channels_last=true",),
    ("performance.fused_optimizer=true",),
    ("performance.channels_last=true", "performance.fused_optimizer=true"),
])
def test_layout_and_fused_optimizer_agree_with_the_exact_path(overrides):
    exact, fast = _trainer(), _trainer(*overrides)
    for exact_stats, fast_stats in zip(_steps(exact), _steps(fast)):
        assert exact_stats.keys() == fast_stats.keys()
        for key in exact_stats:
            assert fast_stats[key] == pytest.approx(exact_stats[key], rel=1e-4, abs=1e-5), key
    for a, b in zip(exact.ebm.parameters(), fast.ebm.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_channels_last_energies_match():
    config = preset("tiny")
    torch.manual_seed(0)
    ebm = build_energy_net(config.energy).eval()
    level, start, _ = _chain_inputs(config)
    exact = energy_gradient(lambda y, logsnr: ebm(y, logsnr), start, level.logsnr_s)
    fast_config = apply_overrides(config, ["performance.channels_last=true"]).performance
    ebm.to(memory_format=torch.channels_last)
    with ChainEnergy(ebm, fast_config, "cpu").frozen() as chain_energy:
        fast = energy_gradient(chain_energy, start, level.logsnr_s)
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


def test_bfloat16_chain_runs_and_returns_float32_energies():
    trainer = _trainer("performance.ebm_precision=bfloat16")
    stats = _steps(trainer, 1)[0]
    assert all(torch.isfinite(torch.tensor(value)) for value in stats.values())
    trainer.ebm.eval()
    with trainer.chain_ebm.frozen() as chain_energy:
        energy = chain_energy(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    assert energy.dtype == torch.float32


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(PerformanceError, match="chain_compile=inductor"):
        _trainer("performance.chain_compile=cuda-graphs")


def test_per_example_noise_is_unchanged_and_batch_independent():
    seeds = [7, 11, 13]
    reference = torch.empty(3, 2, 4, 4)
    drawn = PerExampleNoise(seeds).randn_like(reference)
    # The former implementation: one fresh tensor per generator, stacked.
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    expected = torch.stack([torch.randn(2, 4, 4, generator=generator) for generator in generators])
    assert torch.equal(drawn, expected)
    assert torch.equal(PerExampleNoise(seeds[1:]).randn_like(reference[1:]), drawn[1:])


def test_flop_count_of_a_langevin_step_is_forward_plus_input_gradient():
    config = preset("tiny")
    ebm = build_energy_net(config.energy).eval()
    x, logsnr = torch.zeros(4, 1, 8, 8), torch.zeros(4)
    forward = perf.count_flops(lambda: ebm(x, logsnr))
    step = perf.count_flops(lambda: energy_gradient(lambda y, s: ebm(y, s), x, logsnr))
    # The input gradient costs one more pass through the convolutions; no weight gradients.
    assert 1.9 * forward < step < 2.0 * forward
    iteration = sum(perf.training_flops_by_operation(config, 4).values())
    per_step = perf.langevin_step_flops(config, 4)
    assert per_step == step
    assert iteration > config.langevin.n_steps * step


def _perf_cli(*arguments: str):
    """``cdrl-bench perf`` on the tiny preset, one thread (restored after), a fixed peak; asserts success."""
    from typer.testing import CliRunner

    from cli import app

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["perf", "--preset", "tiny", "--batch-size", "4", "--warmup", "0",
                                          "--sampling-steps", "1", "--threads", "1", "--peak-tflops", "0.1",
                                          *arguments])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return result


def test_perf_cli_on_tiny_writes_a_json_report(tmp_path):
    out = tmp_path / "perf.json"
    result = _perf_cli("--iterations", "2", "--breakdown", "--json", str(out))
    assert "s/iteration" in result.output
    report = json.loads(out.read_text())
    assert report["flops_per_iteration"] > 0 and report["seconds_per_iteration"] > 0
    assert report["fraction_of_peak"] == pytest.approx(
        report["flops_per_iteration"] / report["seconds_per_iteration"] / 1e12 / 0.1)
    assert set(report["sampling_images_per_second"]) == {"6x1"}
    assert report["peak_source"] == "--peak-tflops"
    assert len(report["iteration_seconds"]) == 2
    assert report["best_seconds_per_iteration"] == min(report["iteration_seconds"])
    assert "time by operation" in result.output
    shares = {share["kind"]: share for share in report["breakdown"]}
    assert list(shares) == [kind for kind, _ in perf.OPERATION_KINDS] + [perf.OTHER_OPERATIONS]
    assert sum(share["fraction_of_time"] for share in shares.values()) == pytest.approx(1.0)
    # Every counted FLOP lands in a kind: the tiny networks' convolutions, their backward, the linear layers.
    assert sum(share["flops"] for share in shares.values()) == report["flops_per_iteration"]
    for kind in ("convolution forward", "convolution backward", "matmul and attention"):
        assert shares[kind]["flops"] > 0 and shares[kind]["tflops_per_second"] > 0, kind
    assert shares[perf.OTHER_OPERATIONS]["flops"] == 0


def test_operation_kinds_of_profiler_and_flop_counter_names():
    assert perf.operation_kind("aten::mkldnn_convolution") == "convolution forward"
    assert perf.operation_kind("aten.convolution") == "convolution forward"
    assert perf.operation_kind("aten::cudnn_convolution") == "convolution forward"
    assert perf.operation_kind("aten::convolution_backward") == "convolution backward"
    assert perf.operation_kind("aten.addmm") == perf.operation_kind("aten::mm") == "matmul and attention"
    assert perf.operation_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "matmul and attention"
    assert perf.operation_kind("aten::mmx") == perf.operation_kind("aten::leaky_relu") == perf.OTHER_OPERATIONS


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CDRL_SLOW_TESTS"),
                    reason="torch.compile on CPU takes minutes here; set CDRL_SLOW_TESTS=1 to run")
def test_compiled_chain_matches_the_exact_chain():
    config = apply_overrides(preset("tiny"), ["performance.chain_compile=inductor"])
    torch.manual_seed(0)
    ebm = build_energy_net(config.energy).eval()
    level, start, _ = _chain_inputs(config)
    exact = energy_gradient(lambda y, logsnr: ebm(y, logsnr), start, level.logsnr_s)
    chain = ChainEnergy(ebm, config.performance, "cpu")
    with chain.frozen() as chain_energy:
        compiled = energy_gradient(chain_energy, start, level.logsnr_s)
    torch.testing.assert_close(compiled, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    with torch.no_grad():  # new weights, same compiled code: the frozen weights are inputs, not constants
        for parameter in ebm.parameters():
            parameter.mul_(1.1)
    exact = energy_gradient(lambda y, logsnr: ebm(y, logsnr), start, level.logsnr_s)
    with chain.frozen() as chain_energy:
        compiled = energy_gradient(chain_energy, start, level.logsnr_s)
    torch.testing.assert_close(compiled, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


@pytest.mark.parametrize("name", ["tiny", "toy-checkerboard", "digits-cond"])
def test_chain_computes_the_conditioning_once_per_chain_bit_for_bit(name, monkeypatch):
    config = apply_overrides(preset(name), ["langevin.n_steps=4"])
    torch.manual_seed(0)
    ebm = build_energy_net(config.energy)
    ebm(torch.randn(4, *((2,) if name.startswith("toy") else (1, config.data.image_size, config.data.image_size))),
        torch.zeros(4), torch.arange(4) if config.energy.num_classes else None)  # one power iteration
    ebm.eval()
    schedule = LogSNRSchedule(config.schedule)
    level = schedule.level(torch.tensor([1, 3, 5, 6]))
    shape = (4, 2) if name.startswith("toy") else (4, 1, config.data.image_size, config.data.image_size)
    start, x_t = torch.randn(shape), torch.randn(shape)
    labels = torch.tensor([1, 0, 2, 3]) if config.energy.num_classes else None

    def chain(energy):
        return langevin_revision(lambda y, logsnr: energy(y, logsnr, labels), start, x_t, level, config.langevin,
                                 config.schedule.logsnr_max, noise=GeneratorNoise(torch.Generator().manual_seed(5)))

    exact = chain(ebm)
    calls = []
    real = type(ebm).conditioning
    monkeypatch.setattr(type(ebm), "conditioning", lambda self, *args: calls.append(1) or real(self, *args))
    with ChainEnergy(ebm, config.performance, "cpu").frozen() as chain_energy:
        cached = chain(chain_energy)
    assert torch.equal(cached, exact)
    assert len(calls) == 1  # 4 steps, one conditioning


def test_cpu_fma_peak_probe_measures_the_widest_unit_or_says_it_cannot(monkeypatch, one_thread):
    from benchmarks.speed import cpu_peak

    units = [unit.name for unit in cpu_peak.available_units()]
    # Each unit's best over interleaved rounds: a busy machine (the other test worker) slows one unit's
    # few milliseconds more than the other's, and the comparison below is between the two.
    rounds = [cpu_peak.unit_peaks(threads=1, rounds=2_000_000, repeats=3) for _ in range(4)]
    peaks = {unit: max(measured[unit] for measured in rounds) for unit in rounds[0]}
    if units and shutil.which("cc"):
        assert sorted(peaks) == sorted(units) and all(0.001 < tflops < 10 for tflops in peaks.values())
        # No library beats the peak: MKL's sgemm reaches 45-80% of it (0.8: room for a busy machine).
        sgemm = perf.measured_cpu_peak_tflops(1024)
        assert max(peaks.values()) >= 0.8 * sgemm, (peaks, sgemm)
        if "AVX-512" in peaks:  # one 512-bit FMA does two 256-bit ones' work: never slower per FLOP
            assert peaks["AVX-512"] >= 0.8 * peaks["AVX2"], peaks
        if shutil.which("objdump"):  # twelve chains in the loop, or the rate counts one chain twelve times
            for unit in cpu_peak.available_units():
                code = subprocess.run(["objdump", "-d", str(cpu_peak._binary(unit))], capture_output=True,
                                      text=True, check=True).stdout
                assert code.count("vfmadd") >= 12, f"{unit.name}: {code.count('vfmadd')} FMA instructions"
        monkeypatch.setattr(cpu_peak, "unit_peaks", lambda *_: peaks)
        assert cpu_peak.fma_peak(threads=1) == max((tflops, name) for name, tflops in peaks.items())
        monkeypatch.undo()
    else:
        assert cpu_peak.fma_peak(threads=1, rounds=1000, repeats=1) is None
    monkeypatch.setattr(cpu_peak.shutil, "which", lambda name: None)
    assert cpu_peak.fma_peak(threads=1, rounds=1000, repeats=1) is None


def test_a_cpu_bfloat16_run_is_held_to_the_faster_of_its_bfloat16_and_float32_peaks(monkeypatch):
    cpu, float32 = torch.device("cpu"), preset("tiny")
    bfloat16 = apply_overrides(float32, ["performance.ebm_precision=bfloat16"])
    monkeypatch.setattr(perf, "cached_fma_peak", lambda threads: (0.2, "AVX-512"))
    rates = {torch.float32: 0.15, torch.bfloat16: 0.8}  # AMX: bfloat16 matmuls 4x the float32 FMA peak
    monkeypatch.setattr(perf, "measured_cpu_peak_tflops", lambda dtype=torch.float32, **_: rates[dtype])
    assert perf.device_peak(cpu, float32, None)[0] == 0.2
    peak, source = perf.device_peak(cpu, bfloat16, None)
    assert peak == 0.8 and "bfloat16 matmul" in source
    rates[torch.bfloat16] = 0.03  # no bfloat16 arithmetic: converted, slower than float32
    assert perf.device_peak(cpu, bfloat16, None) == perf.device_peak(cpu, float32, None)
    assert perf.device_peak(cpu, bfloat16, 1.5) == (1.5, "--peak-tflops")
    monkeypatch.undo()
    from benchmarks.speed import cpu_peak

    if "amx_bf16" in cpu_peak._cpu_flags():  # the measurement itself runs in bfloat16 (4-5x here)
        assert (perf.measured_cpu_peak_tflops(1024, dtype=torch.bfloat16)
                > 1.5 * perf.measured_cpu_peak_tflops(1024))


def test_options_matrix_times_each_set_and_drops_cuda_only_options_on_cpu(tmp_path, monkeypatch):
    from benchmarks.speed import options_matrix

    monkeypatch.setattr(options_matrix, "OPTION_MATRIX", (
        ("plain", ()),
        ("channels_last", ("performance.channels_last=true",)),
        ("tf32", ("performance.tf32=true",)),
        ("all", ("performance.channels_last=true", "performance.tf32=true", "performance.fused_optimizer=true")),
    ))
    assert [name for name, _ in options_matrix.matrix_runs(torch.device("cuda"))] == ["plain", "channels_last", "tf32",
                                                                                       "all"]
    out = tmp_path / "matrix.json"
    result = _perf_cli("--iterations", "1", "--options-matrix", "--json", str(out))
    reports = json.loads(out.read_text())
    assert [report["options"] for report in reports] == ["plain", "channels_last", "all"]
    assert reports[2]["settings"]["overrides"] == ["performance.channels_last=true", "performance.fused_optimizer=true"]
    table = result.output[result.output.index("| options"):].splitlines()
    assert table[0].startswith("| options | s/iteration | speed-up")
    assert [line.split(" | ")[0] for line in table[2:5]] == ["| plain", "| channels_last", "| all"]
    assert table[2].split(" | ")[2] == "1.00x"
