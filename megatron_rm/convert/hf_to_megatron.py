"""Import a Hugging Face Llama / Mistral / Qwen2 folder as our checkpoint: a reward model
(the default: a sequence or token classifier's `score` head kept, or a new one for a causal LM)
or a policy (a causal LM, its `lm_head` or tied embedding as the output layer)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from megatron_rm.config import MODEL_KINDS, POLICY, REWARD, ModelConfig, padded_vocab_size
from megatron_rm.convert import megatron_io
from megatron_rm.convert.families import FAMILIES, HEAD_RULES, Shapes, to_megatron
from megatron_rm.convert.hf_config import (
    DTYPES,
    HF_HEADS,
    TOKEN_LABELS,
    classifier_head,
    config_num_labels,
    model_config,
    ties_embeddings,
)
from megatron_rm.convert.safetensors_io import SafetensorsFolder
from megatron_rm.data import load_tokenizer
from megatron_rm.data.ending import ending_with_eos
from megatron_rm.errors import CheckpointError

IGNORED = {REWARD: ("lm_head.weight",), POLICY: ()}
"""Source tensors deliberately left out of each kind: a reward model drops a causal LM's
vocabulary head. (A policy with tied embeddings also drops an `lm_head.weight` saved beside
them: transformers ties it to the embedding when it loads, so it is never used.)"""


@dataclass
class HFSource:
    """A Hugging Face folder read as our reward model or policy (`kind`): its config, tokenizer
    and, on demand, its tensors under our parameter names (whole, TP1/PP1)."""

    hf_dir: Path
    hf: dict
    """config.json."""
    model: ModelConfig
    tokenizer: PreTrainedTokenizerBase
    padded_vocab_size: int
    dtype: torch.dtype
    """The dtype the trunk is converted to; the reward head is fp32 either way."""
    has_score: bool
    """Whether the folder has a `score` head (else a new one is drawn)."""
    weights: SafetensorsFolder
    head_seed: int
    kind: str = REWARD
    """reward or policy: which head the tensors come with."""

    def rules(self):
        return FAMILIES[self.model.family].rules_for(self.model.num_layers, self.model.head_bias, self.kind,
                                                     self.model.tie_word_embeddings)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(parameter name, whole tensor) one at a time, so at most one converted tensor is held."""
        shapes = Shapes.of(self.model)
        generator = torch.Generator().manual_seed(self.head_seed)
        for rule in self.rules():
            stored = megatron_io.parameter_dtype(rule.megatron, self.dtype)
            if rule.megatron in HEAD_RULES and not self.has_score:
                yield rule.megatron, _new_head(rule.megatron, self.model, generator)
                continue
            parts = [self.weights.read(name).to(stored) for name in rule.hf]
            yield rule.megatron, to_megatron(rule.kind, parts, shapes, rows=self.padded_vocab_size)

    def reward_normalization(self) -> dict | None:
        """Reward mean/std saved with the model: ours (`reward_normalization`), or OpenRLHF's
        `mean`/`std` config keys (its reward trainer stores the eval set's statistics there).
        None for a policy, which has no rewards."""
        if self.kind != REWARD:
            return None
        if self.hf.get("reward_normalization"):
            return self.hf["reward_normalization"]
        if isinstance(self.hf.get("mean"), (int, float)) and isinstance(self.hf.get("std"), (int, float)):
            return {"mean": [float(self.hf["mean"])], "std": [float(self.hf["std"])]}
        return None


    def token_scores(self) -> dict | None:
        """How a token head was trained to be read (our export's `token_scores`: loss, aggregation,
        step separator), for scoring; None when the folder does not say."""
        return self.hf.get("token_scores") if self.kind == REWARD and self.model.head == "token" else None


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def open_hf(hf_dir: str | Path, *, kind: str = REWARD, num_labels: int | None = None, head: str | None = None,
            dtype: str | None = None, head_init_std: float | None = None, seed: int = 0,
            tokenizer_dir: str | Path | None = None) -> HFSource:
    """Read and check `hf_dir` (config, tokenizer, tensor names and dtypes) without converting a tensor.

    As a reward model (`kind="reward"`): a `*ForSequenceClassification` source keeps its
    `score` head (and `num_labels`) as a sequence head, a `*ForTokenClassification` source
    as a token head (2 or 3 classes); a `*ForCausalLM` source gets a new `head` (sequence,
    the default, or token) of `num_labels` outputs (default 1; 2 classes for a token head)
    drawn from N(0, head_init_std) with `seed`. As a policy
    (`kind="policy"`): a `*ForCausalLM` source, whose output layer is its `lm_head`, or its
    embedding when `tie_word_embeddings` is set; a reward model's folder is refused.
    `dtype` (fp32 or bf16) defaults to the source's.
    """
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
    hf_dir = Path(hf_dir)
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
    tied = False
    if kind == POLICY:
        tied = _policy_checks(hf_dir, hf, names, num_labels, head, head_init_std)
    else:
        head, num_labels = _reward_head(hf_dir, hf, weights if has_score else None, head, num_labels)
    family, model = model_config(hf, config_path, num_labels=num_labels or 1,
                                 head_bias=kind == REWARD and "score.bias" in names,
                                 head_init_std=head_init_std, head=head or "sequence", tie_word_embeddings=tied)
    if has_score and kind == REWARD:  # a Hugging Face reward model reads its own tokenization
        model = dataclasses.replace(model, append_eos=False, pad_token_id=hf.get("pad_token_id"))
    tokenizer_source = Path(tokenizer_dir) if tokenizer_dir else hf_dir
    try:
        tokenizer = load_tokenizer(str(tokenizer_source))
    except Exception as error:  # transformers raises OSError, ValueError, ... for a folder without one
        raise CheckpointError(f"{tokenizer_source}: no usable tokenizer ({error}); pass "
                              "--tokenizer-dir") from None
    if kind == REWARD and model.append_eos:  # a new head, trained here: read at the EOS
        tokenizer = ending_with_eos(tokenizer)
    if len(tokenizer) > model.vocab_size:
        raise CheckpointError(f"{config_path}: vocab_size={model.vocab_size} is smaller than the "
                              f"tokenizer's {len(tokenizer)} tokens ({tokenizer_source})")

    rules = family.rules_for(model.num_layers, model.head_bias, kind, tied)
    wanted = {name for rule in rules if has_score or rule.megatron not in HEAD_RULES for name in rule.hf}
    ignored = set(IGNORED[kind]) | ({"lm_head.weight"} if tied else set())
    missing, unknown = sorted(wanted - names), sorted(names - wanted - ignored)
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
    return HFSource(hf_dir, hf, model, tokenizer, padded_vocab_size(len(tokenizer), model), target,
                    has_score, weights, seed, kind)


