"""The same rollouts get the same rewards from the job's reward model and from a reward server
(`reward.url`) loading it, responses cut at max_new_tokens included: a response's reward is the
model's reading of its text, whichever way the text travels."""

from __future__ import annotations

import torch

from megatron_rm.data.tokenize import encode_prompts
from megatron_rm.generation.generator import EOS, LENGTH, Completion
from megatron_rm.loading.reward import load_model
from megatron_rm.ppo.remote_reward import RemoteReward
from megatron_rm.ppo.rewards import ModelRewards, ServerRewards
from megatron_rm.ppo.sampling import rollout_texts
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.server.app import build_app
from megatron_rm.server.serving_loop import Batcher, Lead
from tests.ppo.checkpoints import save_tiny_models
from tests.scoring.test_server import running


def test_the_job_and_a_reward_server_give_the_same_rewards(single_rank, tmp_path):
    model = load_model(save_tiny_models(tmp_path)["reward"])
    tokenizer = model.tokenizer
    prompts = encode_prompts(tokenizer, ["name a fruit:", "count to three:", "say hi", "say hi"])
    sampled = torch.Generator().manual_seed(5)
    # Sampled ids need not be the tokenizer's own spelling of their text, as a policy's need not.
    tokens = [torch.randint(3, len(tokenizer), (length,), generator=sampled).tolist() for length in (5, 9, 7)]
    eos = tokenizer.eos_token_id
    completions = [Completion(tokens[0] + [eos], [0.0] * 6, EOS), Completion(tokens[1], [0.0] * 9, LENGTH),
                   Completion(tokens[2] + [eos], [0.0] * 8, EOS), Completion(tokens[2], [0.0] * 7, LENGTH)]
    texts = rollout_texts(tokenizer, prompts, completions)
    micro_batches = lambda: [texts[:2], texts[2:]]  # noqa: E731
    job, _ = ModelRewards(model, normalize=False)([], micro_batches)
    scorer = Scorer(model)
    with running(build_app(scorer, Batcher(Lead(scorer)), name="rm")) as url:
        served, _ = ServerRewards(RemoteReward(url, retries=0), single_rank)([], micro_batches)
    for mine, theirs in zip(job, served):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    flat = torch.cat(job)
    # A response cut at max_new_tokens is read as the text it is, as if it had stopped there:
    # the no-EOS policy, not the transport, decides what PPO makes of it.
    torch.testing.assert_close(flat[2], flat[3], rtol=0, atol=1e-6)
    assert len({round(value, 4) for value in flat[:3].tolist()}) == 3
    # And it is what the scorer reads for the text: at the EOS this model reads every text at.
    expected = scorer.score([one.ids for one in scorer.encoder.whole_texts(texts)])[:, 0]
    assert all(one.ids[-1] == eos for one in scorer.encoder.whole_texts(texts))
    torch.testing.assert_close(flat, expected, rtol=0, atol=1e-5)
