"""Import a Hugging Face Llama / Mistral / Qwen2 folder as our reward-model checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from megatron_rm.config import padded_vocab_size
from megatron_rm.convert import megatron_io
from megatron_rm.convert.families import HEAD_RULES, Shapes, to_megatron
from megatron_rm.convert.hf_config import DTYPES, TORCH_DTYPE_NAMES, model_config
from megatron_rm.convert.safetensors_io import SafetensorsFolder
from megatron_rm.core.checkpoint_files import DEFAULT_MODEL, TOKENIZER_DIR, ModelEntry, atomic_folder, write_metadata
from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError

IGNORED = ("lm_head.weight",)
"""Source tensors deliberately left out: a causal LM's vocabulary head."""


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, num_labels: int | None = None,
              dtype: str | None = None, head_init_std: float | None = None, seed: int = 0,
              tokenizer_dir: str | Path | None = None) -> Path:
    """Convert `hf_dir` into a checkpoint at `out_dir`; returns `out_dir`.

    A `*ForSequenceClassification` source keeps its `score` head (and `num_labels`);
    a `*ForCausalLM` source gets a new head of `num_labels` outputs (default 1) drawn
    from N(0, head_init_std) with `seed`. `dtype` (fp32 or bf16) defaults to the
    source's; the reward head is stored in fp32 either way.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (not a Hugging Face model folder)")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: not valid JSON: {error}") from None
    weights = SafetensorsFolder(hf_dir)
    names = set(weights.names())
    has_score = "score.weight" in names
    if has_score:
        score_rows = weights.info("score.weight").shape[0]
        if num_labels is not None and num_labels != score_rows:
            raise CheckpointError(f"--num-labels {num_labels}: {hf_dir} has a score head of "
                                  f"{score_rows} labels; leave --num-labels out to keep it")
        num_labels = score_rows
    family, model = model_config(hf, config_path, num_labels=num_labels or 1,
                                 head_bias="score.bias" in names, head_init_std=head_init_std)
    tokenizer_source = Path(tokenizer_dir) if tokenizer_dir else hf_dir
    try:
        tokenizer = load_tokenizer(str(tokenizer_source))
    except Exception as error:  # transformers raises OSError, ValueError, ... for a folder without one
        raise CheckpointError(f"{tokenizer_source}: no usable tokenizer ({error}); pass "
                              "--tokenizer-dir") from None
    if len(tokenizer) > model.vocab_size:
        raise CheckpointError(f"{config_path}: vocab_size={model.vocab_size} is smaller than the "
                              f"tokenizer's {len(tokenizer)} tokens ({tokenizer_source})")

    rules = family.rules_for(model.num_layers, model.head_bias)
    wanted = {name for rule in rules if has_score or rule.megatron not in HEAD_RULES for name in rule.hf}
    missing, unknown = sorted(wanted - names), sorted(names - wanted - set(IGNORED))
    if missing or unknown:
        raise CheckpointError(f"{hf_dir}: tensors do not match a {family.architecture} model with this "
                              f"config.json: missing {missing[:8]}, unexpected {unknown[:8]}")
    for name in sorted(wanted):
        if not weights.info(name).dtype.is_floating_point:
            raise CheckpointError(f"{weights.files[name].path}: tensor {name} is {weights.info(name).dtype}, "
                                  "not floating point (quantized weights cannot be converted)")
    source_dtype = weights.info("model.embed_tokens.weight").dtype
    target = DTYPES[dtype] if dtype else source_dtype
    if target not in (torch.float32, torch.bfloat16):
        raise CheckpointError(f"{hf_dir}: weights are {source_dtype}; pass --dtype fp32 or --dtype bf16")
    padded = padded_vocab_size(len(tokenizer), model)
    shapes = Shapes.of(model)

    tensors = {}
    generator = torch.Generator().manual_seed(seed)
    for rule in rules:
        stored = megatron_io.parameter_dtype(rule.megatron, target)
        if rule.megatron in HEAD_RULES and not has_score:
            tensors[rule.megatron] = _new_head(rule.megatron, model, generator)
            continue
        parts = [weights.read(name).to(stored) for name in rule.hf]
        tensors[rule.megatron] = to_megatron(rule.kind, parts, shapes, rows=padded)

    with atomic_folder(out_dir) as staging:
        megatron_io.save(tensors, staging, model, padded, target)
        del tensors
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        source = {"hf_dir": str(hf_dir.resolve()), "architectures": hf.get("architectures"),
                  "head": "score" if has_score else "new"}
        entry = ModelEntry(model, padded, TORCH_DTYPE_NAMES[target], prefix=f"{DEFAULT_MODEL}.")
        write_metadata(staging, step=0, models={DEFAULT_MODEL: entry}, source=source,
                       reward_normalization=hf.get("reward_normalization"))
        (staging / "model.yaml").write_text(
            f"# Derived from {config_path}; tokenizer is relative to this folder.\n"
            + yaml.safe_dump(asdict(model), sort_keys=False))
    return out_dir


def _new_head(name: str, model, generator: torch.Generator) -> torch.Tensor:
    if name.endswith(".bias"):
        return torch.zeros(model.num_labels, dtype=megatron_io.HEAD_DTYPE)
    weight = torch.empty(model.num_labels, model.hidden_size, dtype=megatron_io.HEAD_DTYPE)
    return weight.normal_(0.0, model.head_init_std, generator=generator)
