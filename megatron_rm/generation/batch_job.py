"""Generating responses for a whole file of prompts on a TP/PP/DP job (`tools/generate.py`),
through the file-job frame (`core.file_job`: chunks, resume, invalid rows, progress).

Each valid row is one prompt and `num_samples` responses. A response's random draws depend
on the run's seed and its number (row number in the input x num_samples + sample) only
(`sampling.row_generator`), so a file gives the same responses at any layout, in any
chunking, and after a resume. The chunk's prompts are dealt to the data-parallel replicas
(longest first, to the replica with the fewest prompt tokens: `core.micro_batches.deal`), each replica generates its
share `batch_size` responses at a time, grouped by length, and the completions come back to
rank 0 with one gather over the data-parallel group.
"""

from __future__ import annotations

from pathlib import Path

from megatron_rm import runtime
from megatron_rm.config import POLICY
from megatron_rm.convert.weight_stream import hf_weights
from megatron_rm.core.file_job import RowTask, Summary, run_file
from megatron_rm.core.micro_batches import deal
from megatron_rm.data.sources import RawRow
from megatron_rm.generation.engine import generate_batched
from megatron_rm.generation.engines import build_engine
from megatron_rm.generation.generator import Completion, response_text
from megatron_rm.generation.prompts import PROMPT_POLICIES, PromptRow, end_token_ids, prompt_rows
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.loading.models import LoadedPolicy
from megatron_rm.runtime.parallel import gather_to_first


class GenerateTask(RowTask):
    verb = "generated for"

    def __init__(self, policy: LoadedPolicy, params: SamplingParams, *, num_samples: int = 1, seed: int = 0,
                 batch_size: int = 16, prompt_policy: str = "error", engine: str = "megatron"):
        problems = params.problems()
        if num_samples < 1:
            problems.append(f"num_samples={num_samples} must be >= 1")
        if batch_size < 1:
            problems.append(f"batch_size={batch_size} must be >= 1")
        if prompt_policy not in PROMPT_POLICIES:
            problems.append(f"prompt policy {prompt_policy!r} must be one of {', '.join(PROMPT_POLICIES)}")
        room = policy.config.max_sequence_length - params.max_new_tokens
        if room < 1:
            problems.append(f"max_new_tokens={params.max_new_tokens} leaves no room for a prompt under the "
                            f"model's max_sequence_length={policy.config.max_sequence_length}")
        if problems:
            raise ValueError("; ".join(problems))
        self.policy, self.params, self.num_samples, self.seed = policy, params, num_samples, seed
        self.batch_size, self.prompt_policy, self.room = batch_size, prompt_policy, room
        self.engine = build_engine(engine, policy.chunks, policy.layout, policy.config, vocab_size=policy.vocab_size,
                                   eos_token_ids=end_token_ids(policy.tokenizer, policy.name),
                                   dtype=next(policy.chunks[0].parameters()).dtype, cuda=runtime.cuda_available())
        self.engine.load_weights(hf_weights(policy.chunks, policy.layout, policy.config, POLICY, policy.vocab_size),
                                 version=0)
        self.truncated = 0
        """Prompts cut under prompt_policy truncate_prompt (counted on rank 0)."""
        self.new_tokens = 0
        """Tokens generated, stop tokens included (counted on rank 0)."""

    def prepare(self, raws: list[RawRow]) -> list[PromptRow]:
        rows = prompt_rows(raws, self.policy.tokenizer, self.room, self.prompt_policy,
                           self.params.max_new_tokens, self.policy.config.max_sequence_length)
        self.truncated += sum(row.truncated for row in rows)
        return rows

    def run(self, sequences: list[list[int]], rows: list[int]) -> list[list[Completion]] | None:
        """Every prompt's num_samples completions on rank 0 (None elsewhere)."""
        layout = self.policy.layout
        items = [(prompt, row * self.num_samples + sample, index)
                 for index, (prompt, row) in enumerate(zip(sequences, rows)) for sample in range(self.num_samples)]
        lengths = [len(prompt) for prompt, _, _ in items]
        mine = [items[i] for (i,) in deal([[i] for i in range(len(items))], lengths, layout.dp)[layout.dp_rank]]
        numbers = [number for _, number, _ in mine]
        completions = generate_batched(self.engine, [prompt for prompt, _, _ in mine], numbers, self.params,
                                       self.seed, self.batch_size)
        gathered = gather_to_first(list(zip(numbers, completions)), layout)
        if gathered is None:
            return None
        by_number = dict(item for share in gathered for item in share)
        return [[by_number[row * self.num_samples + sample] for sample in range(self.num_samples)]
                for row in rows]

    def fields(self, row: PromptRow, results: list[list[Completion]]) -> dict:
        (completions,) = results
        self.new_tokens += sum(len(c.token_ids) for c in completions)
        texts = [response_text(self.policy.tokenizer, c) for c in completions]
        return {"responses": texts, "response_ids": [c.token_ids for c in completions],
                "logprobs": [c.logprobs for c in completions],
                "finish_reasons": [c.finish_reason for c in completions], "prompt_truncated": row.truncated}

def generate_file(task: GenerateTask, input_path: str | Path, output_path: str | Path, *, on_invalid: str = "error",
                  chunk_rows: int = 256, progress: bool = True) -> Summary | None:
    """Generate for every row of `input_path` into `output_path` (collective); the summary on rank 0."""
    return run_file(task, input_path, output_path, on_invalid=on_invalid, chunk_rows=chunk_rows, progress=progress)
