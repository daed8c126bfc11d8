"""The reference side of bench/train_throughput.py: the same model shape, micro-batches and steps,
trained with Hugging Face tools instead of megatron-core. Run by that benchmark, not by hand:

    .venv/bin/python bench/reward_reference.py SPEC.json RESULT.json

SPEC.json (written by train_throughput.py) holds the model shape, the threads, the optimizer
settings and every step's pairs as token ids, in our run's order. Uses TRL's `RewardTrainer`
(`pip install trl==1.16.0`) when it imports, else a plain transformers + torch loop with the
same loss; `"reference": "trl"` or `"plain"` in the spec forces one. Either way the model is a
`LlamaForSequenceClassification` built from a `LlamaConfig` of the spec's shape, fp32, and the
optimizer `torch.optim.AdamW` as on our side. Each micro-batch is all chosen rows then all
rejected rows, right-padded to the micro-batch's longest rounded up to `pad_to_multiple_of`:
TRL's `DataCollatorForPreference`, and the same width our bucket batching gives.

Writes RESULT.json: which reference ran, the parameter count, the wall clock at the end of
every optimizer step and the (rows, width) of every micro-batch collated.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers


def build_model(shape: dict) -> transformers.LlamaForSequenceClassification:
    config = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        intermediate_size=shape["ffn_hidden_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_query_groups"],
        head_dim=shape["head_dim"], max_position_embeddings=shape["max_sequence_length"],
        rms_norm_eps=shape["norm_epsilon"], rope_theta=shape["rotary_base"], hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, num_labels=1,
        pad_token_id=shape["pad_id"], eos_token_id=shape["eos_id"], bos_token_id=None,
        initializer_range=0.02, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return transformers.LlamaForSequenceClassification(config).float()


def pad_pairs(pairs: list, pad_id: int, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows, then rejected rows, right-padded to the longest rounded up to `multiple`."""
    rows = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def plain_loop(spec: dict, model, step_ends: list, shapes: list) -> None:
    """RewardTrainer's loss and step without the Trainer: AdamW, grad-norm clip, accumulation."""
    o, mbs = spec["optimizer"], spec["micro_batch_size"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                                  eps=o["eps"], weight_decay=0.0)
    model.train()
    for pairs in spec["steps"]:
        micro_batches = [pairs[i: i + mbs] for i in range(0, len(pairs), mbs)]
        for micro in micro_batches:
            input_ids, attention_mask = pad_pairs(micro, spec["model"]["pad_id"], spec["pad_to_multiple_of"])
            shapes.append(list(input_ids.shape))
            rewards = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.squeeze(-1)
            chosen, rejected = rewards.chunk(2)
            loss = -F.logsigmoid(chosen - rejected).mean() / len(micro_batches)
            loss.backward()
        if o["clip_grad"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_grad"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(time.perf_counter())


def trl_loop(spec: dict, model, step_ends: list, shapes: list) -> None:
    import datasets
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class InOrder(RewardTrainer):
        """Micro-batches in the dataset's order: the spec already lists our run's batches."""

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    class StepClock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    collator = DataCollatorForPreference(pad_token_id=spec["model"]["pad_id"],
                                         pad_to_multiple_of=spec["pad_to_multiple_of"])

    def recording_collator(examples):
        batch = collator(examples)
        shapes.append(list(batch["input_ids"].shape))
        return batch

    pairs = [pair for step in spec["steps"] for pair in step]
    dataset = datasets.Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    o, mbs = spec["optimizer"], spec["micro_batch_size"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"]["tokenizer"])
    with tempfile.TemporaryDirectory() as output_dir:
        args = RewardConfig(
            output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
            per_device_train_batch_size=mbs, gradient_accumulation_steps=spec["global_batch_size"] // mbs,
            max_steps=len(spec["steps"]), learning_rate=o["lr"], lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, adam_beta1=o["beta1"], adam_beta2=o["beta2"], adam_epsilon=o["eps"],
            max_grad_norm=o["clip_grad"] if o["clip_grad"] > 0 else None,
            # The same torch.optim.AdamW (for-loop on CPU) as megatron-core's CPU fallback;
            # TRL's own default here would be adamw_torch_fused.
            optim="adamw_torch",
            max_length=None, pad_to_multiple_of=spec["pad_to_multiple_of"], dataloader_num_workers=0,
            report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
            seed=0,
        )
        trainer = InOrder(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=recording_collator, callbacks=[StepClock()])
        trainer.train()


def main() -> None:
    spec_path, result_path = sys.argv[1:3]
    with open(spec_path) as file:
        spec = json.load(file)
    torch.set_num_threads(spec["threads"])
    try:
        import trl
    except ImportError:
        trl = None
    choice = spec.get("reference", "auto")
    if choice == "auto":
        choice = "plain" if trl is None else "trl"
    if choice == "trl":
        if trl is None:
            sys.exit("reference 'trl' asked for, but trl does not import: pip install trl==1.16.0")
        name = f"TRL {trl.__version__} RewardTrainer"
    else:
        name = "plain transformers + torch loop (RewardTrainer's loss)"
    name += f" (transformers {transformers.__version__}, torch {torch.__version__})"
    model = build_model(spec["model"])
    step_ends, shapes = [], []
    (trl_loop if choice == "trl" else plain_loop)(spec, model, step_ends, shapes)
    result = {"reference": name, "parameters": sum(p.numel() for p in model.parameters()),
              "threads": torch.get_num_threads(), "step_ends": step_ends, "shapes": shapes}
    with open(result_path, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main()
