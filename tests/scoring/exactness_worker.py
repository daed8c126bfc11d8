"""Scores of one text set at several layouts, from a Hugging Face folder and from our checkpoint,
plus training's own evaluation of the same pairs.

    torchrun --standalone --nproc-per-node 2 tests/scoring/exactness_worker.py --hf HF --checkpoint CKPT \
        --pairs PAIRS.jsonl --out OUT --layout 2 1 --layout 1 2 --layout 1 1

Each --layout TP PP runs in turn in the same job (start-up dominates a job's time). Rank 0
writes OUT/tp<TP>pp<PP>.json: for each source, the rewards of every pair's chosen and
rejected text scored as one bucketed batch of mixed lengths under a small token budget,
packed, one text at a time, and through verl's `compute_reward`; eval_rm's report of the
pairs; and the chosen/rejected reward means of training's
evaluation (`train.max_steps=0`) from the checkpoint. With --token-hf (a token classifier) and
--token-rows, it also writes score_rm's output for those rows from that model, bucketed,
packed and one text at a time: OUT/token_tp<TP>pp<PP>_<batching>.jsonl.
"""

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist
from hydra import compose, initialize_config_dir
from megatron.core import parallel_state

from megatron_rm import cli
from megatron_rm.config import ParallelConfig
from megatron_rm.data import pad_id
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.batch_job import score_file
from megatron_rm.scoring.evaluation import evaluate_file
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from megatron_rm.scoring.verl import VerlRewardModel
from megatron_rm.training.loop import train
from tests.scoring.verl_batches import verl_batch


def pair_texts(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["prompt"], row[key]) for row in rows for key in ("chosen", "rejected")]


def scores(source: Path, tp: int, pp: int, texts, pairs: Path) -> dict:
    model = load_model(source, ParallelConfig(tp=tp, pp=pp))
    bucket = Scorer(model, ScoreSettings(max_tokens=96))
    sequences = [encoded.ids for encoded in bucket.encoder.texts(texts)]
    result = {
        "bucket": bucket.score(sequences).flatten().tolist(),
        "pack": Scorer(model, ScoreSettings(max_tokens=96, batching="pack")).score(sequences).flatten().tolist(),
        "alone": [bucket.score([ids]).item() for ids in sequences],
        "verl": verl_scores(bucket, sequences),
    }
    evaluated = evaluate_file(str(pairs), bucket)  # eval_rm's report (rank 0)
    if evaluated is not None:
        result["eval_rm"] = {name: evaluated[0].overall[name] for name in ("chosen_reward", "rejected_reward")}
    parallel_state.destroy_model_parallel()
    return result


def verl_scores(scorer: Scorer, sequences: list[list[int]]) -> list[float]:
    """verl's `rm_scores` for the same ids, split into a left-padded prompt and a right-padded response."""
    prompts = [ids[: len(ids) // 2] for ids in sequences]
    responses = [ids[len(ids) // 2:] for ids in sequences]
    batch = verl_batch(prompts, responses, pad_id(scorer.model.tokenizer), prompt_width=max(map(len, prompts)),
                       response_width=max(map(len, responses)) + 3)
    rm_scores = VerlRewardModel(scorer).compute_reward(batch)["rm_scores"]
    last = batch["attention_mask"][:, -rm_scores.shape[1]:].sum(-1) - 1
    return rm_scores[range(len(sequences)), last].tolist()


def token_scores(source: Path, tp: int, pp: int, rows: Path, out: Path) -> None:
    """A token-head model's scored rows under three batchings (one text at a time: a budget of
    one token puts every text in a micro-batch of its own)."""
    model = load_model(source, ParallelConfig(tp=tp, pp=pp))
    for name, settings in (("bucket", ScoreSettings(max_tokens=96)), ("pack", ScoreSettings(max_tokens=96,
                           batching="pack")), ("alone", ScoreSettings(max_tokens=1))):
        score_file(Scorer(model, settings), rows, out / f"token_tp{tp}pp{pp}_{name}.jsonl", progress=False)
    parallel_state.destroy_model_parallel()


def training_evaluation(checkpoint: Path, pairs: Path, tp: int, pp: int, run_dir: Path) -> dict:
    overrides = [f"checkpoint.load={checkpoint}", f"parallel.tp={tp}", f"parallel.pp={pp}",
                 "train.max_steps=0", f"data.train_path={pairs}", f"data.eval_path={pairs}",
                 f"run.dir={run_dir}", "train.global_batch_size=4", "train.micro_batch_size=2",
                 "logging.tensorboard=false", "data.max_length=256"]
    cli.register_schema()
    with initialize_config_dir(config_dir=cli.CONF_DIR, version_base="1.3"):
        summary = train(cli.to_config(compose("train_rm", overrides=overrides), overrides))
    parallel_state.destroy_model_parallel()
    return {"chosen_reward": summary["chosen_reward"], "rejected_reward": summary["rejected_reward"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layout", nargs=2, type=int, action="append", metavar=("TP", "PP"), required=True)
    parser.add_argument("--token-hf", type=Path, help="a *ForTokenClassification folder")
    parser.add_argument("--token-rows", type=Path, help="rows for it to score")
    args = parser.parse_args()
    texts = pair_texts(args.pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    for tp, pp in args.layout:
        result = {source: scores(path, tp, pp, texts, args.pairs) for source, path in
                  (("hf", args.hf), ("checkpoint", args.checkpoint))}
        if args.token_hf:
            token_scores(args.token_hf, tp, pp, args.token_rows, args.out)
        result["training"] = training_evaluation(args.checkpoint, args.pairs, tp, pp,
                                                 args.out / f"run_tp{tp}pp{pp}")
        if int(os.environ["RANK"]) == 0:
            (args.out / f"tp{tp}pp{pp}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
