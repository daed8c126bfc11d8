"""Which groups each optimizer step trains on: a function of (seed, epoch, data, step) only.

Each epoch is a permutation of the groups seeded by (seed, epoch). With length
bucketing, consecutive windows of `bucket_window` global batches are sorted by
length, cut into global batches, and the batches of a window are shuffled, so a
step's groups have similar lengths while the order stays random across windows.
The `num_groups % global_batch_size` groups at an epoch's tail wait for the
next epoch's shuffle.

A global batch never depends on the data-parallel size, so a run resumed from
`state_dict()` on any number of ranks sees exactly the groups an uninterrupted
run would have seen.
"""

from __future__ import annotations

import numpy as np

from megatron_rm.errors import CheckpointError, DataError


def _stream(*key: int) -> np.random.Generator:
    # (seed, epoch, ...) -> an independent stream; `seed + epoch` would make seed s + 1
    # replay seed s one epoch later.
    return np.random.default_rng(np.random.SeedSequence(list(key)))


class GroupSampler:
    def __init__(self, lengths: np.ndarray, global_batch_size: int, seed: int, bucket_window: int = 1):
        """`lengths`: one sort key per group (its longest document); `bucket_window`:
        global batches sorted together (1 sorts within each step only; 0 keeps the
        shuffled order)."""
        num_groups = len(lengths)
        if num_groups < global_batch_size:
            raise DataError(f"the training set has {num_groups} groups, fewer than "
                            f"train.global_batch_size={global_batch_size}")
        self.lengths = np.asarray(lengths)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.bucket_window = bucket_window
        self.steps_per_epoch = num_groups // global_batch_size
        self._epoch, self._batches = None, None

    def global_batch(self, step: int) -> np.ndarray:
        """Positions of the groups of 0-based `step`, over all data-parallel ranks."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return self._batches[index]

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        gbs, steps = self.global_batch_size, self.steps_per_epoch
        order = _stream(self.seed, epoch).permutation(len(self.lengths))[: steps * gbs]
        if self.bucket_window == 0:
            return order.reshape(steps, gbs)
        batches = []
        window_groups = self.bucket_window * gbs
        for w, start in enumerate(range(0, len(order), window_groups)):
            window = order[start: start + window_groups]
            window = window[np.argsort(-self.lengths[window], kind="stable")]
            cut = window.reshape(-1, gbs)
            batches.append(cut[_stream(self.seed, epoch, w).permutation(len(cut))])
        return np.concatenate(batches)

    def rank_share(self, step: int, dp: int, dp_rank: int) -> np.ndarray:
        """This data-parallel rank's contiguous share of `step`'s groups."""
        batch = self.global_batch(step)
        share = len(batch) // dp
        return batch[dp_rank * share: (dp_rank + 1) * share]

    def state_dict(self, steps_done: int) -> dict:
        """What a checkpoint records to resume after `steps_done` steps."""
        return {
            "epoch": steps_done // self.steps_per_epoch,
            "consumed_samples": steps_done * self.global_batch_size,
            "num_groups": len(self.lengths),
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "bucket_window": self.bucket_window,
        }

    def resume_step(self, state: dict) -> int:
        """The step to continue from; refuses a state this sampler would not reproduce."""
        mine = self.state_dict(0)
        differences = [f"{name}: checkpoint {state.get(name)!r}, this run {mine[name]!r}"
                       for name in ("num_groups", "global_batch_size", "seed", "bucket_window")
                       if state.get(name) != mine[name]]
        if differences:
            raise CheckpointError("cannot resume the data order; the run differs from the checkpoint:\n  "
                                  + "\n  ".join(differences))
        step, rest = divmod(state["consumed_samples"], self.global_batch_size)
        if rest or step // self.steps_per_epoch != state["epoch"]:
            raise CheckpointError(f"inconsistent sampler state {state}")
        return step
