"""The command-line options every scoring tool shares (score_rm, eval_rm, serve_rm): which
model, at which layout, batched how, and what to do with over-long inputs; and how a token
head's rewards are read (score_rm, serve_rm)."""

from __future__ import annotations

import argparse

from megatron_rm.config import ParallelConfig
from megatron_rm.core.micro_batches import BATCHINGS
from megatron_rm.loading.reward import PRECISIONS, load_model
from megatron_rm.objectives.step_rewards import AGGREGATIONS
from megatron_rm.scoring.inputs import LENGTH_POLICIES
from megatron_rm.scoring.scorer import DEFAULT_MAX_TOKENS, Scorer, ScoreSettings


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and layout")
    group.add_argument("--model", required=True,
                       help="a Hugging Face folder, one of our checkpoints, or a run's checkpoints/ folder")
    group.add_argument("--model-name", default=None, help="the model to load from a checkpoint of several")
    group.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    group.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (dp = world / (tp * pp))")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16 needs a GPU")
    group.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                       help="token slots per micro-batch, padding included")
    group.add_argument("--batching", choices=BATCHINGS, default="bucket",
                       help="bucket: rows of similar length; pack: documents back to back in one row")
    group.add_argument("--max-length", type=int, default=None,
                       help="longest input in tokens (default: the model's max_sequence_length)")
    group.add_argument("--length-policy", choices=LENGTH_POLICIES, default="error",
                       help="over-long inputs: refuse them, or cut the prompt's oldest tokens")


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("token-head models (outcome and process reward models)")
    group.add_argument("--aggregation", choices=AGGREGATIONS, default=None,
                       help="how step (or outcome token) probabilities make a response's reward (default: the "
                            "checkpoint's for the rows it was trained on; else product over steps, mean over an "
                            "outcome's tokens)")
    group.add_argument("--step-separator", default=None,
                       help="the text written after each step, taken literally (in bash: $'\\n\\n'); default: the "
                            "checkpoint's data.step_separator, else a newline")


def scorer_from_arguments(args: argparse.Namespace) -> Scorer:
    model = load_model(args.model, ParallelConfig(tp=args.tp, pp=args.pp), precision=args.precision,
                       model_name=args.model_name)
    return Scorer(model, ScoreSettings(max_tokens=args.max_tokens, batching=args.batching,
                                       max_length=args.max_length, length_policy=args.length_policy,
                                       aggregation=getattr(args, "aggregation", None),
                                       step_separator=getattr(args, "step_separator", None)))
