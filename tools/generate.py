"""Sample responses from a policy for every prompt of a file, keeping the rows' fields and order.

    python tools/generate.py --model ckpt/policy --input prompts.jsonl --output samples.jsonl \\
        --num-samples 4 --max-new-tokens 128 --temperature 0.8 --top-p 0.95 --seed 1
    torchrun --nproc-per-node 8 tools/generate.py --model hf/Qwen2-0.5B-Instruct --tp 2 --pp 2 \\
        --input prompts.parquet --output samples.parquet --num-samples 8

--model: a policy checkpoint (converted with `--model-kind policy`, or saved by SFT) or a
Hugging Face `*ForCausalLM` folder, converted in memory. Rows hold `prompt` (a string, or a
list of messages) or `messages` (a conversation to answer), rendered as training renders
prompts (the chat template with its generation prompt). Each row gains `responses` (K
texts, the stop token left out), `response_ids` (K token lists, ending in the stop token
when the response stopped), `logprobs` (the sampled tokens' log-probabilities at the
sampling temperature, over the whole vocabulary), `finish_reasons` (`eos` or `length`) and
`prompt_truncated`. A response ends at EOS, at the end tokens a Hugging Face folder's
generation_config.json names, or at --stop-token-ids. `--temperature 0` is greedy. The same
--seed gives the same responses at any layout and after a resume (rerun with the same
--output). dp = world / (tp * pp).
"""

import argparse

from megatron_rm import runtime
from megatron_rm.config import POLICY, ParallelConfig
from megatron_rm.core.file_job import add_file_arguments, check_files, run_tool
from megatron_rm.errors import UsageError
from megatron_rm.generation.batch_job import GenerateTask, generate_file
from megatron_rm.generation.engine import ENGINES
from megatron_rm.generation.engines import engine_problems
from megatron_rm.generation.prompts import PROMPT_POLICIES
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.loading.models import PRECISIONS, find, load_policy


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a policy checkpoint or a Hugging Face *ForCausalLM folder")
    parser.add_argument("--model-name", default=None, help="the model to load from a checkpoint of several")
    add_file_arguments(parser, "generated", "the prompts", "rows with responses", chunk_rows=256)
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: no limit")
    parser.add_argument("--stop-token-ids", type=int, nargs="*", default=[],
                        help="tokens that end a response besides the tokenizer's EOS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (dp = world / (tp * pp))")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16 needs a GPU")
    parser.add_argument("--batch-size", type=int, default=16, help="responses generated together per replica")
    parser.add_argument("--engine", choices=ENGINES, default="megatron",
                        help="what samples: megatron's KV cache on the loaded shards, or vLLM (one per replica)")
    parser.add_argument("--prompt-policy", choices=PROMPT_POLICIES, default="error",
                        help="a prompt with no room for --max-new-tokens: refuse the row, or cut its oldest tokens")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, stop_token_ids=tuple(args.stop_token_ids))

    def run():
        problems = params.problems()
        if args.engine != "megatron":  # before any process group starts
            found = find(args.model, POLICY, model_name=args.model_name)
            problems += engine_problems(args.engine, found.config, params, cuda=runtime.cuda_available(),
                                        key="--engine")
        if problems:
            raise UsageError("; ".join(problems))
        check_files(args.input, args.output)
        policy = load_policy(args.model, ParallelConfig(tp=args.tp, pp=args.pp), precision=args.precision,
                             model_name=args.model_name, seed=args.seed)
        try:
            task = GenerateTask(policy, params, num_samples=args.num_samples, seed=args.seed,
                                batch_size=args.batch_size, prompt_policy=args.prompt_policy, engine=args.engine)
        except ValueError as error:
            raise UsageError(str(error)) from None
        try:
            return generate_file(task, args.input, args.output, on_invalid=args.on_invalid,
                                 chunk_rows=args.chunk_rows), task
        finally:
            task.engine.close()

    result = run_tool(run, args.output, "generate")
    if result is None:
        return
    summary, task = result
    generated = f"; {task.new_tokens} new tokens, {task.new_tokens / max(summary.seconds, 1e-9):.0f}/s"
    cut = f"; {task.truncated} prompt(s) cut to fit" if task.truncated else ""
    print(summary.line() + generated + cut)


if __name__ == "__main__":
    main()
