"""Score every row of a file with a reward model, keeping the rows' fields and order.

    python tools/score_rm.py --model runs/demo/checkpoints --input examples/demo/data/eval.jsonl \
        --output scored.jsonl
    torchrun --standalone --nproc-per-node 2 tools/score_rm.py --model ckpt/llama-rm --tp 2 \
        --input rows.parquet --output scored.parquet --on-invalid skip

Input: any format training reads (.jsonl, .json, .parquet, a saved dataset, a folder of
files), with rows `{prompt, response}`, `{messages}` or `{input_ids}` (-> `reward`),
`{prompt, chosen, rejected}` (-> `chosen_reward`, `rejected_reward`) or
`{prompt, responses}` (-> `rewards`, `best`); see megatron_rm/scoring/rows.py. Output:
JSON Lines or Parquet by its extension.

A token-head model (an outcome or process reward model) also scores stepwise rows
`{prompt, completions: [step, ...]}` and Math-Shepherd `{input}` (-> `reward`, `step_rewards`),
and best-of-N rows whose responses are lists of steps (-> `rewards`, `best`, `step_rewards`);
a text response is an outcome, its reward aggregated over its tokens. --aggregation and
--step-separator default to the checkpoint's; see megatron_rm/scoring/token/rows.py.

Rerunning with the same --output resumes after the rows already written. dp = world size /
(tp * pp); rank 0 reads and writes.
"""

import argparse
import sys

from megatron_rm.core.file_job import add_file_arguments, check_files, run_tool
from megatron_rm.scoring.arguments import add_model_arguments, add_token_arguments, scorer_from_arguments
from megatron_rm.scoring.batch_job import score_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_token_arguments(parser)
    add_file_arguments(parser, "scored", "the rows to score", "scored rows")
    args = parser.parse_args()
    def run():
        check_files(args.input, args.output)
        scorer = scorer_from_arguments(args)
        if scorer.token_head and scorer.model.layout.rank == 0:
            print(f"token head: {scorer.reading.describe()}", file=sys.stderr, flush=True)
        return score_file(scorer, args.input, args.output, on_invalid=args.on_invalid, chunk_rows=args.chunk_rows)

    summary = run_tool(run, args.output, "score")
    if summary is not None:
        print(summary.line())


if __name__ == "__main__":
    main()
