"""Export one of our checkpoints (any TP/PP) as a Hugging Face folder: a reward model as
`*ForSequenceClassification` (`model.head=sequence`) or `*ForTokenClassification`
(`model.head=token`), a policy as `*ForCausalLM`."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_rm.config import POLICY
from megatron_rm.convert import megatron_io
from megatron_rm.convert.families import FAMILIES, Shapes, to_hf
from megatron_rm.convert.hf_config import DTYPES, hf_config, save_config
from megatron_rm.convert.safetensors_io import write_sharded
from megatron_rm.core.checkpoint_files import atomic_folder, model_entry, read_metadata, require_kind, resolve
from megatron_rm.data import load_tokenizer, save_tokenizer
from megatron_rm.data.tokenize import reward_tokenizer
from megatron_rm.errors import CheckpointError

PAD_TOKEN = "<|pad|>"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


def export_hf(megatron_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None,
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, model_name: str | None = None,
              kind: str | None = None) -> Path:
    """Write `out_dir` for `AutoModelForSequenceClassification.from_pretrained` (a reward model
    with a sequence head), `AutoModelForTokenClassification` (a token head) or
    `AutoModelForCausalLM` (a policy); returns it.

    `megatron_dir` is a converted checkpoint, a training checkpoint, or a run's
    `checkpoints/` folder (its newest complete one). `dtype` (fp32 or bf16)
    defaults to the checkpoint's stored dtype. `model_name` names one model of a checkpoint that
    holds several (default: its only model). `kind` (reward or policy), when given, is the kind
    of model expected: a checkpoint of the other kind is refused.
    """
    directory = resolve(megatron_dir)
    metadata = read_metadata(directory)
    entry = model_entry(directory, metadata, model_name)
    if kind is not None:
        require_kind(directory, entry, kind, model_name)
    policy = entry.kind == POLICY
    model = entry.config
    token_head = not policy and model.head == "token"
    stored = getattr(torch, entry.dtype)
    target = DTYPES[dtype] if dtype else stored
    tokenizer = load_tokenizer(model.tokenizer) if policy else reward_tokenizer(model)
    vocab_size = model.vocab_size or len(tokenizer)
    # Only a sequence classifier reads its output where the pad token says (the last token before
    # it); a causal LM's or a token classifier's logits do not depend on it: the tokenizer's stays.
    # A Hugging Face model's own pad token stays what it was.
    if policy or token_head:
        pad_token_id = tokenizer.pad_token_id
    else:
        pad_token_id = _reward_pad_token(tokenizer) if model.append_eos else model.pad_token_id
    if pad_token_id is not None and pad_token_id >= vocab_size:  # the new pad token needs an embedding row
        vocab_size = pad_token_id + 1
    config = hf_config(model, vocab_size=vocab_size, dtype=target, pad_token_id=pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       reward_normalization=metadata.get("reward_normalization"), model_kind=entry.kind,
                       token_scores=metadata.get("token_scores"))
    padded = entry.padded_vocab_size
    if vocab_size > padded:
        raise CheckpointError(f"{directory}: {vocab_size} tokens need embedding rows beyond the "
                              f"checkpoint's {padded}")
    try:
        parameters = megatron_io.load(directory, model, padded, stored, entry.prefix, entry.kind)
    except Exception as error:  # megatron raises many kinds; say which checkpoint failed
        raise CheckpointError(f"{directory}: could not load: {error}") from error
    # transformers' token classifier always has a `score` bias: a head without one has a zero bias.
    zero_bias = token_head and not model.head_bias
    if zero_bias:
        parameters["reward_head.bias"] = torch.zeros(model.num_labels, dtype=megatron_io.HEAD_DTYPE)

    shapes = Shapes.of(model)
    hf_tensors = {}
    # A tied policy has no output layer of its own: its HF config says so, and transformers
    # ties `lm_head` to the embedding on loading.
    rules = FAMILIES[model.family].rules_for(model.num_layers, model.head_bias or zero_bias, entry.kind,
                                             policy and model.tie_word_embeddings)
    for rule in rules:
        # Embedding and output layer are cut to the real vocabulary: padding rows never leave.
        parts = to_hf(rule.kind, parameters.pop(rule.megatron), shapes, rows=vocab_size)
        hf_tensors.update(zip(rule.hf, parts))
    plan = [(name, target, tuple(tensor.shape)) for name, tensor in hf_tensors.items()]

    def make(name: str) -> torch.Tensor:
        return hf_tensors.pop(name).to(target)  # popped: each tensor is freed once written

    with atomic_folder(out_dir) as staging:
        write_sharded(staging, plan, make, max_shard_bytes)
        save_config(config, model, staging)
        save_tokenizer(tokenizer, staging)
    return Path(out_dir)


def _reward_pad_token(tokenizer) -> int:
    """A pad id distinct from EOS, adding one to `tokenizer` if needed.

    transformers reads a sequence-classification reward at the last token that is
    not `pad_token_id`. Our documents end in EOS and the reward is read there, so a
    pad id equal to EOS (or none at all) would make transformers score the token
    before it, silently.
    """
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        print(f"note: the tokenizer's pad token was {'EOS' if tokenizer.eos_token_id is not None else 'unset'};"
              f" added {PAD_TOKEN} (id {tokenizer.pad_token_id}) so that transformers reads rewards at EOS")
    return tokenizer.pad_token_id
