"""The weight stream (`convert.weight_stream.hf_weights`) from a trained policy's TP2xPP2 shards
gives exactly the tensors `tools/convert_megatron_to_hf.py` writes from its checkpoint: the same
names, the same bytes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from megatron_rm.convert.megatron_to_hf import export_hf
from tests.conftest import REPO, torchrun

pytestmark = pytest.mark.slow  # a real 4-rank torchrun job


def test_the_stream_equals_the_exported_checkpoint_bit_for_bit(tmp_path, single_rank):
    torchrun(4, str(REPO / "tests" / "convert" / "weight_stream_worker.py"), str(tmp_path))
    streamed = torch.load(tmp_path / "streamed.pt")
    exported = export_hf(tmp_path / "checkpoint", tmp_path / "hf", model_name="actor", kind="policy")
    written = {}
    for shard in sorted(exported.glob("*.safetensors")):
        written.update(load_file(shard))
    assert sorted(streamed) == sorted(written)
    for name, tensor in written.items():
        assert streamed[name].dtype == tensor.dtype and torch.equal(streamed[name], tensor), name
    assert any(not torch.equal(t, torch.zeros_like(t)) for t in streamed.values())
