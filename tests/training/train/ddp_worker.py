"""One torchrun rank of tests/training/train/test_ddp.py: the real reid-train CLI, with recorders around the loop.

    torchrun --standalone --nproc_per_node 2 tests/training/train/ddp_worker.py TRACE_DIR [reid-train arguments]

Records, per rank, into TRACE_DIR/rank<R>.json: the sampler's batches (dataset indices), each step's loss and a
digest of the gradients after DDP's all-reduce, the parameters at the end, and every checkpoint / state file
the rank wrote.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

import training.train.loop as loop
from training.cli import train_main
from training.data.sampler import PKSampler

RANK = int(os.environ["RANK"])
TRACE: dict[str, Any] = {"rank": RANK, "world_size": int(os.environ["WORLD_SIZE"]), "batches": [], "steps": [],
                         "checkpoints": [], "torch_saves": []}


class RecordingSampler(PKSampler):
    def __iter__(self):  # type: ignore[no-untyped-def]
        for batch in super().__iter__():
            TRACE["batches"].append(batch)
            yield batch


def _digest(tensors: list[torch.Tensor]) -> list[float]:
    """A few numbers that change with any gradient: the sum, the sum of squares and 8 fixed entries."""
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    picks = torch.linspace(0, len(flat) - 1, 8).long()
    return [float(flat.sum()), float(flat.pow(2).sum()), *map(float, flat[picks])]


original_step = loop.train_step


def recording_step(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, float]:
    terms = original_step(model, *args, **kwargs)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    TRACE["steps"].append({"loss": terms["loss"], "grad": _digest(grads)})
    return terms


original_save_checkpoint = loop.save_checkpoint
original_torch_save = torch.save


def recording_save_checkpoint(model: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
    TRACE["checkpoints"].append(Path(path).name)
    return original_save_checkpoint(model, path, *args, **kwargs)


def recording_torch_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
    TRACE["torch_saves"].append(Path(path).name)
    return original_torch_save(obj, path, *args, **kwargs)


def main() -> int:
    trace_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    loop.PKSampler = RecordingSampler  # type: ignore[misc]
    loop.train_step = recording_step
    loop.save_checkpoint = recording_save_checkpoint
    loop.torch.save = recording_torch_save  # type: ignore[assignment]
    built: list[torch.nn.Module] = []
    original_build = loop.build_training_model

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        model = original_build(*args, **kwargs)
        built.append(model)
        return model

    loop.build_training_model = recording_build
    code = train_main(argv)
    TRACE["params"] = _digest([p for p in built[0].parameters()])
    TRACE["exit_code"] = code
    trace_dir.mkdir(parents=True, exist_ok=True)
    (trace_dir / f"rank{RANK}.json").write_text(json.dumps(TRACE))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
