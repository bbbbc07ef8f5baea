"""DRL's published energy network (``energy.architecture=drl``, cdrl.drl_network) and its suite row."""

from __future__ import annotations

import torch
from torch import nn

from baselines import drl
from benchmarks.suite import load_suite, model_config
from cdrl.checkpoint import load_model, make_checkpoint, save_atomic
from cdrl.config import apply_overrides, parameter_counts, preset
from cdrl.drl_network import spectral_norm_at_most_one
from cdrl.networks import build_energy_net, frozen_spectral_norm, sinusoid
from cdrl.schedule import LogSNRSchedule
from cdrl.training import CooperativeTrainer


def _tiny_drl():
    return drl(apply_overrides(preset("tiny"), ["energy.architecture=drl"]))


def test_parameter_count_is_the_published_networks():
    """DRL's ``net_res_temb2`` for CIFAR-10 (ch = 128, ch_mult = (1, 2, 2, 2), num_res_blocks = 8,
    no attention, no normalisation; its trainable variables), counted from its layers:

    time embedding  dense0 128 -> 512:   128*512 + 512 =    66,048
                    dense1 512 -> 512:   512*512 + 512 =   262,656
    head            dense2 512 -> 256:   512*256 + 256 =   131,328  (a bias: CDRL's temb_final has none)
    conv_in         3x3, 3 -> 128:       27*128 + 128  =     3,584
    block C -> O:   conv1 9CO + O, temb_proj 512*O + O, conv2 9*O*O + O + gain O,
                    3x3 conv shortcut 9CO + O when C != O
      128 -> 128:   147,584 + 65,664 + 147,712                           =   360,960, x 8 = 2,887,680
      128 -> 256:   295,168 + 131,328 + 590,336 + 295,168                =         1,312,000
      256 -> 256:   590,080 + 131,328 + 590,336                          = 1,311,744, x 23 = 30,170,112
    total: 66,048 + 262,656 + 131,328 + 3,584 + 2,887,680 + 1,312,000 + 30,170,112 = 34,833,408
    (the unused ``dense_out`` is never called, so Keras never creates its variables; the
    spectral norms' u vectors are not trainable).
    """
    energy_count, _ = parameter_counts(preset("cifar10-drl-network"))
    assert energy_count == 34_833_408
    assert parameter_counts(preset("cifar10"))[0] == 34_833_408 - 256  # CDRL's EBM: the head bias less


def test_time_input_is_the_integer_level_index():
    """The embedding is sinusoid(i) of level i (not of 1000 x a function of logSNR), and each block
    adds temb_proj(act(temb)) without a second activation."""
    config = _tiny_drl()
    net = build_energy_net(config.energy, config.schedule).eval()
    schedule = LogSNRSchedule(config.schedule)
    for index in (1, 4):  # the transition index -> index - 1 conditions on level s = index - 1
        logsnr = schedule.level(index, 2).logsnr_s
        temb = net.temb_map2(net.act(net.temb_map1(sinusoid(torch.full((2,), float(index - 1)), net.config.width))))
        block = net.module_list[1]
        expected = block.temb_map(net.act(temb))[:, :, None, None]
        torch.testing.assert_close(net.conditioning(logsnr).block_biases[0], expected)


def test_residual_output_spectral_norm_divides_only_above_one():
    torch.manual_seed(0)
    for scale, sigma_wanted in ((1e-3, None), (10.0, "divided")):
        layer = nn.Linear(6, 5)
        with torch.no_grad():
            layer.weight.mul_(scale)
        raw = layer.weight.detach().clone()
        spectral_norm_at_most_one(layer)
        for _ in range(50):  # converge the power iteration
            layer(torch.zeros(1, 6))
        layer.eval()
        layer(torch.zeros(1, 6))
        sigma = torch.linalg.matrix_norm(raw, ord=2)
        expected = raw / sigma if sigma_wanted else raw
        torch.testing.assert_close(layer.weight, expected, rtol=1e-4, atol=1e-9)


def test_blocks_start_near_identity_and_frozen_weights_match_the_hook():
    """conv2 starts at 1e-10 of Glorot's scale, so each residual branch starts near zero, and chains'
    frozen weights (cdrl.performance) equal what the bounded hook computes."""
    torch.manual_seed(0)
    config = _tiny_drl()
    net = build_energy_net(config.energy, config.schedule)
    block = net.module_list[1]
    assert block.conv2.weight_orig.abs().max() < 1e-5
    net.eval()
    x, logsnr = torch.randn(3, 1, 8, 8), LogSNRSchedule(config.schedule).level(2, 3).logsnr_s
    expected = net(x, logsnr)
    # Its sigma is far below one, so the bounded norm leaves it as it is (a plain one would scale it up).
    torch.testing.assert_close(block.conv2.weight, block.conv2.weight_orig.detach(), rtol=1e-6, atol=0)
    with frozen_spectral_norm(net):
        torch.testing.assert_close(net(x, logsnr), expected, rtol=0, atol=0)


def test_a_drl_network_trains_saves_and_loads(tmp_path):
    config = _tiny_drl()
    torch.manual_seed(0)
    trainer = CooperativeTrainer(config)
    assert trainer.initializer is None
    trainer.step(torch.rand(8, 1, 8, 8) * 2 - 1)
    path = save_atomic(make_checkpoint(config, trainer.state_dict()), tmp_path / "drl.pt")
    model = load_model(path)
    assert model.config.energy.architecture == "drl"
    x, logsnr = torch.randn(2, 1, 8, 8), torch.full((2,), float(LogSNRSchedule(config.schedule).grid()[1][3]))
    assert torch.isfinite(model.ebm(x, logsnr)).all()


def test_cifar10_steps_drl_row_is_drl_in_network_and_checkpoint_with_the_cdrl_network_ablation():
    suite = load_suite("cifar10-steps")
    models = {model.key: model for model in suite.models}
    drl_config = model_config(suite, models["drl"], "full", seed=0)
    ablation = model_config(suite, models["drl-cdrl-network"], "full", seed=0)
    assert drl_config.energy.architecture == "drl" and ablation.energy.architecture == "conv"
    assert drl_config.training.method == ablation.training.method == "drl"
    # DRL keeps no best-FID checkpoint: no selection runs, the last checkpoint is scored.
    assert drl_config.run.select_every == ablation.run.select_every == 0
    assert model_config(suite, models["cdrl"], "full", seed=0).run.select_every == 20_000
