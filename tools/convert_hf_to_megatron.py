"""Convert a Hugging Face Llama / Mistral / Qwen2 model into a megatron-rm checkpoint (reward model or policy).

    python tools/convert_hf_to_megatron.py --hf-dir llama-3.1-8b --out-dir ckpt/llama-rm --dtype bf16
    torchrun --nproc-per-node 8 tools/train_rm.py checkpoint.load=ckpt/llama-rm parallel.tp=4 parallel.pp=2
    python tools/convert_hf_to_megatron.py --model-kind policy --hf-dir llama-3.1-8b-instruct --out-dir ckpt/policy

As a reward model (the default), `*ForSequenceClassification` and `*ForTokenClassification` sources keep
their `score` head (a sequence or a token head) and `*ForCausalLM` sources get a new reward head: one
reward per document, or with `--head token` class logits at every token (an outcome or process reward
model; `--num-labels` 2, the default, or 3). As a policy (`--model-kind policy`), a
`*ForCausalLM` source keeps its `lm_head` (or its tied embedding) as the output layer. The
checkpoint loads at any TP/PP and carries its model config, its kind and its tokenizer.
"""

import argparse
import time

from megatron_rm.convert import import_hf
from megatron_rm.errors import exit_on_usage_error
from megatron_rm.runtime import parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", required=True, help="folder with config.json, safetensors and tokenizer")
    parser.add_argument("--out-dir", required=True, help="checkpoint folder to create (must not exist)")
    parser.add_argument("--model-kind", choices=["reward", "policy"], default="reward",
                        help="reward: a reward head (score, or a new one); policy: the causal LM's lm_head")
    parser.add_argument("--num-labels", type=int,
                        help="reward outputs of a new head (default 1), or its classes with --head token (2 or 3, "
                             "default 2)")
    parser.add_argument("--head", choices=["sequence", "token"],
                        help="a new head's kind: sequence (one reward per document at its last token, the "
                             "default) or token (class logits at every token, exported as *ForTokenClassification); "
                             "a classifier source keeps its own")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="stored dtype (default: the source's)")
    parser.add_argument("--head-init-std", type=float, help="std of a new head (default: initializer_range)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a new head")
    parser.add_argument("--tokenizer-dir", help="tokenizer folder, when --hf-dir has none")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        exit_on_usage_error(lambda: import_hf(
            args.hf_dir, args.out_dir, kind=args.model_kind, num_labels=args.num_labels, head=args.head,
            dtype=args.dtype, head_init_std=args.head_init_std, seed=args.seed, tokenizer_dir=args.tokenizer_dir),
            rank=0)
    finally:
        parallel.shutdown()
    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s")


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
