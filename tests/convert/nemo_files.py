"""`.nemo` files written from our own checkpoints, laid out as NeMo-Aligner writes them.

Followed: NeMo's `nemo/core/connectors/save_restore_connector.py` (a tar of the model folder,
members under `./`: `model_config.yaml` and `model_weights/`); NeMo-Aligner's
`nemo_aligner/models/nlp/gpt/gpt_reward_model.py` (GPTRewardModel: the head `rm_head`, a
RowParallelLinear(hidden -> attributes, bias=True) split along the hidden dimension, with an
`_extra_state`, and the LM head `output_layer` it builds and saves although it never uses it);
`megatron_gpt_reward_model.py` and `examples/nlp/gpt/conf/training_rm.yaml` (the config keys), and
NeMo's `megatron_gpt_config.yaml` (the rest of a GPT config). The weights are saved by
megatron-core's `dist_checkpointing` (torch_dist), as NeMo saves them, from the model built at
this job's tensor-parallel size (a 2-rank job writes a TP2 file: every split tensor in two
shards, the head along hidden), with the embedding padded as NeMo pads it: to a multiple of
`make_vocab_size_divisible_by` times the tensor-parallel size, its padding rows random.
"""

from __future__ import annotations

import dataclasses
import shutil
import tarfile
from pathlib import Path

import torch
import yaml
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint

from megatron_rm.config import REWARD, ParallelConfig
from megatron_rm.convert import megatron_io
from megatron_rm.convert.families import OUTPUT_LAYER
from megatron_rm.core.checkpoint_files import TOKENIZER_DIR, model_entry, read_metadata
from megatron_rm.data import load_tokenizer
from megatron_rm.model import build_policy_model, build_reward_model

HUB_TOKENIZER = {"library": "huggingface", "type": "example-org/tiny-llama-tokenizer", "model": None,
                 "vocab_file": None, "merge_file": None, "use_fast": True}


def nemo_config(checkpoint: Path, *, tp: int, divisible_by: int, **overrides) -> dict:
    """The model_config.yaml NeMo-Aligner saves for our checkpoint's model, with `overrides`."""
    entry = model_entry(checkpoint, read_metadata(checkpoint))
    m = entry.config
    cfg = {
        "mcore_gpt": True, "micro_batch_size": 1, "global_batch_size": 8, "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": 1, "encoder_seq_length": m.max_sequence_length,
        "max_position_embeddings": m.max_sequence_length, "num_layers": m.num_layers, "hidden_size": m.hidden_size,
        "ffn_hidden_size": m.ffn_hidden_size, "num_attention_heads": m.num_attention_heads,
        "num_query_groups": m.num_query_groups, "kv_channels": m.kv_channels, "init_method_std": m.init_method_std,
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "ffn_dropout": 0.0, "apply_query_key_layer_scaling": False,
        "normalization": "rmsnorm", "layernorm_epsilon": m.norm_epsilon, "activation": "fast-swiglu", "bias": False,
        "position_embedding_type": "rope", "rotary_base": m.rotary_base, "rotary_percentage": 1.0,
        "seq_len_interpolation_factor": None, "make_vocab_size_divisible_by": divisible_by,
        "share_embeddings_and_output_weights": m.tie_word_embeddings, "transformer_engine": True,
        "persist_layer_norm": True, "masked_softmax_fusion": True, "bias_activation_fusion": True,
        "bias_dropout_add_fusion": True, "megatron_amp_O2": True, "precision": "bf16", "seed": 1234,
        "tokenizer": dict(HUB_TOKENIZER),
        "data": {"data_impl": "jsonl", "seq_length": m.max_sequence_length, "append_eod": m.append_eos,
                 "reset_position_ids": False, "reset_attention_mask": False, "eod_mask_loss": False},
        "optim": {"name": "distributed_fused_adam", "lr": 9e-6, "weight_decay": 0.1},
    }
    if entry.kind == REWARD:
        cfg.update({
            "reward_model_type": "binary_ranking",
            "regression": {"num_attributes": m.num_labels, "merge_attributes": False, "attribute_weights": None,
                           "loss_mask_val": -100},
            "output_sequence": False, "use_avg_pool": False, "force_head_dtype": "float32",
            "reward_standardization": {"enable": False, "mean": None, "std": None}, "forward_mbs": 1,
        })
    cfg.update(overrides)
    return cfg


