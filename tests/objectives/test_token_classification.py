"""loss.type=orm and loss.type=prm on real stores of step-labelled rows: the loss against a float64
reference, the masking rules (the seed's adversarial check: a prompt left unmasked changes the
result), and every metric against a plain per-solution reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megatron_rm.config import LossConfig
from megatron_rm.data.batching import collate
from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.data.steps import Labelling
from megatron_rm.data.store import GroupStore
from megatron_rm.objectives import build_objective, step_rewards
from tests.conftest import DEMO
from tests.objectives.step_rows import outcome_rows, stepwise_rows, write_rows

KINDS = {"prm": ("steps", 2), "prm3": ("steps", 3), "orm": ("outcomes", 2)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_objectives")
    rows = {"prm": stepwise_rows(30, seed=1), "orm": outcome_rows(30, seed=1)}
    # Three classes take ratings, not probabilities: the bool and PRM800K rows.
    rows["prm3"] = [row for row in rows["prm"] if not isinstance(row["labels"][0], float)]
    out = {}
    for kind, (grouping, classes) in KINDS.items():
        source = write_rows(root / f"{kind}.jsonl", rows[kind])
        settings = Settings(str(DEMO / "tokenizer"), 64, "drop", grouping=grouping,
                            labelling=Labelling(num_classes=classes))
        build_store([source], root / kind, settings, progress_every=0)
        out[kind] = GroupStore(root / kind)
    return out


def _objective(kind: str, aggregation: str | None = None):
    loss = LossConfig(type=kind[:3], num_classes=KINDS[kind][1], aggregation=aggregation)
    return build_objective(loss, loss.num_classes)


def _batch(store, groups=None, packed=False):
    return collate(store, list(range(len(store))) if groups is None else groups, 0, packed=packed)


def _logits(batch, classes: int, seed: int = 0) -> torch.Tensor:
    """Random logits, each row shifted toward or away from the positive class as a trained model's
    confidence differs from solution to solution."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn((*batch.input_ids.shape, classes), generator=generator)
    logits[..., -1] += 3 * torch.randn((batch.input_ids.shape[0], 1), generator=generator)
    return logits


def _solutions(batch, logits, classes):
    """Per document in layout order: (positive probabilities, targets) at its labelled tokens, by loops."""
    out = []
    for row in range(batch.input_ids.shape[0]):
        for number in range(1, int(batch.attention_mask[row].max()) + 1):
            positions = [c for c in range(batch.input_ids.shape[1]) if batch.attention_mask[row, c] == number
                         and not math.isnan(float(batch.token_targets[row, c]))]
            probs = [float(torch.softmax(logits[row, c].double(), 0)[-1]) for c in positions]
            out.append((probs, [float(batch.token_targets[row, c]) for c in positions],
                        [logits[row, c].double() for c in positions]))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_loss_is_the_float64_cross_entropy_of_the_labelled_tokens(stores, kind):
    batch, classes = _batch(stores[kind]), KINDS[kind][1]
    logits = _logits(batch, classes)
    loss_sum, terms, _ = _objective(kind)(batch, logits)
    expected, count = 0.0, 0
    for _, targets, token_logits in _solutions(batch, logits, classes):
        for target, values in zip(targets, token_logits):
            logp = torch.log_softmax(values, 0)
            expected -= float((1 - target) * logp[0] + target * logp[1]) if classes == 2 else float(logp[int(target)])
            count += 1
    assert int(terms) == count == int((~batch.token_targets.isnan()).sum())
    assert float(loss_sum) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_unlabelled_tokens_reach_neither_the_loss_nor_its_gradient(stores, kind):
    batch, classes = _batch(stores[kind], packed=True), KINDS[kind][1]
    logits = _logits(batch, classes).requires_grad_()
    loss_sum, _, _ = _objective(kind)(batch, logits)
    loss_sum.backward()
    unlabelled = batch.token_targets.isnan()
    assert logits.grad[unlabelled].abs().max() == 0 and logits.grad[~unlabelled].abs().min() > 0
    changed = logits.detach().clone()
    changed[unlabelled] = 1e4  # inf-like values in the prompt and padding change nothing
    assert float(_objective(kind)(batch, changed)[0]) == float(loss_sum.detach())


def test_an_outcome_left_on_the_prompt_changes_the_loss(stores):
    """The seed's adversarial check: the prompt must be masked (-100), or the loss learns it too."""
    batch = _batch(stores["orm"])
    logits = _logits(batch, 2)
    masked = _objective("orm")(batch, logits)
    leaky = batch.token_targets.clone()
    response = ~leaky.isnan()
    outcome = torch.where(response, leaky, 0).sum(1) / response.sum(1)
    leaky[(batch.attention_mask > 0) & ~response] = outcome.expand_as(leaky.T).T[(batch.attention_mask > 0) & ~response]
    batch.token_targets = leaky
    unmasked = _objective("orm")(batch, logits)
    assert int(unmasked[1]) > int(masked[1]) and float(unmasked[0]) != pytest.approx(float(masked[0]))


@pytest.mark.parametrize("kind, aggregation", [("prm", None), ("prm", "min"), ("prm3", "last"), ("orm", None),
                                               ("orm", "product")])
