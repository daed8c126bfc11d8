"""HF <-> Megatron conversion of a ~1B-parameter Llama-shape reward model in bf16: time and peak memory.

    .venv/bin/python bench/convert.py                                   # Llama 3.2 1B shape, ~2.5 GB
    .venv/bin/python bench/convert.py --layers 2 --hidden 256 --ffn 512 --vocab 32000   # a quick check

Builds a randomly initialised `LlamaForSequenceClassification` in bf16 with
`transformers` (once; reused from `--workdir`), then runs
tools/convert_hf_to_megatron.py and tools/convert_megatron_to_hf.py as separate
processes, sampling the resident memory (RSS) of each process tree every 0.2 s,
and checks that every tensor came back bit-identical. Prints a markdown table;
nothing is asserted. Targets on 2 cores: each direction under 2 minutes, peak
RSS under 1.5x the checkpoint's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
import transformers
from watch import REPO, run_watched

sys.path.insert(0, str(REPO))
from megatron_rm.convert.safetensors_io import SafetensorsFolder  # noqa: E402

PYTHON = sys.executable
GB = 2**30


def build(folder: Path, args) -> None:
    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True, num_labels=1,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(REPO / "examples" / "demo" / "tokenizer").save_pretrained(folder)


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def identical(a: Path, b: Path) -> bool:
    """Every tensor equal, read one at a time."""
    first, second = SafetensorsFolder(a), SafetensorsFolder(b)
    if set(first.names()) != set(second.names()):
        return False
    return all(torch.equal(first.read(n), second.read(n)) for n in first.names())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megatron_rm_bench_convert"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    args = parser.parse_args()
    shape = f"{args.layers}x{args.hidden}_ffn{args.ffn}_v{args.vocab}"
    hf, megatron, back = (args.workdir / f"{shape}_{name}" for name in ("hf", "megatron", "back"))
    if not (hf / "config.json").is_file():
        shutil.rmtree(hf, ignore_errors=True)
        build(hf, args)
    for folder in (megatron, back):
        shutil.rmtree(folder, ignore_errors=True)
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    checkpoint = size(hf)
    parameters = sum(SafetensorsFolder(hf).info(n).nbytes for n in SafetensorsFolder(hf).names()) // 2
    runs = {
        "HF -> Megatron": run_watched("import", [PYTHON, "tools/convert_hf_to_megatron.py", "--hf-dir", str(hf),
                                                 "--out-dir", str(megatron)], logs),
        "Megatron -> HF": run_watched("export", [PYTHON, "tools/convert_megatron_to_hf.py", "--megatron-dir",
                                                 str(megatron), "--out-dir", str(back)], logs),
    }
    same = identical(hf, back)
    print(f"\n{parameters / 1e9:.2f}B parameters ({shape}), bf16 checkpoint {checkpoint / GB:.2f} GiB; "
          f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[1]:.1f}); "
          f"round trip bit-identical: {same}\n")
    print("| direction | wall s | CPU s | peak RSS, converter | x checkpoint | peak RSS, all processes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, run in runs.items():
        main_peak = run["by_label"]["main"]
        print(f"| {name} | {run['seconds']:.1f} | {run['cpu_seconds']:.1f} | {main_peak / GB:.2f} GiB "
              f"| {main_peak / checkpoint:.2f} | {run['peak_total'] / GB:.2f} GiB |")


if __name__ == "__main__":
    main()
