"""A tiny, deterministic checkpoint for service tests: OSNet-x0.25 at 64x32 input, random weights (seed 0);
and its exported ONNX graph, placed where the service looks for it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from model import build_model, save_checkpoint

logger = logging.getLogger(__name__)

TINY_INPUT_SIZE = (64, 32)


def randomise_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Give every BatchNorm running statistics and an affine transform far from the identity, so that a graph
    exported without them (or folded wrongly) no longer embeds like the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                assert module.running_var is not None
                shape = module.running_mean.shape
                module.running_mean.copy_(0.3 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.25 + 1.5 * torch.rand(shape, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                    module.bias.copy_(0.2 * torch.randn(shape, generator=generator))


def make_tiny_checkpoint(
    path: Path,
    threshold: float | None = 0.9,
    seed: int = 0,
    thresholds: dict[str, float] | None = None,
    bn_seed: int | None = None,
) -> Path:
    """Write the tiny checkpoint to ``path`` and return it; same seed -> same weights -> same embeddings.
    ``thresholds``: optional thresholds per query size bucket (model/thresholds.py). ``bn_seed``: randomise the
    BatchNorm statistics (the default tiny checkpoint keeps fresh ones: an identity)."""
    torch.manual_seed(seed)
    model = build_model("osnet_x0_25", num_classes=0, input_size=TINY_INPUT_SIZE).eval()
    if bn_seed is not None:
        randomise_batch_norm(model, bn_seed)
    save_checkpoint(
        model,
        path,
        threshold=threshold,
        thresholds=thresholds,
        metrics={"note": "untrained test model"},
        train_meta={"purpose": "tests"},
    )
    return path


def prepare_onnx_cache(checkpoint: Path, cache_dir: Path) -> Path:
    """Export ``checkpoint``'s graph with ``reid-export --format onnx`` into ``cache_dir``, under the name the
    service's runtime looks up (tests/training/test_cli.py checks that graph); returns its path."""
    from model.checkpoint import file_sha256
    from service.inference.runtime import cached_graph_path
    from training.cli import export_main

    graph = cached_graph_path(cache_dir, file_sha256(checkpoint))
    argv = [str(checkpoint), "--format", "onnx", "--out", str(graph), "--graph-only"]
    if not graph.is_file() and export_main(argv) != 0:
        raise RuntimeError(f"reid-export --format onnx failed for {checkpoint}")
    return graph
