"""Convert a NeMo-Aligner `.nemo` reward model, critic or SFT policy into a megatron-rm checkpoint, without NeMo.

    python tools/convert_nemo_to_megatron.py --nemo rm.nemo --out-dir ckpt/rm --tokenizer llama-3-8b
    python tools/convert_nemo_to_megatron.py --nemo sft.nemo --out-dir ckpt/policy --model-kind policy
    python tools/convert_megatron_to_hf.py --megatron-dir ckpt/rm --out-dir hf/rm    # on to Hugging Face

--nemo is a `.nemo` tar, a gzipped tar, or the folder one extracts to, with a megatron-core
distributed checkpoint (torch_dist) in `model_weights/`, saved at any TP/PP. A reward model keeps
NeMo-Aligner's head (`rm_head`, its attributes as labels, or folded into one reward when its config
merges them: --keep-attributes keeps them) and its reward_standardization as the stored reward
statistics; a critic (`output_sequence`) becomes a one-value head that PPO reads at every token
(critic.init). A policy (--model-kind policy) keeps its output layer. A Hugging Face tokenizer
folder the file carries is carried over; --tokenizer (the Hugging Face tokenizer of the model's
vocabulary) is needed when it names a hub id or carries SentencePiece or GPT-2 files, which no
Hugging Face tokenizer rebuilds to NeMo's ids in every case (docs/conversion.md). The checkpoint
trains, scores, serves and exports to Hugging Face like any other.
"""

import argparse
import time

from megatron_rm.convert import import_nemo
from megatron_rm.errors import exit_on_usage_error
from megatron_rm.runtime import parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nemo", required=True, help=".nemo file (tar or tar.gz) or its extracted folder")
    parser.add_argument("--out-dir", required=True, help="checkpoint folder to create (must not exist)")
    parser.add_argument("--tokenizer", help="the Hugging Face tokenizer folder of the model's vocabulary (needed "
                                            "unless the file carries one)")
    parser.add_argument("--model-kind", choices=["reward", "policy"], default="reward",
                        help="reward: a reward model or critic (rm_head); policy: an SFT model (its output layer)")
    parser.add_argument("--keep-attributes", action="store_true",
                        help="keep the attributes a reward model's config merges as separate labels")
    parser.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                        help="a model_config.yaml key this importer does not know that changes nothing the model "
                             "computes (repeatable)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="stored dtype (default: the weights')")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        notes = exit_on_usage_error(lambda: import_nemo(
            args.nemo, args.out_dir, kind=args.model_kind, tokenizer_dir=args.tokenizer,
            keep_attributes=args.keep_attributes, ignored_keys=tuple(args.ignore_key), dtype=args.dtype), rank=0)
    finally:
        parallel.shutdown()
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s")


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
