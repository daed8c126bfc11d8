"""The sampler: a function of (seed, epoch, data, step); bucketing; resume on any DP size; the prompt split."""

import numpy as np
import pytest

from megatron_rm.data.sampler import GroupSampler
from megatron_rm.data.split import split_by_prompt
from megatron_rm.errors import CheckpointError, DataError

LENGTHS = np.random.default_rng(0).lognormal(np.log(100), 0.6, size=1000).astype(int) + 4


def test_each_epoch_covers_groups_once_and_differs():
    sampler = GroupSampler(LENGTHS, global_batch_size=64, seed=3, bucket_window=0)
    steps = sampler.steps_per_epoch
    assert steps == 1000 // 64
    epoch0 = np.concatenate([sampler.global_batch(s) for s in range(steps)])
    epoch1 = np.concatenate([sampler.global_batch(s) for s in range(steps, 2 * steps)])
    assert len(set(epoch0.tolist())) == len(epoch0) == steps * 64
    assert not np.array_equal(epoch0, epoch1)


def test_order_depends_only_on_seed_epoch_and_data():
    a = GroupSampler(LENGTHS, 64, seed=3, bucket_window=4)
    b = GroupSampler(LENGTHS.copy(), 64, seed=3, bucket_window=4)
    for step in (0, 5, 40, 17, 3):  # any visiting order, including going back an epoch
        assert np.array_equal(a.global_batch(step), b.global_batch(step))
    assert not np.array_equal(a.global_batch(0), GroupSampler(LENGTHS, 64, seed=4, bucket_window=4).global_batch(0))


def test_bucketing_groups_similar_lengths_and_keeps_every_group():
    plain = GroupSampler(LENGTHS, 32, seed=1, bucket_window=0)
    bucketed = GroupSampler(LENGTHS, 32, seed=1, bucket_window=8)
    steps = plain.steps_per_epoch

    def spread(sampler):
        return np.mean([np.ptp(LENGTHS[sampler.global_batch(s)]) for s in range(steps)])

    assert spread(bucketed) < 0.5 * spread(plain)
    seen = np.sort(np.concatenate([bucketed.global_batch(s) for s in range(steps)]))
    assert np.array_equal(seen, np.sort(np.concatenate([plain.global_batch(s) for s in range(steps)])))
    # Window order is shuffled: not every epoch starts with its longest batch.
    firsts = [LENGTHS[bucketed.global_batch(e * steps)].max() for e in range(6)]
    assert len(set(firsts)) > 1


def test_rank_shares_tile_the_global_batch():
    sampler = GroupSampler(LENGTHS, 64, seed=2, bucket_window=2)
    for dp in (1, 2, 4):
        shares = [sampler.rank_share(7, dp, r) for r in range(dp)]
        assert np.array_equal(np.concatenate(shares), sampler.global_batch(7))


@pytest.mark.parametrize("dp_before,dp_after", [(2, 2), (2, 4), (4, 1)])
def test_resume_sees_what_an_uninterrupted_run_sees(dp_before, dp_after):
    """Stop after k steps, restore from the saved state on another DP size: same groups per rank."""
    uninterrupted = GroupSampler(LENGTHS, 64, seed=9, bucket_window=4)
    stopped_at = 20  # past the first epoch's end (15 steps)
    first_run = GroupSampler(LENGTHS, 64, seed=9, bucket_window=4)
    for step in range(stopped_at):
        first_run.rank_share(step, dp_before, 0)
    state = first_run.state_dict(stopped_at)
    assert state["epoch"] == 1 and state["consumed_samples"] == stopped_at * 64
    resumed = GroupSampler(LENGTHS, 64, seed=9, bucket_window=4)
    start = resumed.resume_step(state)
    assert start == stopped_at
    for step in range(start, start + 15):
        for rank in range(dp_after):
            assert np.array_equal(resumed.rank_share(step, dp_after, rank),
                                  uninterrupted.rank_share(step, dp_after, rank))


def test_resume_refuses_other_data_or_settings():
    state = GroupSampler(LENGTHS, 64, seed=9).state_dict(3)
    with pytest.raises(CheckpointError, match="num_groups"):
        GroupSampler(LENGTHS[:-1], 64, seed=9).resume_step(state)
    with pytest.raises(CheckpointError, match="seed"):
        GroupSampler(LENGTHS, 64, seed=8).resume_step(state)


def test_too_few_groups_is_an_error():
    with pytest.raises(DataError, match="fewer than train.global_batch_size=64"):
        GroupSampler(LENGTHS[:10], 64, seed=0)


def test_split_by_prompt_keeps_a_prompt_on_one_side():
    keys = np.random.default_rng(1).integers(0, 2**63, size=300, dtype=np.uint64)
    repeated = np.concatenate([keys, keys[:100], keys[:50]])  # prompts with several rows
    train, held_out = split_by_prompt(repeated, 0.2, seed=0)
    assert len(train) + len(held_out) == len(repeated)
    assert not set(repeated[train].tolist()) & set(repeated[held_out].tolist())
    assert 0.1 < len(set(repeated[held_out].tolist())) / 300 < 0.3
    # Appending rows never moves an existing prompt across the split.
    _, held_out_prefix = split_by_prompt(repeated[:300], 0.2, seed=0)
    assert set(held_out_prefix.tolist()) == set(held_out[held_out < 300].tolist())
    assert not np.array_equal(split_by_prompt(keys, 0.2, seed=1)[1], split_by_prompt(keys, 0.2, seed=0)[1])
