"""Import a NeMo-Aligner `.nemo` reward model, critic or SFT policy as our checkpoint, without NeMo.

A `.nemo` is a tar (gzipped by older NeMo), or the folder it extracts to, holding:
- `model_config.yaml`, the model's NeMo config (`nemo_config` reads it);
- `model_weights/`, a megatron-core `dist_checkpointing` checkpoint (`metadata.json` names its
  backend: torch_dist is read, zarr refused). Its keys are `model.` and megatron-core's GPTModel
  names, which are our checkpoints' keys too (both are megatron-core's GPTModel, and our local
  layers save their norms under TransformerEngine's names), with layers stacked on a leading
  axis. Only NeMo-Aligner's head differs: `model.rm_head.*` (a RowParallelLinear, split along the
  hidden dimension as ours is), ours `model.reward_head.*`. A reward model also saves the LM head
  its GPTRewardModel builds and never uses, `model.output_layer.weight`, left out here, as are
  the `_extra_state` objects (TransformerEngine's, NeMo-Aligner's head's, present or not);
- the tokenizer's files, stored as `<hash>_<name>` and named `nemo:<hash>_<name>` in the config:
  a Hugging Face tokenizer folder is carried over; for a hub id, a SentencePiece model or GPT-2
  vocabulary files the Hugging Face tokenizer of the same vocabulary is asked for (`_tokenizer`
  says why). NeMo tokenizes a text with `text_to_ids`, which adds no special tokens, so the imported
  tokenizer adds none (a Llama tokenizer's automatic BOS is turned off); a reward model trained
  with `data.append_eod` reads at an EOS appended to every text, as ours do (`append_eos`), else
  at the text's last token.

The layout follows NeMo's `nemo/core/connectors/save_restore_connector.py` (the tar) and
NeMo-Aligner's `nemo_aligner/models/nlp/gpt/gpt_reward_model.py` (the head) and
`megatron_gpt_reward_model.py` (its settings). The weights load through megatron-core's own
resharding, so a model saved at any TP/PP reads the same. The embedding (and a policy's
output layer) has as many rows as NeMo padded the vocabulary to (`make_vocab_size_divisible_by`
times its tensor-parallel size); the rows past the tokenizer are padding, so they are cut, and
zero rows added up to our padded size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from megatron.core import dist_checkpointing
from transformers import PreTrainedTokenizerBase

from megatron_rm.config import MODEL_KINDS, REWARD, ModelConfig, padded_vocab_size
from megatron_rm.convert import megatron_io
from megatron_rm.convert.families import OUTPUT_LAYER, zero_padded
from megatron_rm.convert.hf_config import DTYPES
from megatron_rm.convert.nemo_config import RewardSettings, read_config
from megatron_rm.data import load_tokenizer
from megatron_rm.data.ending import ending_with_eos, without_special_tokens
from megatron_rm.errors import CheckpointError

CONFIG = "model_config.yaml"
WEIGHTS = "model_weights"
PREFIX = "model."
EMBEDDING_KEY = PREFIX + megatron_io.EMBEDDING
HEAD_NAMES = {"reward_head.": "rm_head."}
"""Our parameter prefix -> NeMo-Aligner's, for the keys that differ."""


@contextlib.contextmanager
def unpacked(path: str | Path):
    """The folder of the `.nemo` at `path`: the folder itself, or a tar (plain or gzipped)
    extracted into a temporary folder that is removed afterwards."""
    path = Path(path)
    if path.is_dir():
        yield _root(path, path)
        return
    if not path.is_file():
        raise CheckpointError(f"{path}: no such .nemo file or folder")
    try:
        archive = tarfile.open(path, "r:*")
    except tarfile.TarError as error:
        raise CheckpointError(f"{path}: not a .nemo file (a tar, possibly gzipped): {error}") from None
    with archive, tempfile.TemporaryDirectory(prefix="nemo-") as folder:
        archive.extractall(folder, filter="data")
        yield _root(Path(folder), path)


def _root(folder: Path, path: Path) -> Path:
    """The folder holding model_config.yaml: `folder`, or its one subfolder (a tar of a folder)."""
    if (folder / CONFIG).is_file():
        return folder
    inner = [child for child in folder.iterdir() if child.is_dir()]
    if len(inner) == 1 and (inner[0] / CONFIG).is_file():
        return inner[0]
    raise CheckpointError(f"{path}: no {CONFIG} in it (not a .nemo model)")