def whole_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Our checkpoint's parameters, whole (read in one process at TP1)."""
    entry = model_entry(checkpoint, read_metadata(checkpoint))
    return megatron_io.load(checkpoint, entry.config, entry.padded_vocab_size, torch.float32, entry.prefix,
                            entry.kind)


def write_weights(checkpoint: Path, weights: Path, whole: dict[str, torch.Tensor], *, divisible_by: int,
                  head_extra_state: bool = True, precision: str = "fp32", seed: int = 0) -> int:
    """Our checkpoint's model (its parameters `whole`) saved as NeMo-Aligner's `model_weights/`
    (collective over this job's ranks, all of one tensor-parallel group); returns the embedding rows."""
    entry = model_entry(checkpoint, read_metadata(checkpoint))
    tp = parallel_state.get_tensor_model_parallel_world_size()
    vocab = len(load_tokenizer(checkpoint / TOKENIZER_DIR))
    multiple = divisible_by * tp
    rows = -(-vocab // multiple) * multiple
    whole = dict(whole)
    generator = torch.Generator().manual_seed(seed)
    for name in (megatron_io.EMBEDDING, OUTPUT_LAYER):
        if name in whole:
            padding = torch.randn(rows - vocab, whole[name].shape[1], generator=generator)
            whole[name] = torch.cat([whole[name][:vocab], padding])
    config = dataclasses.replace(entry.config, make_vocab_size_divisible_by=multiple)
    if entry.kind == REWARD and not config.head_bias:  # NeMo-Aligner's head always has one
        config = dataclasses.replace(config, head_bias=True)
        whole["reward_head.bias"] = torch.zeros(config.num_labels)
    build = build_reward_model if entry.kind == REWARD else build_policy_model
    module = build(config, ParallelConfig(tp=tp), rows, precision)  # bf16: the trunk in bf16, the head fp32
    megatron_io.load_whole(module, whole.items())
    sharded = {}
    for key, value in module.sharded_state_dict(prefix="model.").items():
        key = key.replace("model.reward_head.", "model.rm_head.")
        for piece in value if isinstance(value, list) else [value]:
            piece.key = piece.key.replace("model.reward_head.", "model.rm_head.")
        sharded[key] = value
    if entry.kind == REWARD:  # GPTRewardModel's unused LM head, and the head's extra state
        head = torch.randn(rows, entry.config.hidden_size, generator=generator)
        local = head.chunk(tp)[parallel_state.get_tensor_model_parallel_rank()].clone()
        sharded["model.output_layer.weight"] = make_tp_sharded_tensor_for_checkpoint(
            local, "model.output_layer.weight", tp_axis=0)
        if head_extra_state:
            sharded["model.rm_head._extra_state"] = ShardedObject(
                "model.rm_head._extra_state", None, (1,), (0,),
                replica_id=parallel_state.get_tensor_model_parallel_rank())
    dist_checkpointing.save(sharded, str(weights))
    return rows


def write_nemo(checkpoint: Path, out: Path, *, form: str = "tar", divisible_by: int = 128,
               head_extra_state: bool = True, whole: dict[str, torch.Tensor] | None = None, precision: str = "fp32",
               artefacts: dict[str, Path] | None = None, **overrides) -> Path:
    """`out`: a `.nemo` (form tar or tar.gz) or a folder (form folder) of our checkpoint's model, at
    this job's tensor-parallel size (collective; beyond TP1, pass its `whole_tensors`);
    `artefacts`: folders stored in it under their names; `overrides`: model_config.yaml keys."""
    whole = whole_tensors(checkpoint) if whole is None else whole
    folder = out if form == "folder" else out.with_name(out.name + ".d")
    if torch.distributed.get_rank() == 0:
        (folder / "model_weights").mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    write_weights(checkpoint, folder / "model_weights", whole, divisible_by=divisible_by,
                  head_extra_state=head_extra_state, precision=precision)
    if torch.distributed.get_rank() == 0:
        tp = parallel_state.get_tensor_model_parallel_world_size()
        config = nemo_config(checkpoint, tp=tp, divisible_by=divisible_by, **overrides)
        (folder / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for name, source in (artefacts or {}).items():  # registered artefacts: `<hash>_<name>`
            shutil.copytree(source, folder / name)
        if form != "folder":
            with tarfile.open(out, "w:gz" if form == "tar.gz" else "w") as archive:
                archive.add(folder, arcname=".")
            shutil.rmtree(folder)
    torch.distributed.barrier()
    return out

