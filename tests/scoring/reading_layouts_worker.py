"""Score texts, conversations and token ids with Hugging Face reward models at TP2 and PP2.

    torchrun --standalone --nproc-per-node 2 tests/scoring/reading_layouts_worker.py --models DIR --out DIR

For each layout and each model under --models (Hugging Face folders and their converted
checkpoints), rank 0 writes out/<layout>.pt: per model, the rewards of `TEXTS` (whole strings),
`CONVERSATIONS` (through the chat template) and the tokenizer's ids of `TEXTS`.
"""

import argparse
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_rm.config import ParallelConfig
from megatron_rm.loading.reward import load_model
from megatron_rm.runtime import parallel
from megatron_rm.scoring.scorer import Scorer
from tests.scoring.test_reading_rule import CONVERSATIONS, TEXTS

LAYOUTS = ((2, 1), (1, 2))


def rewards(scorer: Scorer, encoded) -> torch.Tensor:
    return scorer.score([one.ids for one in encoded])[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for tp, pp in LAYOUTS:
        results = {}
        for path in sorted(args.models.iterdir()):
            scorer = Scorer(load_model(path, ParallelConfig(tp=tp, pp=pp)))
            encoder = scorer.encoder
            results[path.name] = {
                "texts": rewards(scorer, encoder.whole_texts(TEXTS)),
                "conversations": rewards(scorer, encoder.messages([tuple(c) for c in CONVERSATIONS])),
                "ids": rewards(scorer, encoder.token_ids(scorer.model.tokenizer(TEXTS)["input_ids"]))}
        if torch.distributed.get_rank() == 0:
            torch.save(results, args.out / f"tp{tp}_pp{pp}.pt")
        parallel_state.destroy_model_parallel()
    parallel.shutdown()


if __name__ == "__main__":
    main()