def _reward_head(hf_dir: Path, hf: dict, weights: SafetensorsFolder | None, head: str | None,
                 num_labels: int | None) -> tuple[str, int | None]:
    """The head (sequence or token) and label count of a reward model from `hf_dir`: a classifier's
    own (`weights`: its tensors, None for a causal LM), or the `head` and `num_labels` asked for."""
    if head not in (None, *HF_HEADS):
        raise CheckpointError(f"--head {head}: expected one of {', '.join(HF_HEADS)}")
    if weights is None:
        head = head or "sequence"
        if head == "token" and num_labels not in (None, *TOKEN_LABELS):
            raise CheckpointError(f"--num-labels {num_labels}: a token head has 2 or 3 classes "
                                  "(negative, [neutral,] positive)")
        return head, num_labels or (2 if head == "token" else None)
    own = classifier_head(hf)
    if head is not None and head != own:
        raise CheckpointError(f"--head {head}: {hf_dir} is a {own} classifier (architectures="
                              f"{hf.get('architectures')}); leave --head out to keep its head")
    score_rows = weights.info("score.weight").shape[0]
    if num_labels is not None and num_labels != score_rows:
        raise CheckpointError(f"--num-labels {num_labels}: {hf_dir} has a score head of "
                              f"{score_rows} labels; leave --num-labels out to keep it")
    labels = config_num_labels(hf)
    if own == "token" and labels not in TOKEN_LABELS:
        raise CheckpointError(f"{hf_dir / 'config.json'}: num_labels={labels} (the length of id2label): a token "
                              "classifier converts with 2 or 3 classes (negative, [neutral,] positive)")
    if own == "token" and labels != score_rows:
        raise CheckpointError(f"{hf_dir}: score.weight has {score_rows} rows but config.json has num_labels={labels}")
    return own, score_rows


def _policy_checks(hf_dir: Path, hf: dict, names: set[str], num_labels: int | None, head: str | None,
                   head_init_std: float | None) -> bool:
    """Refuse what cannot be a policy; returns whether its output layer is the tied embedding."""
    if num_labels is not None or head is not None or head_init_std is not None:
        raise CheckpointError(f"{hf_dir}: --num-labels, --head and --head-init-std describe a reward head; "
                              "a policy keeps the model's vocabulary head")
    if "score.weight" in names:
        raise CheckpointError(f"{hf_dir}: holds a reward model (a `score` head, architectures="
                              f"{hf.get('architectures')}), not a causal LM; a policy needs a *ForCausalLM "
                              "folder (this one converts as a reward model: --model-kind reward)")
    tied = ties_embeddings(hf)
    if not tied and "lm_head.weight" not in names:
        raise CheckpointError(f"{hf_dir}: no lm_head.weight and tie_word_embeddings is false in "
                              "config.json: the folder has no output layer to import as a policy "
                              "(a trunk saved without its causal-LM head?)")
    return tied


def import_hf(hf_dir: str | Path, out_dir: str | Path, **options) -> Path:
    """Convert `hf_dir` into a checkpoint at `out_dir` (options: see `open_hf`); returns `out_dir`."""
    source = open_hf(hf_dir, **options)
    origin = {"hf_dir": str(source.hf_dir.resolve()), "architectures": source.hf.get("architectures"),
              "head": _head_origin(source)}
    token_scores = source.token_scores()
    megatron_io.save_converted(out_dir, dict(source.tensors()), source.model, source.padded_vocab_size, source.dtype,
                               source.kind, source.tokenizer, source.hf_dir / "config.json", source=origin,
                               reward_normalization=source.reward_normalization(),
                               **({"token_scores": token_scores} if token_scores else {}))
    return Path(out_dir)


def _head_origin(source: HFSource) -> str:
    """Where the checkpoint's head came from: score (kept), new (drawn), lm_head or tied_embedding."""
    if source.kind == POLICY:
        return "tied_embedding" if source.model.tie_word_embeddings else "lm_head"
    return "score" if source.has_score else "new"


def _new_head(name: str, model, generator: torch.Generator) -> torch.Tensor:
    if name.endswith(".bias"):
        return torch.zeros(model.num_labels, dtype=megatron_io.HEAD_DTYPE)
    weight = torch.empty(model.num_labels, model.hidden_size, dtype=megatron_io.HEAD_DTYPE)
    return weight.normal_(0.0, model.head_init_std, generator=generator)
