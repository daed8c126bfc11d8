"""Judge every pair of a file with a causal LM (LLM-as-a-judge), keeping the rows' fields and order.

    python tools/judge.py --model ckpt/policy --input pairs.jsonl --output judged.jsonl
    torchrun --nproc-per-node 8 tools/judge.py --model hf/Qwen2-7B-Instruct --tp 2 --pp 2 \\
        --input pairs.parquet --output judged.parquet --template my_template.txt --labels 1,2

--model: a policy checkpoint or a Hugging Face `*ForCausalLM` folder (converted in memory).
Rows are `{prompt, chosen, rejected}` or `{prompt, response_a, response_b}` (the prompt a
string or chat messages, the answers strings). A template shows the question and both answers,
labelled A and B, and asks which is better (rendered by the tokenizer's chat template when it
has one); the verdict is the next-token probability of label A against label B, read in both
orders and averaged. Each row gains `preference` (the probability that chosen / response_a is
better), `preference_as_a` and `preference_as_b` (that probability with it shown as A, and as B)
and `label_mass` (how much probability the two labels hold at all). docs/judge.md has the
details. Rerunning with the same --output resumes; dp = world / (tp * pp).
"""

import argparse
import os

from megatron_rm.core.file_job import add_file_arguments, check_files, run_tool
from megatron_rm.judge.arguments import add_judge_arguments, judge_from_arguments
from megatron_rm.judge.batch_job import judge_file
from megatron_rm.scoring.arguments import add_model_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_judge_arguments(parser)
    add_file_arguments(parser, "judged", "the pairs to judge", "judged rows")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))

    def run():
        check_files(args.input, args.output)
        judge = judge_from_arguments(args)
        if rank == 0:
            written = ", ".join(f"{label!r} as token {token} ({text!r})" for label, token, text in
                                zip(judge.prompt.labels, judge.prompt.label_ids, judge.prompt.written))
            print(f"labels: {written}; {'chat template' if judge.prompt.chat else 'plain text'}", flush=True)
        return judge_file(judge, args.input, args.output, on_invalid=args.on_invalid, chunk_rows=args.chunk_rows)

    summary = run_tool(run, args.output, "judge")
    if summary is not None:
        print(summary.line())


if __name__ == "__main__":
    main()
