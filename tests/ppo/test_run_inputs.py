"""What a PPO run refuses before it trains, each with a message naming the key, file or URL: bad
configuration, models of the wrong kind or tokenizer, broken prompt rows, a reward server that
is down; and the prompt sampler a resumed run depends on."""

from __future__ import annotations

import json

import pytest

from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError, ConfigError, DataError, RewardServerError
from megatron_rm.ppo.config import PPOConfig, validate_ppo
from megatron_rm.ppo.models import find_sources
from megatron_rm.ppo.prompts import PromptSampler, load_prompts
from megatron_rm.ppo.remote_reward import RemoteReward
from megatron_rm.ppo.rewards import ServerRewards
from megatron_rm.ppo.trainer import train_ppo
from tests.conftest import DEMO
from tests.convert.hf_models import save_model
from tests.ppo.checkpoints import save_tiny_models


def _config(**changes) -> PPOConfig:
    cfg = PPOConfig()
    cfg.actor.init, cfg.reward.model = "actor", "reward"
    for key, value in changes.items():
        group, name = key.split("__")
        setattr(getattr(cfg, group), name, value)
    return cfg


def test_the_critic_free_estimators_need_no_critic_and_no_reward_model():
    validate_ppo(_config(algorithm__advantage="grpo", reward__model=None, reward__functions=["gsm8k"]), world_size=1,
                 cuda=False)


@pytest.mark.parametrize("changes,message", [
    ({"kl__target": 0.0}, "kl.target=0.0 must be > 0"),
    ({"kl__horizon": -5}, "kl.horizon=-5 must be > 0"),
    ({"kl__estimator": "k4"}, "kl.estimator='k4' must be one of k1, abs, k2, k3"),
    ({"reward__url": "http://127.0.0.1:1"}, "set at most one of reward.model"),
    ({"actor__init": None}, "actor.init must name the starting policy"),
    ({"rollout__temperature": 0.0}, "rollout.temperature=0.0 must be > 0"),
    ({"ppo__mini_batch_size": 24}, "ppo.mini_batch_size=24 does not divide the step's 64 responses"),
    ({"ppo__gamma": 1.5}, "ppo.gamma=1.5 must be in [0, 1]"),
    ({"rollout__no_eos": "drop"}, "rollout.no_eos='drop' must be one of mask, penalty"),
    ({"reward__clip": 0.0}, "reward.clip=0.0 must be > 0 or null"),
    ({"ppo__clip_high": 0.0}, "ppo.clip_high=0.0 must be > 0 or null"),
    ({"kl__init_coef": -0.1}, "kl.init_coef=-0.1 must be >= 0"),
    ({"rollout__no_eos_penalty": float("nan")}, "rollout.no_eos_penalty=nan must be a finite number"),
    ({"rollout__temperature": float("inf")}, "rollout.temperature=inf must be a finite number"),
    ({"ppo__gamma": float("nan")}, "ppo.gamma=nan must be a finite number"),
    ({"algorithm__advantage": "ppo"},
     "algorithm.advantage='ppo' must be one of gae, grpo, rloo, reinforce_pp, reinforce_pp_baseline"),
    ({"algorithm__advantage": "grpo", "rollout__samples_per_prompt": 1},
     "algorithm.advantage=grpo compares the responses to one prompt: rollout.samples_per_prompt=1 must be >= 2"),
    ({"reward__model": None, "reward__url": "http://127.0.0.1:1"},
     "algorithm.advantage=gae needs a critic: set critic.init"),
    ({"algorithm__advantage": "rloo", "critic__init": "critic"},
     "critic.init is set but algorithm.advantage=rloo uses no critic"),
    ({"kl__placement": "loss"}, "kl.placement=loss needs kl.type=fixed"),
    ({"kl__placement": "loss", "kl__type": "fixed", "kl__estimator": "abs"},
     "kl.estimator='abs' must be one of k1, k2, k3"),
    ({"reward__functions": ["gsm8k"], "reward__weights": [1.0]}, "reward.weights has 1 values for 2 reward sources"),
    ({"reward__model": None}, "no reward: set reward.model, reward.url or reward.functions"),
    ({"reward__functions": ["gsm8k"], "reward__weights": [1.0, float("nan")]},
     "reward.weights[1]=nan must be a finite number"),
    ({"reward__overlong_buffer": 100}, "reward.overlong_buffer=100 exceeds rollout.max_new_tokens=64"),
    ({"ppo__loss_agg": "sum"}, "ppo.loss_agg='sum' must be one of token_mean"),
    ({"reward__combine": "max"}, "reward.combine='max' must be one of sum, normalize_then_sum"),
    ({"rollout__engine": "sglang"}, "rollout.engine='sglang' must be one of megatron, vllm"),
    ({"rollout__is_correction": True, "rollout__is_cap": 0.5}, "rollout.is_cap=0.5 must be >= 1"),
])
def test_bad_configuration_is_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate_ppo(_config(**changes), world_size=1, cuda=False)


