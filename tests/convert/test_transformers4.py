"""Our exports read the same under transformers 4.x as under 5.

transformers 5 writes RoPE only as `rope_parameters`, which 4.x ignores (theta 10000, no scaling),
and names a tokenizer's class `TokenizersBackend`, which 4.x refuses; our exports write both RoPE
spellings and a class both have. A Llama with llama3 scaling (where a misread changes every
logit) is exported as each kind, then read by transformers 4.57 in a child process
(`make install` puts it apart in `.venv/transformers4`) and by this process's transformers 5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

from megatron_rm.convert import export_hf, import_hf
from tests.conftest import PYTHON, REPO, run_command
from tests.convert.hf_models import save_model, tokenizer
from tests.convert.transformers4_worker import read

pytestmark = pytest.mark.slow  # a child process

TRANSFORMERS4 = Path(sys.prefix) / "transformers4"
"""transformers 4.57.6 with its huggingface_hub and tokenizers (`pip install --no-deps --target`)."""
KINDS = {"sequence_classification": "reward", "token_classification": "reward", "causal_lm": "policy"}
TEXT = "Which is larger, 3 or 4? 4.</s>"


def test_transformers_4_reads_our_exports_as_5_does(single_rank, tmp_path):
    if not (TRANSFORMERS4 / "transformers").is_dir():
        pytest.skip(f"transformers 4.x is not installed at {TRANSFORMERS4} (make install puts it there)")
    folders = []
    for kind, model_kind in KINDS.items():
        save_model("llama", tmp_path / "hf" / kind, kind, num_labels=2 if kind == "token_classification" else 1)
        import_hf(tmp_path / "hf" / kind, tmp_path / "megatron" / kind, kind=model_kind)
        folders.append(export_hf(tmp_path / "megatron" / kind, tmp_path / "export" / kind))
    ids = torch.randint(3, len(tokenizer()), (2, 30), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    torch.save((ids, mask), tmp_path / "ids.pt")
    result = run_command([PYTHON, str(REPO / "tests" / "convert" / "transformers4_worker.py"),
                          "--folders", *map(str, folders), "--ids", str(tmp_path / "ids.pt"), "--text", TEXT,
                          "--out", str(tmp_path / "4x.pt")],
                         env={"PYTHONPATH": f"{TRANSFORMERS4}:{REPO}"})
    assert result.returncode == 0, result.stderr[-3000:]
    old = torch.load(tmp_path / "4x.pt")
    for folder in folders:
        theirs, ours = old[folder.name], read(folder, ids, mask, TEXT)
        assert theirs["version"].startswith("4.") and ours["version"] == transformers.__version__
        assert theirs["rope_theta"] == 500000.0 and theirs["rope_scaling"]["rope_type"] == "llama3"
        assert theirs["text_ids"] == ours["text_ids"]
        assert (theirs["pad_token_id"], theirs["eos_token_id"]) == (ours["pad_token_id"], ours["eos_token_id"])
        torch.testing.assert_close(theirs["logits"], ours["logits"], rtol=1e-5, atol=1e-6)
