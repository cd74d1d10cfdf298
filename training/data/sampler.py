"""P x K identity batch sampler: each batch holds P identities with K crops each.

Used as a DataLoader ``batch_sampler``. Every identity is used every epoch, and every crop of it: an
identity with n crops gives ceil(n / K) chunks of K (the last one topped up with its other crops; one with
n < K repeats its crops evenly). With ``within_group=True`` (SoccerNet) batches are first drawn inside
one ranking group (one action), where hard negatives live; whatever an action cannot fill (fewer than P
identities left) is then mixed with the remainders of other actions, never two actions of the same game
in one batch, since SoccerNet person ids are only valid inside an action and the same player appears
under another label in the game's other actions. A last short batch is topped up with identities drawn
again. So no action is skipped for having fewer than P identities and no identity is dropped.

    >>> sampler = PKSampler(dataset.pids, dataset.groups, P=8, K=4, within_group=True)
    >>> loader = DataLoader(dataset, batch_sampler=sampler, num_workers=4)
    >>> for epoch in range(epochs):
    ...     sampler.set_epoch(epoch)

Distributed: every rank builds the same epoch plan from (seed, epoch), then takes every
``num_replicas``-th batch starting at its rank, so shares are disjoint and equally long.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class PKSampler(Sampler[list[int]]):
    """Yields lists of P*K dataset indices (identity-major: K indices of pid 1, then pid 2, ...).

    Args:
        pids: identity of each dataset index (non-negative ints).
        groups: ranking group of each index (required when ``within_group``); a group's game is the part
            before its last "/" ("league/season/game/action" -> "league/season/game"), or the group itself.
        P, K: identities per batch and instances per identity.
        num_replicas, rank: distributed share; default to torch.distributed when initialised, else 1 / 0.
        seed: base seed; the plan of an epoch depends only on (seed, epoch).
        within_group: draw batches inside one group first, then mix the groups' remainders across games.
        drop_last: when the epoch's batch count is not a multiple of num_replicas, drop the surplus
            (True; shares stay disjoint but the dropped batches' identities miss the epoch) or repeat batches
            from the start of the plan to fill the last round (False; every identity is used).
    """

    def __init__(
        self,
        pids: Sequence[int],
        groups: Sequence[str] | None = None,
        P: int = 16,
        K: int = 4,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        within_group: bool = False,
        drop_last: bool = True,
    ) -> None:
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be >= 1, got P={P}, K={K}")
        if len(pids) == 0:
            raise ValueError("no samples: pids is empty")
        if groups is not None and len(groups) != len(pids):
            raise ValueError(f"groups has {len(groups)} entries but pids has {len(pids)}")
        if within_group and groups is None:
            raise ValueError("within_group=True needs groups")
        world, world_rank = _world()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = world_rank if rank is None else rank
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.P, self.K = P, K
        self.seed, self.epoch = seed, 0
        self.within_group, self.drop_last = within_group, drop_last

        self._indices: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            if pid < 0:
                raise ValueError(f"pid {pid} at index {index}: unlabelled samples cannot be P x K sampled")
            self._indices[int(pid)].append(index)
        if len(self._indices) < P:
            raise ValueError(f"only {len(self._indices)} identities, fewer than P={P}")

        # Per identity: its group and game (None without within_group: every identity can share a batch).
        self._group: dict[int, str | None] = dict.fromkeys(self._indices)
        self._game: dict[int, str | None] = dict.fromkeys(self._indices)
        pools: dict[str, list[int]] = defaultdict(list)
        if within_group:
            assert groups is not None
            for index, (pid, group) in enumerate(zip(pids, groups, strict=True)):
                first = self._group[int(pid)]
                if first is None:
                    self._group[int(pid)] = group
                    self._game[int(pid)] = group.rpartition("/")[0] or group
                elif first != group:
                    raise ValueError(
                        f"pid {pid} appears in groups {first!r} and {group!r} (index {index}); "
                        "within_group sampling needs each identity inside one group"
                    )
            for pid in sorted(self._indices):
                pools[str(self._group[pid])].append(pid)
            self._pools = [ids for _, ids in sorted(pools.items())]
        else:
            self._pools = [sorted(self._indices)]
        self.remainder_batches = 0  # of the last plan: batches of step 2 / of step 3 (see _epoch_plan)
        self.topped_up = 0

        self._plan_epoch: int | None = None
        self._plan: list[list[int]] = []
        if len(self) == 0:
            raise ValueError(
                f"the data yields {len(self._epoch_plan())} batches of P={P} x K={K}, "
                f"fewer than num_replicas={self.num_replicas} (drop_last=True)"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration follows (call before each epoch)."""
        self.epoch = epoch

    def _chunks(self, pid: int, rng: np.random.Generator) -> list[list[int]]:
        """ceil(n / K) chunks of K crops covering all n crops of ``pid``; no crop twice in a chunk when n >= K."""
        indices = np.asarray(self._indices[pid])
        n, K = len(indices), self.K
        if n < K:
            tiled = np.concatenate([rng.permutation(indices) for _ in range(-(-K // n))])[:K]
            return [tiled.tolist()]
        shuffled = rng.permutation(indices)
        full = n // K
        chunks = [shuffled[i * K : (i + 1) * K].tolist() for i in range(full)]
        rest = shuffled[full * K :]
        if len(rest):
            extra = rng.choice(shuffled[: full * K], size=K - len(rest), replace=False)
            chunks.append([*rest.tolist(), *extra.tolist()])
        return chunks

    def _weighted_order(self, alive: list[int], chunks: dict[int, list[list[int]]],
                        rng: np.random.Generator) -> list[int]:
        """``alive`` in a random order where identities with more chunks left tend to come first."""
        weights = np.asarray([len(chunks[pid]) for pid in alive], dtype=np.float64)
        keys = rng.random(len(alive)) ** (1.0 / weights)  # Efraimidis-Spirakis weighted sampling
        return [alive[i] for i in np.argsort(-keys, kind="stable")]

    def _compatible(self, pid: int, games: dict[str | None, str | None]) -> bool:
        game = self._game[pid]
        return game is None or game not in games or games[game] == self._group[pid]

    def _pick(self, candidates: list[int], count: int, games: dict[str | None, str | None]) -> list[int]:
        """Up to ``count`` of ``candidates`` (in order) that fit the batch's games; ``games`` is updated."""
        picked: list[int] = []
        for pid in candidates:
            if len(picked) == count:
                break
            if self._compatible(pid, games):
                picked.append(pid)
                games[self._game[pid]] = self._group[pid]
        return picked

    def _epoch_plan(self) -> list[list[int]]:
        """All batches of the current epoch, identical on every rank."""
        if self._plan_epoch == self.epoch:
            return self._plan
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = {pid: self._chunks(pid, rng) for pid in sorted(self._indices)}
        plan: list[list[int]] = []
        # 1. Inside each group (one SoccerNet action, or everything) while it has P identities with chunks left.
        for pool in self._pools:
            while True:
                alive = [pid for pid in pool if chunks[pid]]
                if len(alive) < self.P:
                    break
                picked = self._weighted_order(alive, chunks, rng)[: self.P]
                plan.append([index for pid in picked for index in chunks[pid].pop()])
        # 2. The groups' remainders mixed, at most one action per game in a batch.
        self.remainder_batches = self.topped_up = 0
        while True:
            alive = [pid for pid in sorted(chunks) if chunks[pid]]
            if not alive:
                break
            games: dict[str | None, str | None] = {}
            picked = self._pick(self._weighted_order(alive, chunks, rng), self.P, games)
            batch = [index for pid in picked for index in chunks[pid].pop()]
            # 3. A short batch is topped up with identities drawn again (fresh chunks of K of their crops).
            if len(picked) < self.P:
                others = [pid for pid in rng.permutation(sorted(self._indices)).tolist() if pid not in picked]
                extra = self._pick(others, self.P - len(picked), games)
                if len(extra) < self.P - len(picked):  # too few compatible games: take any other identity
                    rest = [pid for pid in others if pid not in extra]
                    extra += rest[: self.P - len(picked) - len(extra)]
                batch += [index for pid in extra for index in self._chunks(pid, rng)[0]]
                self.topped_up += 1
            self.remainder_batches += 1
            plan.append(batch)
        order = rng.permutation(len(plan))
        self._plan = [plan[i] for i in order]
        self._plan_epoch = self.epoch
        return self._plan

    def __len__(self) -> int:
        total = len(self._epoch_plan())
        if self.drop_last:
            return total // self.num_replicas
        return -(-total // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        plan = self._epoch_plan()
        per_rank = len(self)
        needed = per_rank * self.num_replicas
        if needed > len(plan):
            plan = plan + [plan[i % len(plan)] for i in range(needed - len(plan))]
        for batch in plan[self.rank : needed : self.num_replicas]:
            yield list(batch)


def epoch_coverage(sampler: PKSampler, pids: Sequence[int], epoch: int = 0) -> dict[str, float | int]:
    """What one epoch of ``sampler`` (all ranks together) uses: shares of identities and crops, and how many
    batch slots repeat a crop already drawn that epoch."""
    sampler.set_epoch(epoch)
    plan = [index for batch in sampler._epoch_plan() for index in batch]
    used = set(plan)
    identities = set(pids)
    used_ids = {pids[i] for i in used}
    return {
        "identities": len(identities),
        "identity_share": round(len(used_ids) / len(identities), 4),
        "crops": len(pids),
        "crop_share": round(len(used) / len(pids), 4),
        "batches": len(sampler._epoch_plan()),
        "repeated_slot_share": round(1 - len(used) / len(plan), 4) if plan else 0.0,
    }