def test_micro_batches_divide_a_replicas_share_of_the_mini_batch():
    cfg = _config(train__prompts_per_step=12, ppo__mini_batch_size=24, train__micro_batch_size=8)
    validate_ppo(cfg, world_size=4, cuda=False)
    assert [cfg.micro_batch_size(dp) for dp in (1, 2, 4)] == [8, 6, 6]  # shares of 24, 12 and 6 responses
    with pytest.raises(ConfigError, match="ppo.mini_batch_size=24 is not divisible by the data-parallel size 16"):
        validate_ppo(_config(train__prompts_per_step=16, ppo__mini_batch_size=24, rollout__samples_per_prompt=3),
                     world_size=16, cuda=False)


def test_a_fixed_controller_needs_no_target_and_dp_must_divide_the_prompts():
    validate_ppo(_config(kl__type="fixed", kl__target=0.0, kl__horizon=0), world_size=1, cuda=False)
    with pytest.raises(ConfigError, match="train.prompts_per_step=16 is not divisible by the data-parallel size 3"):
        validate_ppo(_config(), world_size=3, cuda=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory, single_rank):
    return save_tiny_models(tmp_path_factory.mktemp("models"))


def _sources(models, **keys):
    cfg = PPOConfig()
    cfg.actor.init, cfg.reward.model = str(models["policy"]), str(models["reward"])
    for key, value in keys.items():
        group, name = key.split("__")
        setattr(getattr(cfg, group), name, value)
    return find_sources(cfg, 1, cuda=False, te_available=False)


def test_models_of_the_wrong_kind_or_tokenizer_are_refused(models):
    found = _sources(models)
    assert found.critic.path == found.reward.path  # the critic starts from the reward model by default
    with pytest.raises(CheckpointError, match="reward"):
        _sources(models, actor__init=str(models["reward"]))  # a reward model is not a policy
    with pytest.raises(CheckpointError, match="policy"):
        _sources(models, critic__init=str(models["policy"]))  # a policy has no value head
    with pytest.raises(ConfigError, match="reward.model=.* uses another vocabulary than actor.init.*set critic.init"):
        _sources(models, reward__model=str(models["other_tokenizer"]))  # the critic would start from it
    with pytest.raises(ConfigError, match="critic.init=.* uses another vocabulary.*critic reads the actor's tokens"):
        _sources(models, reward__model=None, reward__url="http://127.0.0.1:1",
                 critic__init=str(models["other_tokenizer"]))
    # The reward model reads text with its own tokenizer: another one is fine with a critic of the actor's.
    assert _sources(models, reward__model=str(models["other_tokenizer"]), critic__init=str(models["reward"]))
    with pytest.raises(ConfigError, match="rollout.max_new_tokens=200 leaves no room"):
        _sources(models, rollout__max_new_tokens=200)


