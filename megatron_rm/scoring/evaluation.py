"""Evaluating a reward model on a preference set: every row's responses scored, then the
report (`scoring.report`: accuracy with ties wrong, margin, calibration per subset, and
RewardBench's section scores when the subsets are RewardBench's).

Rows are validated and tokenized exactly as for training (`data.rows.parse_row`, the
model's tokenizer); each response is scored as its own document, so a row's rewards are
the ones `score_rm.py` and the server give for the same texts. A token head (an outcome or
process reward model) scores each response as an outcome: the aggregate of its positive-class
probabilities over the response tokens, as `score_rm.py` reads a text. `evaluate_rows` is the
same evaluation for any model that turns a row into documents and values (a generative judge:
`judge.evaluation`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch.distributed as dist

from megatron_rm.data.records import Comparison
from megatron_rm.data.rows import Invalid, ProblemLog, RowKeys, RowProblem, decode, parse_row
from megatron_rm.data.sources import RawRow, iter_raw_rows
from megatron_rm.data.steps import LabelledSteps
from megatron_rm.data.tokenize import document_text
from megatron_rm.errors import DataError
from megatron_rm.runtime.parallel import broadcast_sequences
from megatron_rm.scoring.report import EvaluatedGroup, Report, evaluate
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.scoring.token.scores import Located, locate, read

SUBSET_KEY = "subset"


@dataclass
class EvalInput:
    """The rows of a preference set that can be scored, and a count of those that cannot."""

    sequences: list[list[int]] = field(default_factory=list)
    """Every kept row's responses, best first, back to back."""
    groups: list[tuple[str | None, int]] = field(default_factory=list)
    """Per kept row: its subset and how many responses it has."""
    rows: int = 0
    problems: ProblemLog = field(default_factory=ProblemLog)
    """Invalid rows (bad fields), by reason."""
    dropped: Counter = field(default_factory=Counter)
    """Valid rows that cannot be scored (too long under the length policy, ...), by reason."""


Documents = Callable[[RawRow], "list[list[int]] | RowProblem | str"]
"""One row of a preference set as the documents to score (a group), its problem, or why it
is dropped (a reason to count)."""


def read_preferences(path: str, scorer: Scorer, keys: RowKeys | None = None, on_invalid: str = "error",
                     chat: bool = False) -> EvalInput:
    """Parse, validate and tokenize every row of `path` (pairs or rankings, optional `subset`)."""
    return read_rows(path, partial(_responses, scorer, keys or RowKeys(), chat), on_invalid)


def _compared(raw: RawRow, keys: RowKeys) -> Comparison | RowProblem:
    parsed = parse_row(raw, keys)
    if not isinstance(parsed, RowProblem) and len(parsed.responses) < 2:
        return RowProblem(raw.location, keys.response, "wrong_type",
                          "a single response has nothing to be compared with")
    return parsed


def _responses(scorer: Scorer, keys: RowKeys, chat: bool, raw: RawRow) -> list[list[int]] | RowProblem | str:
    """A reward model's documents: each response after the prompt, best first. `chat`: as
    RewardBench's runner reads a row: the conversation (`as_conversation`) rendered by the chat
    template, then tokenized as a text, with the tokenizer's special tokens."""
    parsed = _compared(as_conversation(raw, keys) if chat else raw, keys)
    if isinstance(parsed, RowProblem):
        return parsed
    texts = [(parsed.prompt, response) for response in parsed.responses]
    if chat:
        texts = [("", document_text(scorer.model.tokenizer, *text)[0]) for text in texts]
    encoded = scorer.encoder.texts(texts)
    failed = next((one for one in encoded if one.ids is None), None)
    return failed.reason if failed is not None else [one.ids for one in encoded]


def as_conversation(raw: RawRow, keys: RowKeys) -> RawRow:
    """`raw` with a string prompt as one user turn (none when empty) and each string response as one
    assistant turn, as RewardBench's runner renders its rows (multi-turn ones too: a message list
    prompt, string responses) for a model with a chat template. A row that is not a JSON object
    is left for the parser to name."""
    try:
        fields = dict(decode(raw.payload))
    except Invalid:
        return raw
    prompt = fields.get(keys.prompt)
    if isinstance(prompt, str):
        fields[keys.prompt] = [{"role": "user", "content": prompt}] if prompt else []
    for key in (keys.chosen, keys.rejected):
        if isinstance(fields.get(key), str):
            fields[key] = [{"role": "assistant", "content": fields[key]}]
    if isinstance(fields.get(keys.responses), list):
        fields[keys.responses] = [[{"role": "assistant", "content": one}] if isinstance(one, str) else one
                                  for one in fields[keys.responses]]
    return RawRow(raw.location, fields)


