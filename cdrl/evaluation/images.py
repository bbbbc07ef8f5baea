"""Image quantisation, validation and the distributed gather of samples."""

from __future__ import annotations

import numpy as np
import torch

from cdrl.evaluation.errors import EvaluationError

ImageArray = torch.Tensor | np.ndarray
"""A batch of images: uint8, 4-D, NCHW or NHWC, 1 or 3 channels."""


def to_uint8(samples: ImageArray) -> ImageArray:
    """Quantise model samples in [-1, 1] to uint8: clamp, then round((x + 1) * 127.5).

    This is the only place where samples become uint8; both metric libraries then see
    exactly the pixels a saved PNG would hold. Returns the same type (tensor/array) and layout.
    """
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise EvaluationError(
                f"to_uint8 expects float samples in [-1, 1], got {samples.dtype}; integer images are already quantised"
            )
        return torch.round((samples.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
    array = np.asarray(samples)
    if not np.issubdtype(array.dtype, np.floating):
        raise EvaluationError(
            f"to_uint8 expects float samples in [-1, 1], got {array.dtype}; integer images are already quantised"
        )
    return np.rint((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def as_uint8_nchw(images: ImageArray, what: str = "images") -> torch.Tensor:
    """Validate a uint8 image batch and return it as a contiguous CPU NCHW RGB tensor.

    Layout: NCHW when dim 1 has 1 or 3 channels, else NHWC when the last dim does (so an
    ambiguous N×3×H×3 batch is read as NCHW). Grayscale is repeated to RGB, as both
    libraries convert images to RGB when they read them.
    """
    if isinstance(images, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
    else:
        raise EvaluationError(
            f"{what} must be a torch.Tensor or numpy array of uint8 images, got {type(images).__name__}"
        )
    if tensor.dtype != torch.uint8:
        raise EvaluationError(
            f"{what} must be uint8, got {tensor.dtype}; quantise samples in [-1, 1] with cdrl.evaluation.to_uint8 first"
        )
    if tensor.ndim != 4:
        raise EvaluationError(f"{what} must be a 4-D batch (NCHW or NHWC), got shape {tuple(tensor.shape)}")
    if tensor.shape[1] not in (1, 3):
        if tensor.shape[-1] not in (1, 3):
            raise EvaluationError(
                f"{what} must have 1 or 3 channels in dim 1 (NCHW) or dim 3 (NHWC), got shape {tuple(tensor.shape)}"
            )
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.shape[0] == 0:
        raise EvaluationError(f"{what} is empty; pass at least 2 images")
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return tensor.contiguous()


def gather_images(images: ImageArray) -> torch.Tensor | None:
    """Collect uint8 samples from every rank onto rank 0 (rank-major order).

    Without an initialised ``torch.distributed`` process group this returns the images as a
    CPU NCHW tensor. With one, every rank must call it; rank 0 gets all ranks' images
    concatenated in rank order, the other ranks get ``None``. Ranks may hold different
    numbers of images. Uses ``dist.gather`` (no DataParallel); with NCCL the tensors travel
    through the current CUDA device, so call ``torch.cuda.set_device(local_rank)`` first.
    """
    local = as_uint8_nchw(images, "images to gather")
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return local
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if distributed.get_backend() == "nccl"
        else torch.device("cpu")
    )
    world_size, rank = distributed.get_world_size(), distributed.get_rank()

    count = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    distributed.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]

    # gather needs equal shapes: pad every rank to the largest count, trim on rank 0.
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=torch.uint8, device=device)
    padded[: local.shape[0]] = local.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world_size)] if rank == 0 else None
    distributed.gather(padded, gather_list=gathered, dst=0)
    if rank != 0:
        return None
    return torch.cat([part[:size].cpu() for part, size in zip(gathered, sizes, strict=True)])
