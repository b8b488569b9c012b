"""Deterministic, resumable, rank-splittable sample order.

An epoch is a fixed sequence of ``steps * accum * world * batch`` *positions*; position ``pos``
holds a dataset index (from permutations seeded by ``(seed, epoch)``) and a per-sample
augmentation seed ``derive_seed(seed, DATA, epoch, pos)``. Optimiser step ``s`` of the epoch,
micro-batch ``a``, rank ``r`` takes the ``batch`` positions starting at
``((s * accum + a) * world + r) * batch``. Hence

* a resumed run restarting at step ``s`` sees exactly the samples and crops it would have seen;
* N processes with per-process batch ``b`` see exactly the samples and crops of one process
  with batch ``N * b`` (rank ``r`` holds its ``r``-th slice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from fcmae.engine.repro import derive_seed, generator

ORDER, DATA, MASK = 1, 2, 3  # stream tags for derive_seed


def epoch_order(dataset_len: int, length: int, seed: int, epoch: int) -> torch.Tensor:
    """``length`` dataset indices: concatenated permutations seeded by ``(seed, epoch, k)``."""
    chunks, k = [], 0
    while sum(c.numel() for c in chunks) < length:
        chunks.append(torch.randperm(dataset_len, generator=generator(seed, ORDER, epoch, k)))
        k += 1
    return torch.cat(chunks)[:length]


class StepSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset_index, sample_seed)`` keys for one rank, one epoch, from a step on."""

    def __init__(
        self,
        dataset_len: int,
        *,
        steps: int,
        batch_size: int,
        accum_steps: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        start_step: int = 0,
    ) -> None:
        if dataset_len <= 0:
            raise ValueError("the dataset is empty")
        self.dataset_len, self.steps, self.batch = dataset_len, steps, batch_size
        self.accum, self.world, self.rank = accum_steps, world_size, rank
        self.seed, self.epoch, self.start_step = seed, epoch, start_step

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum * self.batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(
            self.dataset_len, self.steps * self.accum * self.global_batch, self.seed, self.epoch
        )
        for s in range(self.start_step, self.steps):
            for a in range(self.accum):
                first = ((s * self.accum + a) * self.world + self.rank) * self.batch
                for pos in range(first, first + self.batch):
                    yield int(order[pos]), derive_seed(self.seed, DATA, self.epoch, pos)


def mask_seed(seed: int, step: int, sample: int) -> int:
    """Seed of the mask of global sample ``sample`` (0..global batch * accum) at ``step``."""
    return derive_seed(seed, MASK, step, sample)
