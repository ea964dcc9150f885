"""Plain-numpy batch loader: shuffled, deterministic, seeded, split over a device mesh.

The loader holds a split as stacked arrays (see :func:`qmri_jax.data.datasets.load_split_arrays`)
or draws them per epoch from a callable (on-the-fly mode: fresh subjects every epoch). Epoch ``e``'s
order is ``permutation(seed, e)``, so a run restarted at any step sees the same batches. With several
processes each takes its rows of every global batch and the batch is assembled into global arrays
sharded over ``"data"``.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import jax
import numpy as np

from qmri_jax.engine import sharding as sharding_lib

__all__ = ["Loader"]


class Loader:
    """Iterate ``{key: jax.Array [B, ...]}`` batches, batch axis sharded over the mesh.

    Args:
      source: stacked arrays ``{key: [N, ...]}``, or ``epoch -> arrays`` (on-the-fly mode).
      batch_size: global batch size (divisible by the mesh size).
      seed: shuffling seed.
      mesh: device mesh (``None``: a mesh over all devices).
      shuffle: permute examples each epoch.
      keys: the keys to yield (default: all numeric arrays).
      drop_remainder: drop the last partial batch (kept batches have a static shape for ``jit``).
    """

    def __init__(self, source: Mapping[str, np.ndarray] | Callable[[int], Mapping[str, np.ndarray]],
                 batch_size: int, *, seed: int = 0, mesh=None, shuffle: bool = True,
                 keys=None, drop_remainder: bool = True):
        self.mesh = mesh if mesh is not None else sharding_lib.create_mesh()
        sharding_lib.check_batch_size(batch_size, self.mesh)
        nproc = jax.process_count()
        if batch_size % nproc:
            raise ValueError(f"batch_size={batch_size} is not divisible by {nproc} processes")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.keys = keys
        self.drop_remainder = drop_remainder
        self._source = source
        self._cached_epoch = None
        self._cached = None

    def arrays(self, epoch: int) -> Mapping[str, np.ndarray]:
        if not callable(self._source):
            return self._source
        if self._cached_epoch != epoch:
            self._cached, self._cached_epoch = self._source(epoch), epoch
        return self._cached

    def num_examples(self, epoch: int = 0) -> int:
        return len(next(iter(self.arrays(epoch).values())))

    def steps_per_epoch(self, epoch: int = 0) -> int:
        n = self.num_examples(epoch)
        steps = n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)
        if steps == 0:
            raise ValueError(f"{n} examples are fewer than one batch of {self.batch_size}")
        return steps

    def order(self, epoch: int) -> np.ndarray:
        n = self.num_examples(epoch)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def host_batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step`` of ``epoch`` (numpy)."""
        arrays = self.arrays(epoch)
        idx = self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        if len(idx) < self.batch_size:  # pad a final partial batch by wrapping (no drop_remainder;
            # cyclically, as often as needed when the split is smaller than a batch)
            idx = np.concatenate([idx, np.resize(self.order(epoch), self.batch_size - len(idx))])
        nproc, pid = jax.process_count(), jax.process_index()
        local = idx.reshape(nproc, -1)[pid]
        keys = self.keys or [k for k, v in arrays.items() if np.asarray(v).dtype != object]
        return {k: np.asarray(arrays[k])[local] for k in keys}

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Batches of one epoch, from ``start_step`` (for exact resume)."""
        for step in range(start_step, self.steps_per_epoch(epoch)):
            yield sharding_lib.put_batch(self.host_batch(epoch, step), self.mesh)

    def __iter__(self) -> Iterator[dict]:
        """Endless batches over epochs 0, 1, 2 ..."""
        epoch = 0
        while True:
            yield from self.epoch(epoch)
            epoch += 1

    def batch_at(self, global_step: int) -> dict:
        """The batch a run sees at ``global_step`` (epochs of constant length)."""
        spe = self.steps_per_epoch(0)
        return sharding_lib.put_batch(self.host_batch(global_step // spe, global_step % spe),
                                      self.mesh)
