"""`cdrl-bench perf --published DIR` on a small stand-in for the authors' script, written here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from benchmarks.speed import published
from benchmarks.speed.perf import PerfSettings
from cdrl.errors import CdrlBenchError

# The shape of the published main_uncond.py that the harness relies on: module-level settings, EBM and Unet
# from models/, torch_ema, gen_samples(), and train() whose loop body ends at its first logging statement.
# Every call is counted, so the test sees what the harness ran.
SCRIPT = '''
import torch
import torch.optim as optim
from models.ebm import EBM
from models.unet import Unet
import pytorch_fid_wrapper as pfw
torch.multiprocessing.set_sharing_strategy('file_system')

def called(what):
    with open(CALLS, 'a') as log:
        log.write(what + '\\n')

class ExponentialMovingAverage:  # torch_ema's, as far as the loop uses it
    def __init__(self, parameters, decay):
        self.decay = decay
    def update(self):
        called('ema')

c, im_sz, n_updates = 1, 8, 2
add_q, pi_dim, pi_n_blocks, with_sn, ebm_act, p_dim = False, 4, 1, True, 'lrelu', 4
pi_lr, p_lr, p_weight_decay, warmup_steps, pi_ema_decay, p_ema_decay = 1e-4, 1e-5, 0.0, 10, 0.999, 0.999
print_iter = 100

def gen_samples(bs, p, pi, xt=None, device=None):
    called('sampler')
    x = torch.randn(bs, c, im_sz, im_sz)
    for _ in range(6 * n_updates):
        x = x.detach().requires_grad_(True)
        x = x + torch.autograd.grad(pi(p(x)).sum(), x)[0]
    return x

def train(args):
    device = torch.device('cuda', 0)
    for counter in range(0, 10):
        x, _ = next(train_iter)
        x = x.to(device)
        pi_optimizer.zero_grad()
        p_optimizer.zero_grad()
        loss = pi(p(x)).mean()
        loss.backward()
        pi_optimizer.step()
        pi_lr_scheduler.step()
        pi_ema.update()
        p_optimizer.step()
        called('iteration')
        if counter % print_iter == 0:
            called('logged')
'''
NETWORK = '''
import torch
class {name}(torch.nn.Module):
    def __init__(self, **settings):
        super().__init__()
        self.settings = settings
        self.layer = torch.nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x):
        return self.layer(x){reduce}
'''


def _checkout(folder: Path) -> Path:
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "__init__.py").write_text("")
    (folder / "models" / "ebm.py").write_text(NETWORK.format(name="EBM", reduce=".flatten(1).sum(1)"))
    (folder / "models" / "unet.py").write_text(NETWORK.format(name="Unet", reduce=""))
    (folder / "main_uncond.py").write_text(f"CALLS = {str(folder / 'calls.txt')!r}\n" + textwrap.dedent(SCRIPT))
    return folder


def test_published_iteration_and_sampler_run_beside_ours_on_the_same_batch(tmp_path, one_thread):
    checkout = _checkout(tmp_path / "CDRL")
    settings = PerfSettings(preset="tiny", batch_size=4, threads=1, warmup=1)
    comparison = published.compare(settings, checkout, pairs=3)
    # One warm-up and three timed iterations of the published loop body, up to its logging; its sampler once.
    calls = (checkout / "calls.txt").read_text().split()
    assert {what: calls.count(what) for what in set(calls)} == {"iteration": 4, "ema": 4, "sampler": 1}
    assert len(comparison.ratios) == 3 and all(ratio > 0 for ratio in comparison.ratios)
    assert comparison.sampling == "6x2" and comparison.sample_batch == 4
    text = "\n".join(comparison.lines())
    assert "ours/published" in text and str(checkout) in text


def test_published_refuses_a_folder_that_is_not_the_authors_code(tmp_path):
    with pytest.raises(CdrlBenchError, match="github.com/AlvinZhuyx/CDRL"):
        published.compare(PerfSettings(), tmp_path, pairs=1)
    checkout = _checkout(tmp_path / "CDRL")
    (checkout / "main_uncond.py").write_text("import torch_ema_not_installed\n")
    with pytest.raises(CdrlBenchError, match="imports torch_ema_not_installed, which is not installed"):
        published.compare(PerfSettings(), checkout, pairs=1)
