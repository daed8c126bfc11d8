"""Our checkpoints as whole tensors: write them from, and read them into, one process.

A conversion never builds real layers. The model is built on the meta device
at TP1/PP1 (no memory, no initialisation) only for its `sharded_state_dict`:
that fixes every checkpoint key, global shape and tensor-parallel split
(including megatron's swiglu split of `linear_fc1`), so a converted checkpoint
is exactly what training would have saved and loads at any TP/PP through
megatron's resharding. The whole tensors are then swapped in for the meta ones.

Megatron's tensor factories (the swiglu split, which saves `linear_fc1` as its
gate and up halves) are built here, before saving or loading, and each half
gets a tensor of its own: handed views, the checkpoint writer would clone them,
and the loader would concatenate halves while still holding them, either way a
second copy of every MLP's largest weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensorFactory

from megatron_rm.config import POLICY, REWARD, ModelConfig, ParallelConfig
from megatron_rm.convert.families import OUTPUT_LAYER
from megatron_rm.convert.hf_config import TORCH_DTYPE_NAMES
from megatron_rm.core.checkpoint_files import DEFAULT_MODEL, TOKENIZER_DIR, ModelEntry, atomic_folder, write_metadata
from megatron_rm.data import save_tokenizer
from megatron_rm.model.factory import build_policy_model, build_reward_model
from megatron_rm.runtime import parallel

EMBEDDING = "embedding.word_embeddings.weight"
HEAD_DTYPE = torch.float32
"""The reward head is kept in fp32 whatever the trunk's dtype (see RewardHead)."""


def _template(model: ModelConfig, padded_vocab: int, dtype: torch.dtype, prefix: str,
              kind: str) -> tuple[dict, dict]:
    """The sharded state dict of `model`, a `kind` (reward or policy) model, at TP1/PP1 (checkpoint
    keys prefixed by `prefix`, dict keys the parameter names), its tensors on the meta device and
    its factories built, and each parameter's whole shape."""
    if not parallel_state.model_parallel_is_initialized():
        parallel.initialize(ParallelConfig(), seed=0)
    if parallel_state.get_tensor_model_parallel_world_size() != 1 or \
            parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise RuntimeError("conversion runs in one process at TP1/PP1")
    build = {REWARD: build_reward_model, POLICY: build_policy_model}[kind]
    template = build(model, ParallelConfig(), padded_vocab, meta_dtype=dtype)
    sharded = {name[len(prefix):]: entry for name, entry in template.sharded_state_dict(prefix=prefix).items()}
    shapes = {name: tuple(entry.data.shape) for name, entry in sharded.items()
              if not isinstance(entry, ShardedObject)}
    built = {name: entry.build() if isinstance(entry, ShardedTensorFactory) else entry
             for name, entry in sharded.items()}
    return built, shapes


def _parts(entry) -> list:
    """The ShardedTensors of one parameter: itself, or the pieces its factory built."""
    return entry if isinstance(entry, list) else [entry]


def save(tensors: dict[str, torch.Tensor], out: Path, model: ModelConfig, padded_vocab: int,
         dtype: torch.dtype, name: str = DEFAULT_MODEL, *, kind: str = REWARD) -> None:
    """Write `tensors` (parameter name -> whole tensor) as a dist_checkpointing checkpoint of one
    `kind` (reward or policy) model called `name`, laid out as training saves it.

    `tensors` is emptied as it goes: a factory's pieces replace their parameter.
    """
    sharded, shapes = _template(model, padded_vocab, dtype, f"{name}.", kind)
    if set(shapes) != set(tensors):
        raise AssertionError(f"tensors do not match the model: missing {sorted(set(shapes) - set(tensors))}, "
                             f"unexpected {sorted(set(tensors) - set(shapes))}")
    for name, shape in shapes.items():
        tensor, entry = tensors.pop(name).contiguous(), sharded[name]
        if tuple(tensor.shape) != shape:
            raise AssertionError(f"{name}: model shape {list(shape)}, tensor {list(tensor.shape)}")
        if isinstance(entry, list):
            for piece in entry:  # the piece's meta view says where in the whole tensor it lies
                meta = piece.data
                piece.data = tensor.as_strided(meta.shape, meta.stride(), meta.storage_offset()).clone()
        else:
            entry.data = tensor
        del tensor
    dist_checkpointing.save({name: {"model": sharded}}, str(out))


def save_converted(out_dir: str | Path, tensors: dict[str, torch.Tensor], model: ModelConfig, padded_vocab: int,
                   dtype: torch.dtype, kind: str, tokenizer, derived_from: Path, **metadata) -> None:
    """A converted model's whole checkpoint at `out_dir`, which appears only once complete: its
    `tensors` (`save`; the dict is emptied), its tokenizer, `megatron_rm.json` at step 0 with
    `metadata` (the source, reward statistics, ...) and `model.yaml`, noting `derived_from`."""
    with atomic_folder(out_dir) as staging:
        save(tensors, staging, model, padded_vocab, dtype, kind=kind)
        save_tokenizer(tokenizer, staging / TOKENIZER_DIR)
        entry = ModelEntry(model, padded_vocab, TORCH_DTYPE_NAMES[dtype], prefix=f"{DEFAULT_MODEL}.", kind=kind)
        write_metadata(staging, step=0, models={DEFAULT_MODEL: entry}, **metadata)
        (staging / "model.yaml").write_text(
            f"# Derived from {derived_from}; tokenizer is relative to this folder.\n"
            + yaml.safe_dump(dataclasses.asdict(model), sort_keys=False))


