"""Command-line entry points of the model package (weight converters).

    reid-import-torchreid --arch osnet_x0_25 osnet_x0_25_market1501.pth models/osnet_x0_25_market.safetensors \\
        --height 256 --width 128
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from model.checkpoint import file_sha256

logger = logging.getLogger(__name__)


def import_torchreid_main(argv: list[str] | None = None) -> int:
    """reid-import-torchreid: torchreid OSNet .pth -> this project's .safetensors checkpoint; returns the exit code."""
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.osnet import OSNET_ARCHITECTURES
    from model.torchreid_import import import_torchreid, load_torchreid_state_dict, match_keys

    parser = argparse.ArgumentParser(
        prog="reid-import-torchreid",
        description="Convert official torchreid OSNet weights (loaded with weights_only=True, strictly: every "
        "tensor used) into a .safetensors checkpoint the service can load.",
    )
    parser.add_argument("--arch", choices=sorted(OSNET_ARCHITECTURES), default="osnet_x0_25")
    parser.add_argument("src", type=Path, help="torchreid weight file (.pth / .pth.tar)")
    parser.add_argument("dst", type=Path, help="checkpoint to write (.safetensors)")
    parser.add_argument("--height", type=int, default=256, help="input crop height the model will be fed")
    parser.add_argument("--width", type=int, default=128, help="input crop width the model will be fed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.dst.suffix != ".safetensors":
        print(f"error: destination must end in .safetensors, got {args.dst}", file=sys.stderr)
        return 2
    try:
        state = load_torchreid_state_dict(args.src)
        model = import_torchreid(args.arch, state, input_size=(args.height, args.width))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    used = len(match_keys(model, state).used)
    train_meta = {
        "source": "torchreid",
        "source_file": args.src.name,
        "source_sha256": file_sha256(args.src),
        "source_tensors": len(state),
        "num_classes": model.num_classes,
    }
    spec = save_checkpoint(model, args.dst, train_meta=train_meta)

    # Read the written file back the way the service will, and check it embeds exactly like the imported model.
    reloaded, _ = load_checkpoint(args.dst)
    probe = torch.rand(2, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    if not torch.allclose(model.embed(probe), reloaded.embed(probe), atol=1e-6):
        print(f"error: {args.dst} does not reproduce the imported model's embeddings", file=sys.stderr)
        return 1
    print(
        f"{args.arch}: {used}/{len(state)} tensors of {args.src.name} imported "
        f"({model.num_classes} classes, embedding {spec.embedding_dim}, input {args.height}x{args.width}) "
        f"-> {args.dst}"
    )
    return 0


def import_openpose_main(argv: list[str] | None = None) -> int:
    """reid-import-openpose: CMU OpenPose COCO body weights (body_pose_model.pth naming) -> pose-stream .safetensors.

    The output holds all six stages in this project's tensor names; pass it as ``pose_weights`` when building
    pose_bilinear (``model.options={"pose_weights": "openpose_body.safetensors"}``): any stage count loads from it.
    """
    from safetensors.torch import save_file

    from model.pose import OpenPoseBody

    parser = argparse.ArgumentParser(
        prog="reid-import-openpose",
        description="Convert CMU OpenPose COCO body weights (loaded with weights_only=True, strictly) into the "
        "pose stream's .safetensors format.",
        epilog="Licence: CMU's OpenPose weights are licensed for academic or non-profit non-commercial research "
        "only; a model trained from them, and its checkpoint, carries those terms. Commercial use needs a licence "
        "from Carnegie Mellon University.",
    )
    parser.add_argument("src", type=Path, help="CMU body weights, e.g. body_pose_model.pth")
    parser.add_argument("dst", type=Path, help="output .safetensors")
    parser.add_argument("--stages", type=int, default=6, help="stages to keep (1-6)")
    args = parser.parse_args(argv)
    if args.dst.suffix != ".safetensors":
        parser.error("the destination must end in .safetensors")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        body = OpenPoseBody(stages=args.stages, output="parts+pafs", weights=args.src)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in body.state_dict().items()}
    save_file(state, str(args.dst), metadata={"source_file": args.src.name, "source_sha256": file_sha256(args.src),
                                              "stages": str(args.stages)})
    print(f"wrote {len(state)} tensors ({args.stages} stages) to {args.dst}")
    print("note: CMU OpenPose weights are for non-commercial research only; so is anything trained from them")
    return 0
