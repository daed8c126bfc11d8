"""Loading a model to score: a Hugging Face folder in memory, our checkpoint, their stored
reward statistics, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_rm.convert import import_hf
from megatron_rm.errors import CheckpointError
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer
from tests.convert.hf_models import save_model

TEXTS = [("User: Name 2 colors.\nAssistant:", " 1. teal 2. blue"), ("", "a lone response")]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("load") / "hf"
    save_model("qwen2", folder, num_labels=2)
    return folder


def _rewards(path):
    scorer = Scorer(load_model(path))
    return scorer, scorer.score([one.ids for one in scorer.encoder.texts(TEXTS)])


def test_a_hugging_face_folder_scores_like_its_converted_checkpoint(hf_folder, tmp_path):
    import_hf(hf_folder, tmp_path / "checkpoint")
    _, from_hf = _rewards(hf_folder)
    scorer, from_checkpoint = _rewards(tmp_path / "checkpoint")
    assert from_hf.shape == (2, 2) and scorer.normalized(from_hf) is None
    torch.testing.assert_close(from_hf, from_checkpoint, rtol=0, atol=0)


@pytest.mark.parametrize("stats", [{"reward_normalization": {"mean": [1.0, -1.0], "std": [2.0, 0.5]}},
                                   {"mean": 1.0, "std": 2.0}])
def test_stored_statistics_normalise_rewards(hf_folder, tmp_path, stats):
    folder = tmp_path / "hf"
    folder.mkdir()
    for file in hf_folder.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **stats}))
    if "mean" in stats:  # OpenRLHF's keys hold one value: only a one-label model can use them
        with pytest.raises(CheckpointError, match="1 mean.* for a model of 2 label"):
            load_model(folder)
        return
    scorer, rewards = _rewards(folder)
    expected = (rewards - torch.tensor([1.0, -1.0])) / torch.tensor([2.0, 0.5])
    torch.testing.assert_close(scorer.normalized(rewards), expected)


def test_missing_and_foreign_folders_are_refused(tmp_path, single_rank):
    with pytest.raises(CheckpointError, match="no such model folder"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty")
