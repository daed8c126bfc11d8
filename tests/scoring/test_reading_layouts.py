"""The reading rule at TP2 and PP2: Hugging Face reward models with pad == EOS and with a pad
token of their own, straight from the folder and from the converted checkpoint, scored in one
2-rank job, against the stock transformers call."""

from __future__ import annotations

import pytest
import torch

from megatron_rm.convert import import_hf
from tests.conftest import REPO, torchrun
from tests.scoring.test_reading_rule import PADS, TEXTS, assert_same, rendered, save_reward_model, stock

pytestmark = pytest.mark.slow  # a real torchrun job

LAYOUTS = ("tp2_pp1", "tp1_pp2")
VARIANTS = ("pad_is_eos", "own_pad")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("reading_layouts")
    references = {}
    for variant in VARIANTS:
        folder = save_reward_model(root / "hf" / variant, PADS[variant])
        import_hf(folder, root / "models" / f"{variant}-checkpoint")
        (root / "models" / f"{variant}-folder").symlink_to(folder)
        references[variant] = {"texts": stock(folder, TEXTS, "left"),
                               "conversations": stock(folder, rendered(folder), "right", special_tokens=False),
                               "ids": stock(folder, TEXTS, "right")}
    (root / "out").mkdir()
    torchrun(2, REPO / "tests" / "scoring" / "reading_layouts_worker.py", "--models", str(root / "models"),
             "--out", str(root / "out"))
    return references, {layout: torch.load(root / "out" / f"{layout}.pt") for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", ["folder", "checkpoint"])
def test_layouts_read_as_transformers_does(scored, layout, variant, source):
    references, results = scored
    for inputs, want in references[variant].items():
        assert_same(results[layout][f"{variant}-{source}"][inputs], want)