def read_rows(path: str, documents: Documents, on_invalid: str = "error") -> EvalInput:
    """Every row of `path` as `documents` makes it, with its `subset`; invalid rows stop the
    evaluation unless `on_invalid` is "skip"."""
    found = EvalInput()
    for raw in iter_raw_rows(path):
        found.rows += 1
        group = documents(raw)
        if isinstance(group, RowProblem):
            found.problems.add(group)
        elif isinstance(group, str):
            found.dropped[group] += 1
        else:
            found.sequences.extend(group)
            found.groups.append((_subset(raw), len(group)))
    if found.problems.total and on_invalid == "error":
        raise DataError(found.problems.error_message(path).replace("data.on_invalid=skip", "--on-invalid skip"))
    if not found.groups:
        raise DataError(f"{path}: no row to evaluate ({found.rows} read, {found.problems.total} invalid, "
                        f"dropped: {dict(found.dropped) or 'none'})")
    return found


def _subset(raw: RawRow) -> str | None:
    value = decode(raw.payload).get(SUBSET_KEY)
    return None if value is None else str(value)


def evaluate_file(path: str, scorer: Scorer, *, on_invalid: str = "error", bins: int = 10,
                  chat: bool = False) -> tuple[Report, dict] | None:
    """The report for `path` and what was read, on rank 0 (None elsewhere). Collective: every
    rank calls it; rank 0 reads the file and hands the token ids to the others. `chat`: plain rows
    are scored as conversations (`as_conversation`)."""
    if scorer.token_head:
        if chat:
            raise DataError("--chat: a token-head model reads rows as they are")
        return _evaluate_token_head(path, scorer, on_invalid=on_invalid, bins=bins)
    # Preferences compare the first label.
    return evaluate_rows(path, partial(_responses, scorer, RowKeys(), chat),
                         lambda ids: scorer.score(ids)[:, 0].tolist(), on_invalid=on_invalid, bins=bins)


def _evaluate_token_head(path: str, scorer: Scorer, *, on_invalid: str, bins: int):
    """`evaluate_file` for a token head: each response read as an outcome (`token_scores`)."""
    located: list[Located] = []  # rank 0's documents, in the order their ids are scored

    def documents(raw: RawRow) -> list[list[int]] | RowProblem | str:
        parsed = _compared(raw, RowKeys())
        if isinstance(parsed, RowProblem):
            return parsed
        names = ["chosen", "rejected"] if len(parsed.responses) == 2 else [
            f"responses[{i}]" for i in range(len(parsed.responses))]
        try:
            found = [locate(scorer.encoder, LabelledSteps(parsed.prompt, (response,), None, "", raw.location,
                                                         (name,), outcome=True), name)
                     for response, name in zip(parsed.responses, names)]
        except Invalid as invalid:  # a response the length policy cannot keep is dropped and counted
            return invalid.reason if invalid.reason == "too_long" else RowProblem(
                raw.location, invalid.field, invalid.reason, invalid.message)
        located.extend(found)
        return [one.ids for one in found]

    def score(sequences: list[list[int]]) -> list[float]:
        logits = scorer.token_logits(sequences)  # collective; only rank 0 reads the rewards
        return [read(values, one, scorer.reading)[0] for values, one in zip(logits, located)]

    return evaluate_rows(path, documents, score, on_invalid=on_invalid, bins=bins)


def evaluate_rows(path: str, documents: Documents, score: Callable[[list[list[int]]], list], *,
                  rewards: Callable[[list], list[float]] = list, on_invalid: str = "error", bins: int = 10,
                  ties: bool = False) -> tuple[Report, dict] | None:
    """`evaluate_file` for any model: `documents` makes each row's documents (rank 0),
    `score` gives one value per document (collective) and `rewards` turns a row's values into
    its rewards, best first. `ties`: the report counts the pairs with equal rewards."""
    found, problem = None, [None]
    if dist.get_rank() == 0:
        try:
            found = read_rows(path, documents, on_invalid)
        except DataError as error:
            problem = [str(error)]
    dist.broadcast_object_list(problem, src=0)  # a message rank 0 wrote: every rank stops alike
    if problem[0] is not None:
        raise DataError(problem[0])
    values = score(broadcast_sequences(found.sequences if found else None))
    if found is None:
        return None
    evaluated, start = [], 0
    for subset, size in found.groups:
        evaluated.append(EvaluatedGroup(subset, rewards(values[start:start + size])))
        start += size
    counts = {"rows": found.rows, "evaluated": len(found.groups), "invalid": found.problems.total,
              "invalid_by_reason": dict(found.problems.counts), "dropped": dict(found.dropped)}
    return evaluate(evaluated, bins=bins, ties=ties), counts
