"""The progress line shows what each kind of run logs."""

from megatron_rm.training.metrics_log import _line


def test_a_process_reward_model_shows_step_accuracy_and_auroc():
    row = {"step": 12, "split": "eval", "loss": 0.25, "documents": 64, "step_accuracy": 0.9375, "auroc": 0.96,
           "ece": 0.02}
    assert _line(row) == ("eval  step     12 | loss 0.2500 | documents 64 | step accuracy 0.938 | auroc 0.960 | "
                          "ece 0.020")


def test_an_outcome_reward_model_shows_token_accuracy():
    row = {"step": 3, "split": "train", "loss": 0.5, "documents": 8, "token_accuracy": 0.75, "auroc": None}
    assert _line(row) == "train step      3 | loss 0.5000 | documents 8 | token accuracy 0.750"
