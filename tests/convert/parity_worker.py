"""Score converted checkpoints at every layout on one 4-rank job.

    torchrun --standalone --nproc-per-node 4 tests/convert/parity_worker.py --checkpoints DIR --batches FILE --out DIR

For each layout (TP1, TP2, PP2, TP2xPP2; the rest of the 4 ranks is data
parallel) and each checkpoint folder under --checkpoints, the model is built
from the checkpoint's own config, loaded (resharded by megatron), and run on the
batches in --batches. The last rank writes out/<layout>.pt, per checkpoint:

- a reward model: the rewards and the final-norm hidden state at each row's last
  token (the reward head's input), and for a classifier the rewards again, converted in memory
  from the Hugging Face folder it was imported from;
- a token-head reward model: its class logits at every position, loaded from the
  checkpoint and, converted in memory, from the Hugging Face folder it was imported from;
- a policy: its logits over the real vocabulary (TP shards gathered, padding
  columns cut), loaded by `load_policy` from the checkpoint and, converted in
  memory, from the Hugging Face folder it was imported from.
"""

import argparse
from functools import partial
from pathlib import Path

import torch
from megatron.core import parallel_state, tensor_parallel

from megatron_rm.config import ParallelConfig, padded_vocab_size
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import model_config, model_entry, read_metadata
from megatron_rm.core.schedule import collect
from megatron_rm.data import Batch, load_tokenizer
from megatron_rm.loading.models import build_and_load, find, load_policy
from megatron_rm.model import build_reward_model
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.runtime import parallel
from megatron_rm.scoring.rewards import document_rewards

LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2))


def score_checkpoint(directory: Path, layout: ParallelConfig, batches: list[Batch], grid) -> dict:
    cfg = model_config(directory, read_metadata(directory))
    vocab = len(load_tokenizer(cfg.tokenizer))
    model = build_reward_model(cfg, layout, vocab).eval()
    checkpoint.load(directory, {"model": checkpoint.ModelState(model, cfg, padded_vocab_size(vocab, cfg))})
    hidden = []
    if parallel_state.is_pipeline_last_stage():
        model.reward_head.register_forward_hook(
            lambda module, args, output: hidden.append(args[0][args[2], args[1]].detach().clone()))
    rewards = [document_rewards([model], [batch], grid) for batch in batches]
    return {"rewards": rewards, "hidden": hidden}


def folder_rewards(path: Path, layout: ParallelConfig, batches: list[Batch], grid) -> list[torch.Tensor]:
    """The rewards of each batch from the reward model at `path`, on every rank."""
    model, _ = build_and_load(find(path, "reward"), layout, "fp32", seed=0)
    return [document_rewards([model], [batch], grid) for batch in batches]


def policy_logits(path: Path, layout: ParallelConfig, batches: list[Batch], grid) -> list[torch.Tensor]:
    """(rows, seq, vocab) logits of each batch from the policy at `path`, on every rank."""
    policy = load_policy(path, layout)
    shard = padded_vocab_size(len(policy.tokenizer), policy.config) // layout.tp
    logits = collect(policy.chunks, batches, forward_logits, grid,
                     shape=lambda batch: (*batch.input_ids.shape, shard), dtype=torch.float32)
    return [tensor_parallel.gather_from_tensor_model_parallel_region(x)[..., :policy.vocab_size] for x in logits]


def token_logits(path: Path, layout: ParallelConfig, batches: list[Batch], grid) -> list[torch.Tensor]:
    """(rows, seq, classes) logits of each batch from the token-head reward model at `path`, on every rank."""
    found = find(path, "reward")
    model, _ = build_and_load(found, layout, "fp32", seed=0)
    return collect([model], batches, partial(forward_documents, token_values=True), grid,
                   shape=lambda batch: (*batch.input_ids.shape, found.config.num_labels), dtype=torch.float32)


def run_checkpoint(directory: Path, layout: ParallelConfig, batches: list[Batch], grid) -> dict:
    metadata = read_metadata(directory)
    entry = model_entry(directory, metadata)
    folder = Path(metadata["source"]["hf_dir"])
    if entry.kind == "policy":
        per_token = policy_logits
    elif entry.config.head == "token":
        per_token = token_logits
    else:
        results = score_checkpoint(directory, layout, batches, grid)
        if metadata["source"]["head"] == "score":  # a classifier: its head is in the folder too
            results["rewards_from_hf"] = folder_rewards(folder, layout, batches, grid)
        return results
    return {"logits": per_token(directory, layout, batches, grid),
            "logits_from_hf": per_token(folder, layout, batches, grid)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--batches", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    batches = [Batch(ids, mask, torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0))
               for ids, mask in torch.load(args.batches)]
    for tp, pp in LAYOUTS:
        layout = ParallelConfig(tp=tp, pp=pp)
        grid = parallel.initialize(layout, seed=0)
        results = {d.name: run_checkpoint(d, layout, batches, grid)
                   for d in sorted(args.checkpoints.iterdir())}
        if torch.distributed.get_rank() == torch.distributed.get_world_size() - 1:
            torch.save(results, args.out / f"tp{tp}_pp{pp}.pt")
        parallel_state.destroy_model_parallel()
    parallel.shutdown()


if __name__ == "__main__":
    main()