def test_a_folder_without_a_score_head_is_no_critic_or_reward_model(models, tmp_path):
    """A *ForCausalLM folder would get a head drawn at random: refused, never initialised silently."""
    save_model("llama", tmp_path / "causal", "causal_lm")
    for key in ("critic__init", "reward__model"):
        with pytest.raises(CheckpointError, match=f"{key.replace('__', '.')}=.*causal has no score head"):
            _sources(models, **{key: str(tmp_path / "causal")})


def _prompts(path, on_invalid="error"):
    tokenizer = load_tokenizer(DEMO / "tokenizer")
    return load_prompts(path, tokenizer, room=40, prompt_policy="error", on_invalid=on_invalid, max_new_tokens=88,
                        max_sequence_length=128)


def test_broken_prompt_rows_are_named_or_counted(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "User: List 3 fruits.\nAssistant:"}, {"prompt": ""}, {"other": 1}, "not an object",
            {"prompt": "word " * 80}, {"prompt": "User: Name 2 cities.\nAssistant:", "id": 7}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "{broken\n")
    with pytest.raises(DataError, match=rf"{path}: 5 invalid row\(s\):\n  {path}:2: field 'prompt': empty prompt"):
        _prompts(path)
    kept = _prompts(path, on_invalid="skip")
    assert len(kept) == 2 and kept.problems.total == 5
    assert kept.problems.counts["too_long"] == 1
    assert kept.fields[1] == rows[5]
    (tmp_path / "empty.jsonl").write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(DataError, match="no valid prompt among 1 row"):
        _prompts(tmp_path / "empty.jsonl", on_invalid="skip")


def test_the_sampler_reads_at_its_cursor_and_refuses_another_stream():
    sampler = PromptSampler(10, 4, seed=3)
    steps = [sampler.prompts(step) for step in range(5)]  # 20 positions: two whole epochs
    assert sorted(steps[0] + steps[1] + steps[2][:2]) == list(range(10))
    assert sorted(steps[2][2:] + steps[3] + steps[4]) == list(range(10))
    assert steps[0] != steps[3] and PromptSampler(10, 4, seed=3).prompts(3) == steps[3]
    assert sampler.at(6, 5) == steps[1][2:] + steps[2][:3]  # a cursor reads any stretch
    sampler.step, sampler.cursor = 2, 11  # a dynamic-sampling run that read 11 prompts in 2 steps
    restored = PromptSampler(10, 4, seed=3)
    restored.load_state_dict(sampler.state_dict())
    assert (restored.step, restored.cursor) == (2, 11)
    legacy = {key: value for key, value in sampler.state_dict().items() if key != "cursor"}
    restored.load_state_dict(legacy)  # saved before the cursor: P prompts a step
    assert restored.cursor == 8
    with pytest.raises(CheckpointError, match="same prompts file"):
        PromptSampler(11, 4, seed=3).load_state_dict(sampler.state_dict())


def test_a_reward_server_that_is_down_stops_every_rank_with_the_url(single_rank):
    rewards = ServerRewards(RemoteReward("http://127.0.0.1:9", timeout_s=1, retries=1, backoff_s=0.0), single_rank)
    with pytest.raises(RewardServerError, match=r"http://127.0.0.1:9/get_reward: 2 attempts failed"):
        rewards([], lambda: [["a text"]])


def test_a_missing_prompts_file_is_named_before_any_model_is_looked_for(tmp_path):
    """Finding and building the models takes about a minute: a wrong prompts path fails first."""
    for key in ("prompts_path", "eval_prompts_path"):
        cfg = _config(**{f"data__{key}": str(tmp_path / "nowhere.jsonl")})
        cfg.actor.init = str(tmp_path / "no-actor")  # would be the error if the models came first
        if key == "eval_prompts_path":
            cfg.data.prompts_path = str(DEMO / "data" / "train.jsonl")
        with pytest.raises(DataError, match="nowhere.jsonl: no such data file"):
            train_ppo(cfg)
