"""Tokenize preference data once into a token store that training memory-maps.

    python tools/preprocess_data.py --input data/train.jsonl --output data/train_store --workers 2 \
        data.max_length=1024 data.truncation=truncate_prompt

Trailing `key=value` overrides are the training config's (conf/train_rm.yaml):
model.tokenizer, data.max_length, data.truncation, data.on_invalid and the field
names (data.prompt_key, ...); loss.type decides the rows' shape (loss.type=orm: outcome
rows, loss.type=prm: stepwise rows, placed by data.step_separator, loss.num_classes and
loss.neutral). Train with `data.train_path=<output>` and the same settings; training
refuses a store made with another tokenizer or other settings.
"""

import argparse
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from megatron_rm.cli import CONF_DIR, register_schema, to_config
from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.errors import UsageError
from megatron_rm.objectives import OBJECTIVES
from megatron_rm.training.data_setup import labelling_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="data files or folders, read in this order")
    parser.add_argument("--output", type=Path, required=True, help="the token store folder to write")
    parser.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("overrides", nargs="*", help="training config overrides, key=value")
    args = parser.parse_args()
    try:
        if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
            raise UsageError(f"{args.output} exists and is not empty; pass --overwrite to replace it")
        register_schema()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = to_config(compose(config_name="train_rm", overrides=args.overrides), args.overrides)
        start = time.perf_counter()
        objective = OBJECTIVES.get(cfg.loss.type, OBJECTIVES["bradley_terry"])
        settings = Settings.from_config(cfg.data, cfg.model.tokenizer, objective.grouping, labelling_for(cfg))
        meta = build_store(args.input, args.output, settings, workers=args.workers)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    seconds = time.perf_counter() - start
    print(f"{args.output}: {meta['rows']} rows, invalid {meta['invalid'] or 0}, dropped {meta['dropped'] or 0}; "
          f"{meta['groups']} groups, {meta['documents']} documents, {meta['tokens']} tokens "
          f"in {seconds:.1f} s ({meta['tokens'] / seconds:,.0f} tokens/s, {args.workers} workers)")


# Where worker processes are spawned (no fork), they re-import this file.
if __name__ == "__main__":
    main()