@dataclass
class NemoSource:
    """A `.nemo` read as our reward model or policy (`kind`)."""

    root: Path
    label: str
    """The path the user gave, for messages."""
    model: ModelConfig
    settings: RewardSettings
    tokenizer: PreTrainedTokenizerBase
    rows: int
    """The embedding rows NeMo saved (its padded vocabulary)."""
    dtype: torch.dtype
    kind: str
    keep_attributes: bool
    notes: list[str]
    """What the import changed or left out, for the user."""

    @property
    def padded_vocab_size(self) -> int:
        return padded_vocab_size(len(self.tokenizer), self.model)

    @property
    def saved_model(self) -> ModelConfig:
        """The model as NeMo saved it: every attribute of the head, the embedding's own rows."""
        return dataclasses.replace(self.model, num_labels=self.settings.num_attributes, make_vocab_size_divisible_by=1)

    @property
    def folds(self) -> bool:
        """Whether the head's attributes are folded into one reward (a merging model, unless
        `keep_attributes`; a critic always)."""
        return self.settings.merge and not self.keep_attributes

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter of our model, whole, under our names."""
        whole = megatron_io.load(self.root / WEIGHTS, self.saved_model, self.rows, self.dtype, PREFIX, self.kind,
                                 keys=_nemo_key)
        for name in (megatron_io.EMBEDDING, OUTPUT_LAYER):
            if name in whole:
                # The tokenizer's rows: NeMo's padding rows are whatever training left there, ours zeros.
                whole[name] = zero_padded(whole[name][:len(self.tokenizer)], self.padded_vocab_size)
        if self.folds:
            weights = torch.tensor(self.settings.weights, dtype=torch.float64)
            for name in ("reward_head.weight", "reward_head.bias"):
                whole[name] = (weights @ whole[name].double().reshape(len(weights), -1)).reshape(
                    1, *whole[name].shape[1:]).to(whole[name].dtype)
        return whole

    def reward_normalization(self) -> dict | None:
        """NeMo-Aligner's reward_standardization as our stored statistics (per label)."""
        stats = self.settings.standardization
        if self.kind != REWARD or stats is None or (self.settings.merge and not self.folds):
            return None  # a merging model's kept attributes: its statistics were the merged reward's
        labels = self.model.num_labels
        return {"mean": [stats[0]] * labels, "std": [stats[1]] * labels}


def _nemo_key(key: str) -> str:
    """NeMo-Aligner's checkpoint key for one of ours."""
    for ours, theirs in HEAD_NAMES.items():
        key = key.replace(PREFIX + ours, PREFIX + theirs)
    return key


def open_nemo(root: Path, label: str, *, kind: str = REWARD, tokenizer_dir: str | Path | None = None,
              keep_attributes: bool = False, ignored_keys: tuple[str, ...] = (),
              dtype: str | None = None) -> NemoSource:
    """Read and check the extracted `.nemo` at `root` (`label`: what the user named) without
    loading a tensor. `kind`: reward (a reward model or critic) or policy (an SFT model);
    `tokenizer_dir`: a Hugging Face tokenizer folder (see `_tokenizer`);
    `keep_attributes`: keep the attributes a merging reward model combines as labels;
    `ignored_keys`: config keys the user vouches change nothing; `dtype` (fp32 or bf16)
    defaults to the weights'."""
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
    config_path = root / CONFIG
    try:
        cfg = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise CheckpointError(f"{label}: {CONFIG} is not valid YAML: {error}") from None
    _check_weights(root, label)
    model, settings = read_config(cfg, Path(label) / CONFIG, kind=kind, ignored_keys=ignored_keys)
    notes = []
    if keep_attributes and settings.merge:
        if settings.critic:
            raise CheckpointError(f"{label}: --keep-attributes: a critic (output_sequence) always combines its "
                                  "attributes into one value")
        model = dataclasses.replace(model, num_labels=settings.num_attributes)
        if settings.standardization:
            notes.append("reward_standardization applies to the merged reward, so it is not stored with the "
                         "kept attributes")
    tokenizer = without_special_tokens(_tokenizer(cfg, root, label, tokenizer_dir))
    if kind == REWARD and model.append_eos:
        tokenizer = ending_with_eos(tokenizer)
    metadata = dist_checkpointing.load_tensors_metadata(str(root / WEIGHTS))
    if EMBEDDING_KEY not in metadata:
        raise CheckpointError(f"{label}: {WEIGHTS} has no {EMBEDDING_KEY} (not a megatron-core GPT model)")
    embedding = metadata[EMBEDDING_KEY]
    rows = embedding.global_shape[0]
    if rows < len(tokenizer):
        raise CheckpointError(f"{label}: the embedding has {rows} rows, fewer than the tokenizer's "
                              f"{len(tokenizer)} tokens (is --tokenizer the model's?)")
    source_dtype = embedding.dtype
    target = DTYPES[dtype] if dtype else source_dtype
    if target not in (torch.float32, torch.bfloat16):
        raise CheckpointError(f"{label}: weights are {source_dtype}; pass --dtype fp32 or --dtype bf16")
    source = NemoSource(root, label, model, settings, tokenizer, rows, target, kind, keep_attributes, notes)
    _check_tensors(source, metadata)
    return source


