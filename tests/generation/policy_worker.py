"""A policy from a Hugging Face folder at several layouts in one torchrun job: log-probabilities
and entropies of the vocabulary-parallel logits against a float64 full-softmax reference (with
their gradients), and seeded generation of a prompt file.

    torchrun --standalone --nproc-per-node 4 tests/generation/policy_worker.py --hf HF \\
        --prompts PROMPTS.jsonl --out OUT --layout 2 1 --layout 1 2 --layout 2 2

Each --layout TP PP runs in turn (dp = world / (tp * pp)). Rank 0 writes OUT/tp<TP>pp<PP>.json
(the largest differences from the reference, at pp=1) and OUT/tp<TP>pp<PP>.jsonl (generate's
output rows).
"""

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_rm.config import ParallelConfig
from megatron_rm.data import document_batch
from megatron_rm.generation.batch_job import GenerateTask, generate_file
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.loading.models import load_policy
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.vocab_parallel import token_entropy, token_logprobs

TEMPERATURE = 0.7
SAMPLING = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9)


def logprob_differences(policy) -> dict:
    """Max |ours - float64 reference| of log-probabilities, entropies and their gradients."""
    model = policy.chunks[0]
    batch = document_batch([[5, 9, 17, 33, 2, 8, 120], [40, 3, 3, 61]], 0)
    targets = torch.roll(batch.input_ids, -1, 1)
    logits = forward_logits(model, batch).detach().requires_grad_()
    (token_logprobs(logits, targets, policy.vocab_size, TEMPERATURE).sum()
     + 0.5 * token_entropy(logits, policy.vocab_size, TEMPERATURE).sum()).backward()
    ours_logprobs = token_logprobs(logits, targets, policy.vocab_size, TEMPERATURE).detach()
    ours_entropy = token_entropy(logits, policy.vocab_size, TEMPERATURE).detach()

    group = parallel_state.get_tensor_model_parallel_group()
    shards = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shards, logits.detach(), group=group)
    whole = torch.cat(shards, -1).double().requires_grad_()
    scaled = whole[..., :policy.vocab_size] / TEMPERATURE
    logprobs = scaled.log_softmax(-1)
    reference_logprobs = logprobs.gather(-1, targets[..., None])[..., 0]
    reference_entropy = -(logprobs.exp() * logprobs).sum(-1)
    (reference_logprobs.sum() + 0.5 * reference_entropy.sum()).backward()
    width = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * width
    reference_grad = whole.grad[..., start:start + width]
    return {"logprobs": (ours_logprobs.double() - reference_logprobs).abs().max().item(),
            "entropy": (ours_entropy.double() - reference_entropy).abs().max().item(),
            "grad": (logits.grad.double() - reference_grad).abs().max().item(),
            "padding_grad": logits.grad[..., max(policy.vocab_size - start, 0):].abs().max().item()
            if start + width > policy.vocab_size else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layout", type=int, nargs=2, action="append", required=True)
    args = parser.parse_args()
    for tp, pp in args.layout:
        policy = load_policy(args.hf, ParallelConfig(tp=tp, pp=pp))
        name = f"tp{tp}pp{pp}"
        if pp == 1:
            differences = logprob_differences(policy)
            if dist.get_rank() == 0:
                (args.out / f"{name}.json").write_text(json.dumps(differences))
        task = GenerateTask(policy, SAMPLING, num_samples=2, seed=3, batch_size=3)
        generate_file(task, args.prompts, args.out / f"{name}.jsonl", chunk_rows=4, progress=False)
        parallel_state.destroy_model_parallel()


if __name__ == "__main__":
    main()
