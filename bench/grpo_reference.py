"""The reference side of bench/grpo_step.py: TRL's `GRPOTrainer` on the same policy (our random
actor exported to Hugging Face), prompts, group size, response length and reward function. Run
by that benchmark, not by hand:

    PYTHONPATH=TRL_DIR .venv/bin/python bench/grpo_reference.py SPEC.json RESULT.json

SPEC.json (written by grpo_step.py): the exported policy's folder, the prompts, prompts per step,
samples per prompt, max_new_tokens, steps, the learning rate and the threads. TRL runs as ours
does: fp32 on the CPU, one optimizer step per generation batch (`per_device_train_batch_size` =
`generation_batch_size` = prompts x samples, one gradient accumulation step, one iteration), no
reference model (`beta=0`, ours `kl.placement=none`), the token-mean loss (`loss_type="dapo"`,
ours `ppo.loss_agg=token_mean`), temperature 1, transformers' `generate` (no vLLM).

Writes RESULT.json: per optimizer step, its wall clock and the seconds in generation
(`GRPOTrainer._generate`) and in generation plus scoring (`_generate_and_score_completions`:
rewards, advantages), with the prompt and completion tokens it generated.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "grpo"))
from rewards import right_count  # noqa: E402  (the demo task's rule, the reward on both sides)


class StepClock(TrainerCallback):
    def __init__(self):
        self.steps: list[dict] = []
        self.began = 0.0
        self.phases = {"generation_s": 0.0, "generate_and_score_s": 0.0, "prompt_tokens": 0, "completion_tokens": 0}

    def on_step_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()
        self.phases = dict.fromkeys(self.phases, 0)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append({"step_s": time.perf_counter() - self.began, **self.phases})


def timed(clock: StepClock, key: str, fn, count_tokens: bool = False):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        out = fn(*args, **kwargs)
        clock.phases[key] += time.perf_counter() - began
        if count_tokens:  # _generate's (prompt_ids, completion_ids, ...)
            clock.phases["prompt_tokens"] += sum(len(ids) for ids in out[0])
            clock.phases["completion_tokens"] += sum(len(ids) for ids in out[1])
        return out
    return wrapper


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    responses = spec["prompts_per_step"] * spec["samples_per_prompt"]
    steps = spec["warmup"] + spec["steps"]
    prompts = (spec["prompts"] * (steps * spec["prompts_per_step"] // len(spec["prompts"]) + 1))
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=responses, gradient_accumulation_steps=1,
                          num_generations=spec["samples_per_prompt"], max_completion_length=spec["max_new_tokens"],
                          num_iterations=1, beta=0.0, loss_type="dapo", temperature=1.0, top_p=1.0,
                          learning_rate=spec["lr"], max_steps=steps, logging_steps=1, report_to=[],
                          save_strategy="no", use_cpu=True, bf16=False, seed=1234, dataloader_num_workers=0,
                          shuffle_dataset=False)
        trainer = GRPOTrainer(model=model, reward_funcs=[right_count], args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer._generate = timed(clock, "generation_s", trainer._generate, count_tokens=True)
        trainer._generate_and_score_completions = timed(clock, "generate_and_score_s",
                                                        trainer._generate_and_score_completions)
        trainer.train()
    parameters = sum(p.numel() for p in model.parameters())
    Path(sys.argv[2]).write_text(json.dumps({"parameters": parameters, "steps": clock.steps}))


if __name__ == "__main__":
    main()