def _check_weights(root: Path, label: str) -> None:
    legacy = sorted(p.relative_to(root) for p in root.rglob("model_weights.ckpt"))
    if legacy and not (root / WEIGHTS).is_dir():
        raise CheckpointError(
            f"{label}: {legacy[0]} is a legacy NeMo-1 checkpoint (a torch.save state dict in NeMo-1's names), "
            "which this importer does not read; convert it to a megatron-core distributed checkpoint first with "
            "NeMo's scripts/checkpoint_converters/convert_gpt_nemo_to_mcore.py")
    metadata_path = root / WEIGHTS / "metadata.json"
    if not metadata_path.is_file():
        raise CheckpointError(f"{label}: {WEIGHTS}/metadata.json missing (not a megatron-core distributed checkpoint)")
    backend = yaml.safe_load(metadata_path.read_text()).get("sharded_backend")
    if backend != "torch_dist":
        raise CheckpointError(f"{label}: {WEIGHTS}/metadata.json sharded_backend={backend!r} is not supported: only "
                              "torch_dist is read (re-save a zarr checkpoint with dist_ckpt_format=torch_dist)")


def _check_tensors(source: NemoSource, found: dict) -> None:
    """Refuse a checkpoint whose tensors are not the model's, naming the difference."""
    expected = {_nemo_key(key): shape for key, shape in
                megatron_io.tensor_shapes(source.saved_model, source.rows, source.dtype, PREFIX, source.kind).items()}
    unused = {PREFIX + OUTPUT_LAYER} if source.kind == REWARD else set()
    tensors = {key for key in found if "_extra_state" not in key} - unused
    missing, unexpected = sorted(set(expected) - tensors), sorted(tensors - set(expected))
    if missing or unexpected:
        hint = (" (a model without NeMo-Aligner's reward head imports with --model-kind policy)"
                if any(".rm_head." in key for key in missing) else "")
        raise CheckpointError(f"{source.label}: {WEIGHTS} does not hold the tensors of the {source.kind} model "
                              f"{CONFIG} describes: missing {missing[:8]}, unexpected {unexpected[:8]}{hint}")
    for key, shape in expected.items():
        saved = tuple(found[key].global_shape)
        if saved != shape:
            raise CheckpointError(f"{source.label}: {WEIGHTS} holds {key} of shape {list(saved)}, but the model "
                                  f"{CONFIG} describes has {list(shape)}")


def _tokenizer(cfg: dict, root: Path, label: str, tokenizer_dir) -> PreTrainedTokenizerBase:
    """`tokenizer_dir`'s tokenizer, else a Hugging Face tokenizer folder the file carries as an
    artefact (`nemo:<hash>_<name>`). A `.nemo` may instead name a hub id or a path on the machine
    that made it (Llama 3 and later), or carry a SentencePiece model or GPT-2 vocabulary files,
    which no Hugging Face tokenizer rebuilds to the same ids in every case (transformers 5's
    LlamaTokenizer from a `.model` splits spaces and unknown characters otherwise): the Hugging
    Face tokenizer of the same vocabulary is asked for then."""
    if tokenizer_dir is not None:
        return load_tokenizer(tokenizer_dir)
    section = cfg.get("tokenizer") or {}
    for value in section.values():
        if isinstance(value, str) and value.startswith("nemo:") and (root / value[5:]).is_dir():
            return load_tokenizer(root / value[5:])
    named = ", ".join(f"tokenizer.{key}={section[key]!r}" for key in ("library", "type", "model", "vocab_file")
                      if section.get(key))
    raise CheckpointError(f"{label}: {CONFIG} names its tokenizer as {named or 'nothing'}, which this importer "
                          "cannot rebuild exactly from the file; pass --tokenizer with the Hugging Face tokenizer "
                          "folder of that vocabulary")


def import_nemo(path: str | Path, out_dir: str | Path, **options) -> list[str]:
    """Convert the `.nemo` at `path` (a tar, a gzipped tar or a folder) into a checkpoint at
    `out_dir` (options: see `open_nemo`); returns notes on what changed or was left out."""
    with unpacked(path) as root:
        source = open_nemo(root, str(path), **options)
        origin = {"nemo": str(Path(path).resolve()), "kind": source.kind, "critic": source.settings.critic,
                  "attributes": source.settings.num_attributes, "merged": source.folds}
        megatron_io.save_converted(out_dir, source.tensors(), source.model, source.padded_vocab_size, source.dtype,
                                   source.kind, source.tokenizer, Path(path) / CONFIG, source=origin,
                                   reward_normalization=source.reward_normalization())
    return source.notes
