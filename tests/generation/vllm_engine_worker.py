"""The vLLM engine beside the megatron engine and transformers on the same weights, before and
after a training step (tests/generation/test_vllm_engine.py).

    torchrun --standalone --nproc-per-node TP tests/generation/vllm_engine_worker.py OUT

Builds a random tiny policy with head size 32 (vLLM's CPU attention has no kernel for 16) at
TP=world, loads its weights into a vLLM engine through the weight stream, and writes to
OUT/result.json, from rank 0: the greedy tokens of both engines and of `transformers.generate`
(a Llama built from the streamed weights), the largest gap between the vLLM engine's
log-probabilities (greedy, and sampled at T=0.8) and the trainer's teacher-forced ones, then the
same after one optimizer step, once new weights are pushed; and what the engine said when asked
for the new version before the push.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
import yaml

from megatron_rm.config import POLICY, ModelConfig, OptimizerConfig, ParallelConfig
from megatron_rm.convert.hf_config import hf_config
from megatron_rm.convert.weight_stream import hf_weights
from megatron_rm.core.optim import train_step
from megatron_rm.data import document_batch, load_tokenizer
from megatron_rm.generation.engine import StaleWeights
from megatron_rm.generation.engines import build_engine
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.loading.trainable import build_trainable
from megatron_rm.model.document_model import unwrap
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.vocab_parallel import token_logprobs
from megatron_rm.ppo.losses import PolicyLossSettings
from megatron_rm.ppo.objectives import ActorObjective, Rollouts
from megatron_rm.runtime import parallel

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["User: Name 3 fruits.\nAssistant:", "User: Give me a color.\nAssistant: 1.", "Hello", "a b c d e f g"]
GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=10, temperature=0.8)


def teacher_forced_gap(model, prompts, completions, vocab_size: int, temperature: float) -> float:
    """The largest |engine log-probability - the trainer's forward's| over every response token
    (collective over the model-parallel group)."""
    batch = document_batch([p + c.token_ids for p, c in zip(prompts, completions)], 0,
                           prompt_lengths=[len(p) for p in prompts])
    with torch.no_grad():
        logprobs = token_logprobs(forward_logits(model, batch), torch.roll(batch.input_ids, -1, 1), vocab_size,
                                  temperature)
    gap = 0.0
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        start = len(prompt) - 1  # right-padded: position t predicts token t + 1
        trainer = logprobs[row, start:start + len(completion.token_ids)]
        gap = max(gap, float((trainer - torch.tensor(completion.logprobs)).abs().max()))
    return gap


def transformers_greedy(state: dict, config: ModelConfig, vocab_size: int, prompts, eos: int) -> list[list[int]]:
    hf = hf_config(config, vocab_size=vocab_size, dtype=torch.float32, pad_token_id=None, bos_token_id=None,
                   eos_token_id=eos, reward_normalization=None, model_kind=POLICY)
    model = transformers.AutoModelForCausalLM.from_config(hf).eval()
    model.load_state_dict(state, strict=not config.tie_word_embeddings)
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=GREEDY.max_new_tokens,
                                 eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
            out.append(ids[:ids.index(eos) + 1] if eos in ids else ids)
    return out


def main() -> None:
    out = Path(sys.argv[1])
    fields = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())
    config = ModelConfig(**{**fields, "tokenizer": str(REPO / fields["tokenizer"]), "num_attention_heads": 2,
                            "num_query_groups": 2})  # head size 64 / 2 = 32
    tokenizer = load_tokenizer(config.tokenizer)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    layout_config = ParallelConfig(tp=int(os.environ["WORLD_SIZE"]))
    layout = parallel.initialize(layout_config, seed=5)
    actor = build_trainable(POLICY, config, layout_config, vocab, OptimizerConfig(lr=3e-2), 4, precision="fp32")
    model = unwrap(actor.ddp)
    model.eval()
    engines = {name: build_engine(name, [actor.ddp], layout, config, vocab_size=vocab, eos_token_ids=(eos,),
                                  dtype=torch.float32, cuda=False) for name in ("megatron", "vllm")}
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    seeds = [(3, row) for row in range(len(prompts))]
    result = {}

    def push(version: int) -> dict:
        streamed = {}

        def tee():
            for name, tensor in hf_weights([actor.ddp], layout, config, POLICY, vocab):
                streamed[name] = tensor
                yield name, tensor
        for engine in engines.values():
            engine.load_weights(tee(), version)  # the megatron engine reads the actor itself: never iterated
        return streamed

    def compare(version: int, streamed: dict) -> dict:
        greedy = {name: e.generate(prompts, GREEDY, seeds, version=version) for name, e in engines.items()}
        sampled = engines["vllm"].generate(prompts, SAMPLED, seeds, version=version)
        found = {name: [c.token_ids for c in completions] for name, completions in greedy.items()}
        found["finish"] = [c.finish_reason for c in greedy["vllm"]]
        found["greedy_gap"] = teacher_forced_gap(model, prompts, greedy["vllm"], vocab, 1.0)
        found["sampled_gap"] = teacher_forced_gap(model, prompts, sampled, vocab, SAMPLED.temperature)
        found["sampled_differ"] = len({tuple(c.token_ids) for c in sampled}) > 1
        # A stop token the first response meets at its third token: both engines end there, and keep it.
        stopping = SamplingParams(GREEDY.max_new_tokens, 0.0, stop_token_ids=(greedy["megatron"][0].token_ids[2],))
        stopped = {name: e.generate(prompts[:1], stopping, seeds[:1], version=version)[0]
                   for name, e in engines.items()}
        found["stopped"] = {name: [c.token_ids, c.finish_reason] for name, c in stopped.items()}
        if dist.get_rank() == 0:
            found["transformers"] = transformers_greedy(streamed, config, vocab, prompts, eos)
        return found

    result["before"] = compare(0, push(0))

    texts = ["User: Name 2 fruits.\nAssistant: 1. fig 2. lime", "User: Name 1 color.\nAssistant: 1. teal"]
    batch = document_batch([tokenizer(text)["input_ids"] for text in texts], tokenizer.pad_token_id or 0,
                           prompt_lengths=[4, 4])
    rollouts = Rollouts(batch, None, None, torch.ones(batch.input_ids.shape), None)  # REINFORCE, advantage 1
    objective = ActorObjective(vocab, 1.0, PolicyLossSettings(kind="reinforce"))
    model.train()
    stepped = train_step(actor.ddp, actor.optimizer, actor.scheduler, objective, [rollouts], 1.0, layout)
    model.eval()
    assert not stepped.skipped and stepped.grad_norm > 0
    try:
        engines["vllm"].generate(prompts, GREEDY, seeds, version=1)
        result["stale"] = None
    except StaleWeights as error:
        result["stale"] = str(error)
    result["after"] = compare(1, push(1))
    for engine in engines.values():
        engine.close()
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":
    main()
