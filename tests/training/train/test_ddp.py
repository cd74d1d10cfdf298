"""DDP for real: torchrun launches two CPU ranks (gloo) of reid-train on SYNTHETIC players for a few steps.

Both ranks must train on disjoint batches, see identical (all-reduced) gradients and end with identical weights,
and only rank 0 may write checkpoints and the resume state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.data.synthetic import SyntheticConfig, generate_soccernet_tree

REPO = Path(__file__).resolve().parents[3]
DATA = SyntheticConfig(train_games=3, valid_games=1, test_games=0, actions_per_game=2, players_per_action=4,
                       views=3, height=32, width=16, occlusion_p=0.0, low_res_p=0.0)
STEPS = 3


@pytest.mark.slow
def test_torchrun_two_ranks_train_disjoint_batches_with_shared_gradients(tmp_path: Path) -> None:
    generate_soccernet_tree(tmp_path / "data", DATA)
    out, trace = tmp_path / "run", tmp_path / "trace"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "training" / "train" / "ddp_worker.py"), str(trace),
        f"data.root={tmp_path / 'data'}", "data.height=32", "data.width=16", "data.workers=0", "data.pad=2",
        "model.name=osnet_x0_25", "optim.epochs=1", f"optim.steps_per_epoch={STEPS}", "optim.warmup_steps=1",
        "sampler.identities_per_batch=2", "sampler.instances_per_identity=2",
        "run.device=cpu", "run.progress=false", "run.log_every=1", "run.channels_last=false",
        f"run.out_dir={out}",
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((trace / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["exit_code"]) for r in ranks] == [(0, 2, 0), (1, 2, 0)]

    batches = [[tuple(b) for b in r["batches"][:STEPS]] for r in ranks]
    assert all(len(b) == STEPS for b in batches)
    assert not set(batches[0]) & set(batches[1]), "a batch was trained on both ranks"
    assert not {i for b in batches[0] for i in b} & {i for b in batches[1] for i in b}

    steps = [r["steps"] for r in ranks]
    assert len(steps[0]) == len(steps[1]) == STEPS
    for a, b in zip(steps[0], steps[1], strict=True):
        assert a["grad"] == pytest.approx(b["grad"], rel=1e-5, abs=1e-8)  # all-reduced: the same gradient
    assert any(a["loss"] != b["loss"] for a, b in zip(steps[0], steps[1], strict=True))  # on different data
    assert ranks[0]["params"] == pytest.approx(ranks[1]["params"], rel=1e-6, abs=1e-9)

    assert ranks[1]["checkpoints"] == [] and ranks[1]["torch_saves"] == []
    assert sorted(ranks[0]["checkpoints"]) == ["best.safetensors", "last.safetensors"]
    assert ranks[0]["torch_saves"] == ["state.pt"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["run"]["world_size"] == 2
