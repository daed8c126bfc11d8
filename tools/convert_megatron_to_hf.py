"""Export a megatron-rm checkpoint (any TP/PP) as a Hugging Face *For{Sequence,Token}Classification or *ForCausalLM.

    python tools/convert_megatron_to_hf.py --megatron-dir runs/demo/checkpoints --out-dir hf/demo-rm

`--megatron-dir` is a converted checkpoint, one `step_<N>` folder, or a run's `checkpoints/`
folder (its newest complete checkpoint). A reward model's output loads with
`AutoModelForSequenceClassification.from_pretrained` and reads rewards at the last real token, or,
for a token head (`model.head=token`), with `AutoModelForTokenClassification.from_pretrained` and gives
class logits at every token; a policy's with `AutoModelForCausalLM.from_pretrained`.
"""

import argparse
import time

from megatron_rm.convert import export_hf
from megatron_rm.errors import exit_on_usage_error
from megatron_rm.runtime import parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-dir", required=True, help="checkpoint folder or a run's checkpoints/")
    parser.add_argument("--out-dir", required=True, help="Hugging Face folder to create (must not exist)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="saved dtype (default: the checkpoint's)")
    parser.add_argument("--max-shard-size-gb", type=float, default=5.0, help="safetensors shard limit")
    parser.add_argument("--model", help="which model of a checkpoint holding several (default: its only one)")
    parser.add_argument("--model-kind", choices=["reward", "policy"],
                        help="the kind of model expected; a checkpoint of the other kind is refused "
                             "(default: export whichever the checkpoint holds)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        exit_on_usage_error(lambda: export_hf(
            args.megatron_dir, args.out_dir, dtype=args.dtype,
            max_shard_bytes=int(args.max_shard_size_gb * 2**30), model_name=args.model,
            kind=args.model_kind), rank=0)
    finally:
        parallel.shutdown()
    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s")


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
