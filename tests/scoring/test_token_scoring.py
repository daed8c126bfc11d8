"""score_rm's job with token-head (outcome and process) reward models, in process on real files:
step rewards and rewards equal one document per forward (whatever the batching) and
transformers' token classifier; the checkpoint's stored aggregation and separator are the
defaults and the options override them; bad rows are named; the export agrees with
transformers; one slow test runs the tool at TP2 under torchrun."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from megatron_rm.convert import export_hf, import_hf
from megatron_rm.data.step_tokens import locate_steps
from megatron_rm.data.steps import LabelledSteps
from megatron_rm.errors import ConfigError, DataError
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from megatron_rm.scoring.token.scores import Located
from tests.conftest import REPO, torchrun
from tests.convert.hf_models import save_model
from tests.scoring.score_rm_files import read_rows, score_rows, write_rows
from tests.scoring.token_models import ROWS, STEPS, reference, save_token_model, token_checkpoint, written

ATOL = 1e-5


def responses(row: dict, separator: str = "\n", tag: str = "ки") -> list[LabelledSteps]:
    """Each response of a test row, written out by hand (not by the code under test)."""
    if "input" in row:
        steps = row["input"].split(tag)[:-1]
        return [LabelledSteps("", tuple(steps), None, tag, "", tuple(map(str, range(len(steps)))))]
    if "messages" in row:
        return [LabelledSteps(tuple(row["messages"][:-1]), (tuple(row["messages"][-1:]),), None, "", "", ("m",),
                              outcome=True)]
    prompt = tuple(row["prompt"]) if isinstance(row["prompt"], list) else row["prompt"]
    values = [row[key] for key in ("completions", "response", "chosen", "rejected") if key in row]
    values += row.get("responses", [])
    return [LabelledSteps(prompt, tuple(value), None, separator, "", tuple(map(str, range(len(value)))))
            if isinstance(value, list) else
            LabelledSteps(prompt, (value,), None, "", "", ("r",), outcome=True) for value in values]


def located(scorer: Scorer, response: LabelledSteps) -> Located:
    found = locate_steps(scorer.model.tokenizer, response, scorer.encoder.ending)
    return Located(found.encoded.ids, found.label_positions, response.outcome)


def expected(scorer: Scorer, rows: list[dict], separator: str = "\n", step_how: str = "product",
             outcome_how: str = "mean") -> list[tuple[float, list[float] | None]]:
    out = []
    for row in rows:
        for response in responses(row, separator):
            reward, probabilities = reference(scorer, located(scorer, response),
                                              outcome_how if response.outcome else step_how)
            out.append((reward, None if response.outcome else probabilities))
    return out


def assert_scores(out: list[dict], want: list[tuple], atol: float = ATOL) -> None:
    got = [one for row in out for one in written(row)]
    assert [steps is None for _, steps in got] == [steps is None for _, steps in want]
    torch.testing.assert_close(torch.tensor([reward for reward, _ in got]), torch.tensor([r for r, _ in want]),
                               rtol=0, atol=atol)
    for (_, steps), (_, steps_wanted) in zip(got, want):
        if steps is not None:
            torch.testing.assert_close(torch.tensor(steps), torch.tensor(steps_wanted), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    root = tmp_path_factory.mktemp("token_scoring")
    hf_model = save_token_model(root / "hf")
    return root, Scorer(load_model(root / "hf")), hf_model


def test_rewards_equal_one_document_per_forward_whatever_the_batching(setup, tmp_path):
    root, scorer, _ = setup
    want = expected(scorer, ROWS)
    assert len({round(reward, 4) for reward, _ in want}) == len(want)  # a real model, not a constant
    for index, settings in enumerate((ScoreSettings(), ScoreSettings(batching="pack"), ScoreSettings(max_tokens=40))):
        summary, out = score_rows(Scorer(scorer.model, settings), ROWS, tmp_path, target=f"{index}.jsonl")
        assert summary.done == len(ROWS) and summary.problems.total == 0
        assert [row["id"] for row in out] == [row["id"] for row in ROWS]
        assert all(row.items() <= scored.items() for row, scored in zip(ROWS, out))
        assert_scores(out, want)
    by_id = {row["id"]: row for row in out}
    assert len(by_id["steps"]["step_rewards"]) == 3 and len(by_id["shepherd"]["step_rewards"]) == 2
    # Defaults without token_scores: the product of the step probabilities, the mean over an outcome's tokens.
    assert by_id["steps"]["reward"] == pytest.approx(math.prod(by_id["steps"]["step_rewards"]), rel=1e-6)
    listed = by_id["best of n"]
    assert listed["best"] == max(range(4), key=lambda index: listed["rewards"][index])
    assert [steps is None for steps in listed["step_rewards"]] == [False, False, True, False]
    assert "step_rewards" not in by_id["outcome"] and "rejected_step_rewards" not in by_id["pair"]
    assert all(row["truncated"] is False for row in out)


def test_steps_are_read_where_their_separator_ends(setup):
    _, scorer, hf_model = setup
    tokenizer = scorer.model.tokenizer
    for row in ROWS:
        for response in responses(row):
            one = located(scorer, response)
            if not response.outcome and "input" not in row:
                assert all(tokenizer.decode([one.ids[position]]).endswith("\n") for position in one.positions)
            # transformers' token classifier: its softmax at the same tokens.
            with torch.no_grad():
                logits = hf_model(torch.tensor([one.ids])).logits[0]
            want = logits.softmax(-1)[one.positions, -1]
            _, got = reference(scorer, one, "mean")
            torch.testing.assert_close(torch.tensor(got), want, rtol=0, atol=1e-4)


def test_the_checkpoints_aggregation_and_separator_are_the_defaults(setup, tmp_path):
    root, scorer, _ = setup
    rows = [ROWS[0], ROWS[2], ROWS[5]]
    prm = Scorer(load_model(token_checkpoint(root / "hf", tmp_path / "prm", "prm", "min", separator="\n\n")))
    assert (prm.reading.step_aggregation, prm.reading.outcome_aggregation) == ("min", "mean")
    _, out = score_rows(prm, rows, tmp_path, target="prm.jsonl")
    assert_scores(out, expected(scorer, rows, "\n\n", step_how="min"))
    assert out[0]["reward"] == min(out[0]["step_rewards"])
    _, plain = score_rows(scorer, rows, tmp_path, target="plain.jsonl")
    assert abs(plain[0]["step_rewards"][0] - out[0]["step_rewards"][0]) > 1e-4  # the separator changed the text

    overridden = Scorer(prm.model, ScoreSettings(aggregation="last", step_separator="\n"))
    _, out = score_rows(overridden, rows, tmp_path, target="last.jsonl")
    assert_scores(out, expected(scorer, rows, step_how="last", outcome_how="last"))
    assert out[0]["reward"] == out[0]["step_rewards"][-1]

    # The export keeps how the model is read, and so does importing it back.
    exported = export_hf(tmp_path / "prm", tmp_path / "prm_hf")
    for folder in (exported, import_hf(exported, tmp_path / "prm_again")):
        assert Scorer(load_model(folder)).reading == prm.reading

    orm = Scorer(load_model(token_checkpoint(root / "hf", tmp_path / "orm", "orm", "min")))
    assert (orm.reading.step_aggregation, orm.reading.outcome_aggregation) == ("product", "min")
    _, out = score_rows(orm, rows, tmp_path, target="orm.jsonl")
    assert_scores(out, expected(scorer, rows, outcome_how="min"))


def test_truncate_prompt_moves_the_read_positions_with_the_cut(setup, tmp_path):
    _, scorer, _ = setup
    row = {"prompt": "Please think about this" + " very" * 30 + " hard.", "completions": STEPS}
    full = located(scorer, responses(row)[0])
    cutting = Scorer(scorer.model, ScoreSettings(max_length=64, length_policy="truncate_prompt"))
    _, out = score_rows(cutting, [row], tmp_path)
    cut = len(full.ids) - 64
    assert cut > 0 and out[0]["truncated"] is True
    short = Located(full.ids[cut:], [position - cut for position in full.positions], False)
    assert_scores(out, [reference(scorer, short, "product")])
    _, refused = score_rows(Scorer(scorer.model, ScoreSettings(max_length=64)), [row], tmp_path, target="e.jsonl",
                            on_invalid="skip")
    assert refused[0]["error"].startswith(f"{tmp_path / 'in.jsonl'}:1: field 'completions': ")


def test_bad_rows_name_their_file_line_and_field(setup, tmp_path):
    _, scorer, _ = setup
    rows = [ROWS[0],
            {"input_ids": [5, 6, 7]},
            {"prompt": "p", "completions": ["fine", "  "]},
            {"prompt": "p", "responses": [["a"], ["b", 3]]},
            {"prompt": "p", "completions": ["a"], "response": "b"},
            {"prompt": "p", "chosen": ["a"]},
            {"input": "no tags here"},
            {"prompt": "p", "responses": []},
            {"prompt": "p"}]
    path = write_rows(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:2: field 'input_ids': a token-head model reads"):
        score_rows(scorer, rows, tmp_path)
    summary, out = score_rows(scorer, rows, tmp_path, target="skip.jsonl", on_invalid="skip")
    assert "error" not in out[0] and out[0]["reward"] > 0
    errors = [row["error"].removeprefix(f"{path}:") for row in out[1:]]
    assert errors == [
        "2: field 'input_ids': a token-head model reads its reward at the response's tokens or step ends, which "
        "ids alone do not mark: give the texts",
        "3: field 'completions[1]': empty step",
        "4: field 'responses[1][1]': expected a string (one step), got a number",
        "5: field 'response': a row with 'completions' cannot also have 'response'",
        "6: field 'rejected': missing; a pair needs 'chosen' and 'rejected'",
        "7: field 'input': has no step tag 'ки' (data.step_tag): no step to label",
        "8: field 'responses': expected a non-empty list of responses (texts, or lists of steps)",
        "9: field 'response': missing; a token-head model scores {prompt, completions: [step, ...]}, {input} "
        "(Math-Shepherd), {prompt, response}, {messages}, {prompt, chosen, rejected} or {prompt, responses}"]
    assert summary.done == 1 and summary.problems.total == 8


def test_a_sequence_head_refuses_token_settings(tmp_path, single_rank):
    save_model("llama", tmp_path / "sequence", seed=2)
    model = load_model(tmp_path / "sequence")
    assert not model.token_head
    for settings in (ScoreSettings(aggregation="min"), ScoreSettings(step_separator="\n\n")):
        with pytest.raises(ConfigError, match="reads a token head"):
            Scorer(model, settings)


def test_transformers_on_the_exported_token_classifier_agrees(setup, tmp_path):
    root, scorer, _ = setup
    checkpoint = token_checkpoint(root / "hf", tmp_path / "checkpoint")
    exported = export_hf(checkpoint, tmp_path / "exported")
    model = transformers.AutoModelForTokenClassification.from_pretrained(exported).eval()
    _, out = score_rows(Scorer(load_model(checkpoint)), ROWS, tmp_path)
    scored = [one for row in out for one in written(row)]
    found = [located(scorer, response) for row in ROWS for response in responses(row)]
    for (reward, steps), one in zip(scored, found):
        with torch.no_grad():
            probabilities = model(torch.tensor([one.ids])).logits[0].softmax(-1)[one.positions, -1]
        want = probabilities.tolist() if steps is not None else None
        if steps is not None:
            torch.testing.assert_close(torch.tensor(steps), torch.tensor(want), rtol=0, atol=1e-4)
            assert reward == pytest.approx(float(probabilities.prod()), abs=1e-4)
        else:
            assert reward == pytest.approx(float(probabilities.mean()), abs=1e-4)


@pytest.mark.slow
def test_torchrun_tp2_equals_one_process(setup, tmp_path):
    root, scorer, _ = setup
    checkpoint = token_checkpoint(root / "hf", tmp_path / "checkpoint", "prm", "product", separator=" ;\n")
    rows = ROWS + [{"prompt": "Count", "completions": ["one two" * n] * n} for n in range(1, 6)]
    settings = ScoreSettings(aggregation="min", step_separator="\n")
    _, single = score_rows(Scorer(load_model(checkpoint), settings), rows, tmp_path, target="single.jsonl")
    output = tmp_path / "tp2.jsonl"
    result = torchrun(2, REPO / "tools" / "score_rm.py", "--model", str(checkpoint), "--tp", "2", "--aggregation",
                      "min", "--step-separator", "\n", "--input", str(tmp_path / "in.jsonl"), "--output", str(output),
                      "--chunk-rows", "5", "--batching", "pack")
    assert result.stdout.strip().startswith(f"scored {len(rows)} rows, 0 invalid; ")
    assert "token head: steps: min of step probabilities, separator '\\n'" in result.stderr
    parallel = read_rows(output)
    assert [row["id"] if "id" in row else row["prompt"] for row in parallel] == \
        [row["id"] if "id" in row else row["prompt"] for row in single]
    assert_scores(parallel, [one for row in single for one in written(row)])
    assert_scores(single, expected(scorer, rows, step_how="min", outcome_how="min"))


def test_eval_rm_reads_a_token_head_as_score_rm_reads_each_response(setup, tmp_path):
    from megatron_rm.scoring.evaluation import evaluate_file

    _, scorer, _ = setup
    pairs = [{"prompt": "What is 2+3?", "chosen": " It is 5.", "rejected": " It is 6.", "subset": "math"},
             {"prompt": "Pick a colour.", "chosen": " red", "rejected": " green and blue", "subset": "chat"},
             {"prompt": "Count.", "responses": [" one two", " two", " three"], "ranking": [2, 0, 1]}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in pairs))
    report, counts = evaluate_file(str(path), scorer)
    assert counts["evaluated"] == 3 and counts["invalid"] == 0
    # The reference: each response scored as an outcome by score_rm's reading, by hand.
    right = []
    for row in pairs:
        texts = [row["chosen"], row["rejected"]] if "chosen" in row else [row["responses"][i] for i in row["ranking"]]
        rewards = [expected(scorer, [{"prompt": row["prompt"], "response": text}])[0][0] for text in texts]
        right += [better > worse for i, better in enumerate(rewards) for worse in rewards[i + 1:]]
    assert report.to_dict()["overall"]["pairs"] == len(right)
    assert report.to_dict()["overall"]["accuracy"] == pytest.approx(sum(right) / len(right))
