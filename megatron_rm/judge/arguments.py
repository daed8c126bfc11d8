"""The judge's command-line options, shared by `tools/judge.py` and `tools/eval_rm.py --judge`,
beside the model and layout options every scoring tool takes (`scoring.arguments`)."""

from __future__ import annotations

import argparse

from megatron_rm.config import POLICY, ParallelConfig
from megatron_rm.errors import UsageError
from megatron_rm.judge.judge import Judge
from megatron_rm.judge.prompt import DEFAULT_LABELS, DEFAULT_TEMPLATE, JudgePrompt, parse_labels, read_template
from megatron_rm.loading.models import find, load_policy


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("judge")
    group.add_argument("--template", default=None,
                       help="a text file holding the judging prompt: {question}, {answer_a} and {answer_b}, and "
                            "optionally {label_a} and {label_b} (default: docs/judge.md's)")
    group.add_argument("--labels", default=None,
                       help="the two answer labels, each one token of the model's tokenizer (default A,B)")


def judge_from_arguments(args: argparse.Namespace) -> Judge:
    """The judge of `--model` (a policy checkpoint or a *ForCausalLM folder) with the template and
    labels asked for; both are checked against the tokenizer before the (slow) model load."""
    if args.length_policy != "error":
        raise UsageError(f"--length-policy {args.length_policy}: a judge does not cut its prompts (the question "
                         "and both answers are the verdict's evidence); over-long rows are refused")
    template = read_template(args.template) if args.template else DEFAULT_TEMPLATE
    labels = parse_labels(args.labels) if args.labels else DEFAULT_LABELS
    JudgePrompt(find(args.model, POLICY, model_name=args.model_name).tokenizer, template, labels)
    policy = load_policy(args.model, ParallelConfig(tp=args.tp, pp=args.pp), precision=args.precision,
                         model_name=args.model_name)
    return Judge(policy, template=template, labels=labels, max_tokens=args.max_tokens, batching=args.batching,
                 max_length=args.max_length)