def test_metrics_equal_a_plain_per_solution_reference(stores, kind, aggregation):
    batch, classes = _batch(stores[kind]), KINDS[kind][1]
    logits = _logits(batch, classes, seed=3)
    objective = _objective(kind, aggregation)
    summary = objective.summarize(objective(batch, logits)[2]["sums"])
    solutions = _solutions(batch, logits, classes)
    how = aggregation or ("mean" if kind == "orm" else "product")

    def predicted_class(values):
        return (1 if float(torch.softmax(values, 0)[1]) > 0.5 else 0) if classes == 2 else int(values.argmax())

    def true_class(target):
        return int(target >= 0.5) if classes == 2 else int(target)

    right, count, scores, solution_right, first_predicted, first_true = 0, 0, [], [], [], []
    predicted_ok, labels_ok, all_probs, all_targets = [], [], [], []
    for probs, targets, token_logits in solutions:
        predicted = [predicted_class(v) for v in token_logits]
        actual = [true_class(t) for t in targets]
        right += sum(p == a for p, a in zip(predicted, actual))
        count += len(actual)
        scores.append(float(step_rewards.aggregate(torch.tensor(probs, dtype=torch.float64), how)))
        solution_right.append(actual[0] == 1 if kind == "orm" else all(a != 0 for a in actual))
        first_predicted.append([p != 0 for p in predicted])
        first_true.append(step_rewards.first_error_index([a != 0 for a in actual]))
        predicted_ok += [p != 0 for p in predicted]
        labels_ok += [a != 0 for a in actual]
        all_probs += probs
        all_targets += targets if classes == 2 else [float(a == 2) for a in actual]
    accuracy = "token_accuracy" if kind == "orm" else "step_accuracy"
    assert summary[accuracy] == pytest.approx(right / count, abs=1e-12)
    assert summary["solutions"] == len(solutions) == len(stores[kind])
    assert summary["solution_accuracy"] == pytest.approx(
        np.mean([(s > 0.5) == r for s, r in zip(scores, solution_right)]), abs=1e-12)
    # Scores within 0.05 in log-odds share a histogram bin and count as tied.
    assert summary["auroc"] == pytest.approx(step_rewards.auroc(scores, solution_right), abs=0.01)
    assert summary["ece"] == pytest.approx(step_rewards.expected_calibration_error(all_probs, all_targets), abs=1e-6)
    if kind != "orm":
        assert summary["first_error_accuracy"] == pytest.approx(
            step_rewards.first_error_step_accuracy(first_predicted, first_true), abs=1e-12)
        assert summary["error_step_f1"] == pytest.approx(step_rewards.error_step_f1(predicted_ok, labels_ok),
                                                         abs=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_micro_batch_sums_add_up_to_the_whole_batch(stores, kind):
    store, classes = stores[kind], KINDS[kind][1]
    objective = _objective(kind)
    half = len(store) // 2
    whole_batch = _batch(store)
    logits = _logits(whole_batch, classes)
    whole = objective(whole_batch, logits)[2]["sums"]
    parts = []
    for groups in (list(range(half)), list(range(half, len(store)))):
        batch = _batch(store, groups, packed=True)
        # The same logits per document: copy each document's rows out of the whole batch's.
        part = torch.zeros((*batch.input_ids.shape, classes))
        for index, group in enumerate(groups):
            length = int((whole_batch.attention_mask[group] > 0).sum())
            columns = batch.attention_mask[0] == index + 1
            part[0, columns] = logits[group, :length]
        parts.append(objective(batch, part)[2]["sums"])
    fields = objective.layout.unpack(parts[0] + parts[1])
    expected = objective.layout.unpack(whole)
    for name in ("labelled", "labelled_correct", "calibration", "solutions", "solutions_correct", "score_histogram",
                 "error_counts", "first_error_correct", "loss", "loss_terms"):
        torch.testing.assert_close(fields[name], expected[name], rtol=1e-6, atol=1e-9, msg=name)


def test_a_probability_of_one_half_is_no_right_answer(stores):
    batch = _batch(stores["prm"], [0])
    summary = _objective("prm").summarize(_objective("prm")(batch, torch.zeros((*batch.input_ids.shape, 2)))[2]["sums"])
    positives = float((batch.token_targets >= 0.5).sum())
    assert summary["step_accuracy"] == pytest.approx(1 - positives / float((~batch.token_targets.isnan()).sum()))


@pytest.mark.parametrize("loss, problem", [
    (LossConfig(type="prm", num_classes=4), "loss.num_classes=4 must be 2 or 3"),
    (LossConfig(type="prm", neutral="maybe"), "loss.neutral='maybe' must be one of"),
    (LossConfig(type="prm", aggregation="median"), "loss.aggregation='median' must be one of"),
    (LossConfig(type="orm", num_classes=3), "an outcome is right or wrong"),
])
def test_bad_settings_are_named(loss, problem):
    from megatron_rm.config import DataConfig, ParallelConfig

    problems = build_objective(loss, loss.num_classes).config_problems(DataConfig(), ParallelConfig())
    assert any(problem in p for p in problems), problems
