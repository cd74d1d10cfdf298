"""P x K identity batch sampler: each batch holds P identities with K crops each.

Used as a DataLoader ``batch_sampler``; with ``within_group=True`` all P identities of a batch come
from one ranking group (one SoccerNet action, or one game if the caller passes game names), which is
where hard negatives live for SoccerNet and where person ids are valid at all.

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

    An identity with n >= K instances contributes floor(n / K) disjoint chunks of K per epoch; one with
    n < K contributes a single chunk drawn with replacement. Batches pick P distinct identities that
    still have chunks, weighted by how many they have left, until fewer than P remain.

    Args:
        pids: identity of each dataset index (non-negative ints).
        groups: ranking group of each index (required when ``within_group``).
        P, K: identities per batch and instances per identity.
        num_replicas, rank: distributed share; default to torch.distributed when initialised, else 1 / 0.
        seed: base seed; the plan of an epoch depends only on (seed, epoch).
        within_group: draw the P identities of a batch from a single group; groups with fewer than P
            identities are skipped (logged).
        drop_last: when the epoch's batch count is not a multiple of num_replicas, drop the surplus
            (True, shares stay disjoint) or repeat batches from the start of the plan to fill the last round.
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

        # Ordered identity pools, each sampled independently: one per group, or a single global one.
        pools: dict[str, list[int]] = defaultdict(list)
        if within_group:
            assert groups is not None
            group_of: dict[int, str] = {}
            for index, (pid, group) in enumerate(zip(pids, groups, strict=True)):
                if group_of.setdefault(int(pid), group) != group:
                    raise ValueError(
                        f"pid {pid} appears in groups {group_of[int(pid)]!r} and {group!r} (index {index}); "
                        "within_group sampling needs each identity inside one group"
                    )
            for pid in sorted(self._indices):
                pools[group_of[pid]].append(pid)
            small = {g: ids for g, ids in pools.items() if len(ids) < P}
            if len(small) == len(pools):
                largest = max(len(ids) for ids in pools.values())
                raise ValueError(f"every group has fewer than P={P} identities (largest has {largest})")
            if small:
                skipped = sum(len(self._indices[pid]) for ids in small.values() for pid in ids)
                logger.warning(
                    "PKSampler: %d of %d groups have fewer than P=%d identities; %d samples skipped",
                    len(small), len(pools), P, skipped,
                )
            self._pools = [ids for g, ids in sorted(pools.items()) if g not in small]
        else:
            if len(self._indices) < P:
                raise ValueError(f"only {len(self._indices)} identities, fewer than P={P}")
            self._pools = [sorted(self._indices)]

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

    def _pool_batches(self, pool: list[int], rng: np.random.Generator) -> list[list[int]]:
        chunks: dict[int, list[list[int]]] = {}
        for pid in pool:
            indices = np.asarray(self._indices[pid])
            if len(indices) < self.K:
                chosen = rng.choice(indices, size=self.K, replace=True)
                chunks[pid] = [chosen.tolist()]
            else:
                shuffled = rng.permutation(indices)
                n_chunks = len(indices) // self.K
                chunks[pid] = [shuffled[i * self.K : (i + 1) * self.K].tolist() for i in range(n_chunks)]
        batches: list[list[int]] = []
        while True:
            alive = [pid for pid in pool if chunks[pid]]
            if len(alive) < self.P:
                return batches
            weights = np.asarray([len(chunks[pid]) for pid in alive], dtype=np.float64)
            picked = rng.choice(len(alive), size=self.P, replace=False, p=weights / weights.sum())
            batches.append([index for i in picked for index in chunks[alive[i]].pop()])

    def _epoch_plan(self) -> list[list[int]]:
        """All batches of the current epoch, identical on every rank."""
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            plan = [batch for pool in self._pools for batch in self._pool_batches(pool, rng)]
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