def tensor_shapes(model: ModelConfig, padded_vocab: int, dtype: torch.dtype, prefix: str,
                  kind: str = REWARD) -> dict[str, tuple[int, ...]]:
    """The checkpoint key and global shape of each of one `kind` model's tensors (objects left out)."""
    sharded, _ = _template(model, padded_vocab, dtype, prefix, kind)
    return {piece.key: tuple(piece.global_shape) for entry in sharded.values()
            if not isinstance(entry, ShardedObject) for piece in _parts(entry)}


def load(directory: Path, model: ModelConfig, padded_vocab: int, dtype: torch.dtype,
         prefix: str, kind: str = REWARD, *, keys: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """Every parameter of one `kind` model of the checkpoint in `directory` (saved at any TP/PP),
    whole; `prefix` is that model's key prefix (checkpoint_files.ModelEntry). `keys`: the
    checkpoint's key for each of ours, when it names tensors otherwise (a NeMo checkpoint).
    Objects (`_extra_state`) are not read: no parameter is one."""
    sharded, _ = _template(model, padded_vocab, dtype, prefix, kind)
    sharded = {name: entry for name, entry in sharded.items() if not isinstance(entry, ShardedObject)}
    for entry in sharded.values():
        for piece in _parts(entry):
            piece.data = torch.empty(piece.data.shape, dtype=piece.data.dtype)
            if keys is not None:
                piece.key = keys(piece.key)
    state = dist_checkpointing.load(sharded, str(directory))
    sharded.clear()  # the loaded tensors are the pieces' own; keep one reference to each
    whole = {}
    for name in list(state):
        value = state.pop(name)
        if isinstance(value, list):  # a factory's pieces: joined one parameter at a time
            value = torch.cat(value)
        if isinstance(value, torch.Tensor):
            whole[name] = value
    return whole


def parameter_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return HEAD_DTYPE if name.startswith("reward_head.") else dtype


def load_whole(module: torch.nn.Module, tensors) -> None:
    """Copy whole (TP1/PP1) parameters into this rank's stage and tensor-parallel shard of `module`.

    `tensors` yields (parameter name, whole tensor), as `HFSource.tensors` does, so a Hugging
    Face folder loads at any layout without a checkpoint on disk. Each parameter's place in
    the whole tensor comes from megatron's own sharding metadata (`sharded_state_dict`: global
    offsets, including the swiglu gate/up split of `linear_fc1`), so it is exactly the slice a
    checkpoint saved at TP1/PP1 would reshard to. Layers are numbered globally by
    `layer_number`; a pipeline stage takes only its own. A tied output layer on a last stage
    without the embedding (megatron's copy of it there) takes the embedding's tensor, as it
    does from a checkpoint, where it is saved under the embedding's key.
    """
    local = local_pieces(module)
    missing = set(local)
    for name, whole in tensors:
        if name not in local:
            continue  # another pipeline stage's parameter
        missing.discard(name)
        with torch.no_grad():
            for piece in local[name]:
                piece.data.copy_(whole[place(piece)])
    if missing:
        raise AssertionError(f"no tensor given for {sorted(missing)[:8]}")


def local_pieces(module: torch.nn.Module) -> dict[str, list]:
    """This rank's shard of every parameter of `module` (its stage, its tensor-parallel slice), as
    megatron's sharding metadata describes it: the whole model's parameter name -> the
    ShardedTensors whose `data` are views of the parameter (a swiglu `linear_fc1` gives two, its
    gate and up halves). A tied output layer on a last stage without the embedding (megatron's
    copy of it there) is named as the embedding, as a checkpoint saves it."""
    local: dict[str, list] = {}
    for name, entry in module.sharded_state_dict(prefix="").items():
        if isinstance(entry, ShardedObject):
            continue
        if name == OUTPUT_LAYER and entry.key == EMBEDDING:
            name = EMBEDDING
        pieces = entry.build() if isinstance(entry, ShardedTensorFactory) else entry
        local.setdefault(_global_name(module, name), []).extend(_parts(pieces))
    return local


def place(piece) -> tuple[slice, ...]:
    """Where a ShardedTensor's `data` lies in its whole (TP1/PP1) parameter."""
    return tuple(slice(offset, offset + size) for offset, size in
                 zip(piece.global_offset[piece.prepend_axis_num:], piece.data.shape))


def _global_name(module: torch.nn.Module, name: str) -> str:
    """`decoder.layers.<local index>.…` -> the layer's index in the whole model."""
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        parts[2] = str(module.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)
