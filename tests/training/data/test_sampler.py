"""PKSampler: batch structure, within-action drawing and cross-game mixing, full coverage every epoch,
replacement, determinism, distributed shares, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from training.data.sampler import PKSampler, epoch_coverage


def _balanced(ids: int, per_id: int) -> list[int]:
    return [pid for pid in range(ids) for _ in range(per_id)]


def test_batches_hold_p_identities_times_k() -> None:
    pids = _balanced(12, 9)
    sampler = PKSampler(pids, P=4, K=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(pids[i] for i in batch)
        assert len(counts) == 4 and set(counts.values()) == {3}
        assert len(set(batch)) == 12  # enough instances: no index repeated
        for j in range(0, 12, 3):  # identity-major layout
            assert len({pids[i] for i in batch[j:j + 3]}) == 1
    used = Counter(i for b in batches for i in b)
    assert max(used.values()) == 1  # chunks are disjoint within an epoch
    assert len(used) >= 0.8 * len(pids)


def test_identities_with_few_instances_are_sampled_with_replacement() -> None:
    pids = [0, 0, 1, 2, 2, 3, 3, 3]
    batches = list(PKSampler(pids, P=4, K=4, seed=0))
    assert len(batches) == 1
    counts = Counter(pids[i] for i in batches[0])
    assert counts == {0: 4, 1: 4, 2: 4, 3: 4}
    assert batches[0].count(2) == 4  # the only image of pid 1


def _actions(sizes: list[list[int]], crops: int = 3) -> tuple[list[int], list[str]]:
    """sizes[g][a] identities in action a of game g, ``crops`` crops each -> (pids, groups "game/action")."""
    pids, groups = [], []
    for g, actions in enumerate(sizes):
        for a, n_ids in enumerate(actions):
            for _ in range(n_ids):
                pid = len(set(pids))
                pids += [pid] * crops
                groups += [f"league/season/game{g}/{a}"] * crops
    return pids, groups


def _game(group: str) -> str:
    return group.rpartition("/")[0]


def test_within_group_batches_keep_one_action_per_game() -> None:
    """Full batches come from one action; mixed ones never hold two actions of the same game (the same person
    would appear there under two labels)."""
    pids, groups = _actions([[5, 4, 2], [3, 6], [2, 2, 7]])
    sampler = PKSampler(pids, groups, P=3, K=2, within_group=True, seed=4)
    batches = list(sampler)
    assert batches and sampler.remainder_batches > 0
    single = 0
    for batch in batches:
        assert len(batch) == 6 and len({pids[i] for i in batch}) == 3
        actions_of_game: dict[str, set[str]] = {}
        for i in batch:
            actions_of_game.setdefault(_game(groups[i]), set()).add(groups[i])
        assert all(len(actions) == 1 for actions in actions_of_game.values()), actions_of_game
        single += len({groups[i] for i in batch}) == 1
    assert single >= 4  # the 5-, 6- and 7-identity actions fill batches on their own first


@pytest.mark.parametrize("within_group", [True, False])
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_every_identity_and_every_crop_is_used_every_epoch(within_group: bool, epoch: int) -> None:
    """Actions smaller than P, identities with fewer than K crops and identities whose crop count is not a
    multiple of K all take part in every epoch."""
    rng = np.random.default_rng(epoch)
    pids, groups = [], []
    for g in range(6):
        for a in range(4):
            for _ in range(int(rng.integers(2, 11))):  # 2..10 identities per action, P = 8
                pid = len(set(pids))
                n = int(rng.integers(1, 9))  # 1..8 crops, K = 4
                pids += [pid] * n
                groups += [f"l/s/g{g}/{a}"] * n
    sampler = PKSampler(pids, groups, P=8, K=4, within_group=within_group, seed=11)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    used = {i for batch in batches for i in batch}
    assert used == set(range(len(pids)))
    coverage = epoch_coverage(sampler, pids, epoch)
    assert coverage["identity_share"] == 1.0 and coverage["crop_share"] == 1.0
    for batch in batches:
        assert len(batch) == 32 and len({pids[i] for i in batch}) == 8


def test_identity_with_fewer_than_k_crops_uses_each_crop() -> None:
    pids = [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    batch = next(iter(PKSampler(pids, P=3, K=4, seed=0)))
    first = [i for i in batch if pids[i] == 0]
    assert sorted(first) == [0, 0, 1, 1]  # two crops, each twice (not one of them four times)


def test_distributed_padding_keeps_every_identity() -> None:
    pids, groups = _actions([[5, 3], [4, 2, 6]])
    shares = [list(PKSampler(pids, groups, P=4, K=2, within_group=True, num_replicas=3, rank=r, seed=2,
                             drop_last=False)) for r in range(3)]
    assert len({len(s) for s in shares}) == 1
    assert {pids[i] for s in shares for b in s for i in b} == set(pids)


def test_same_epoch_same_plan_new_epoch_new_plan() -> None:
    pids = _balanced(10, 8)
    a, b = PKSampler(pids, P=5, K=4, seed=3), PKSampler(pids, P=5, K=4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(PKSampler(pids, P=5, K=4, seed=4)) != first


def test_distributed_shares_are_disjoint_and_equal() -> None:
    pids = _balanced(20, 8)
    full = [tuple(b) for b in PKSampler(pids, P=4, K=4, num_replicas=1, rank=0, seed=9)]
    shares = [[tuple(b) for b in PKSampler(pids, P=4, K=4, num_replicas=3, rank=r, seed=9)] for r in range(3)]
    assert len({len(s) for s in shares}) == 1
    assert len(shares[0]) == len(full) // 3
    flat = [b for s in shares for b in s]
    assert len(set(flat)) == len(flat)  # no batch on two ranks
    assert set(flat) <= set(full)
    padded = [list(PKSampler(pids, P=4, K=4, num_replicas=3, rank=r, seed=9, drop_last=False)) for r in range(3)]
    assert len({len(s) for s in padded}) == 1
    assert len(padded[0]) == -(-len(full) // 3)
    assert {tuple(b) for s in padded for b in s} == set(full)


def test_works_as_dataloader_batch_sampler() -> None:
    pids = _balanced(6, 4)
    dataset = TensorDataset(torch.arange(len(pids)), torch.tensor(pids))
    loader = DataLoader(dataset, batch_sampler=PKSampler(pids, P=3, K=2, seed=0))
    batches = list(loader)
    assert len(batches) == len(loader.batch_sampler)  # type: ignore[arg-type]
    for index, pid in batches:
        assert index.shape == (6,) and torch.equal(pid, torch.tensor(pids)[index])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pids": [0, 1], "P": 0, "K": 2}, "P and K"),
        ({"pids": [0, 1], "P": 1, "K": 0}, "P and K"),
        ({"pids": [], "P": 1, "K": 1}, "empty"),
        ({"pids": [0, 1, 2], "P": 4, "K": 1}, "fewer than P"),
        ({"pids": [0, 1], "P": 1, "K": 1, "within_group": True}, "needs groups"),
        ({"pids": [0, 1], "groups": ["a"], "P": 1, "K": 1}, "entries"),
        ({"pids": [0, 0], "groups": ["a", "b"], "P": 1, "K": 1, "within_group": True}, "one group"),
        ({"pids": [0, -1], "P": 1, "K": 1}, "unlabelled"),
        ({"pids": [0, 1], "P": 1, "K": 1, "num_replicas": 2, "rank": 2}, "rank"),
        ({"pids": [0, 1], "P": 1, "K": 1, "num_replicas": 0}, "num_replicas"),
        ({"pids": [0, 1], "P": 2, "K": 1, "num_replicas": 2, "rank": 0}, "fewer than num_replicas"),
    ],
)
def test_impossible_settings_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PKSampler(**kwargs)


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", world_size=2, rank=rank)
    try:
        sampler = PKSampler(_balanced(10, 8), P=2, K=4, seed=5)  # world size and rank from torch.distributed
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps([sampler.num_replicas, sampler.rank, list(sampler)]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_reads_world_size_and_rank_from_torch_distributed(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r[:2] for r in results] == [[2, 0], [2, 1]]
    batches = [[tuple(b) for b in r[2]] for r in results]
    assert len(batches[0]) == len(batches[1]) > 0
    assert not set(batches[0]) & set(batches[1])
    expected = [[tuple(b) for b in PKSampler(_balanced(10, 8), P=2, K=4, seed=5, num_replicas=2, rank=r)]
                for r in range(2)]
    assert batches == expected
