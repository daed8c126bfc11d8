"""Chosen and rejected (and whole K-wise groups) stay in the same micro-batch on the same DP rank.

Real torchrun jobs over gloo run batching_worker.py on a data file mixing
preference pairs and 3-way rankings whose every document is unique, so each
document in a micro-batch can be traced back to its row and its place in the
row's ranking. Checked for both batching modes, across micro-batches, steps,
data-parallel ranks and tensor-parallel ranks, for training and evaluation.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

import pytest

from megatron_rm.data import Comparison, GroupEncoder, load_tokenizer
from megatron_rm.data.sampler import GroupSampler
from tests.conftest import DEMO, REPO, torchrun
from tests.distributed import batching_worker as worker

pytestmark = pytest.mark.slow  # real torchrun jobs

WORKER = REPO / "tests" / "distributed" / "batching_worker.py"
# name: (batching, tp, processes); dp = processes / tp. The *_1rank runs are this pytest
# process as a one-rank job (no torchrun start-up: megatron's import alone takes seconds).
JOBS = {"bucket": ("bucket", 1, 4), "pack": ("pack", 2, 4), "bucket_1rank": ("bucket", 1, 1),
        "pack_1rank": ("pack", 1, 1)}
DISTRIBUTED = ("bucket", "pack")
ROWS = 52
WORDS = ["mango", "apple", "grape", "cherry", "peach", "fig", "plum", "lime",
         "red", "teal", "pink", "green", "golf", "rugby", "judo", "boxing"]
RANKINGS = ([2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0])


def _response(items: int, offset: int) -> str:
    return " " + " ".join(f"{i + 1}. {WORDS[(offset + i) % len(WORDS)]}" for i in range(items))


def _rows() -> list[dict]:
    """Pairs, with every fourth row a 3-way ranking; the prompt's list number makes each row unique."""
    rows = []
    for r in range(ROWS):
        items = 1 + (3 * r) % 8
        prompt = f"User: Name {items} things for list {r // 8 + 1}{r % 8 + 1}.\nAssistant:"
        counts = [items, items % 8 + 1, (items + 1) % 8 + 1]
        if r % 4 == 3:
            rows.append({"prompt": prompt, "responses": [_response(n, r) for n in counts],
                         "ranking": RANKINGS[(r // 4) % len(RANKINGS)]})
        else:
            rows.append({"prompt": prompt, "chosen": _response(counts[0], r),
                         "rejected": _response(counts[1], r)})
    return rows


def _best_first(row: dict) -> tuple[str, ...]:
    if "responses" in row:
        return tuple(row["responses"][i] for i in row["ranking"])
    return row["chosen"], row["rejected"]


@pytest.fixture(scope="module")
def expected() -> dict:
    """Every row's documents as training must see them: ids best first, and each document's (row, place)."""
    encoder = GroupEncoder(load_tokenizer(DEMO / "tokenizer"), worker.MAX_LENGTH, "drop")
    rows = _rows()
    comparisons = [Comparison(row["prompt"], _best_first(row), f"row {r}") for r, row in enumerate(rows)]
    groups = []
    for r, (documents, dropped) in enumerate(encoder.encode_comparisons(comparisons)):
        assert dropped is None, f"row {r} would be dropped: {dropped}"
        assert all(encoder.tokenizer.unk_token_id not in d for d in documents), f"row {r} has unknown words"
        groups.append([tuple(d) for d in documents])
    where = {doc: (r, place) for r, documents in enumerate(groups) for place, doc in enumerate(documents)}
    assert len(where) == sum(len(g) for g in groups)  # every document is unique
    assert Counter(len(g) for g in groups) == {2: 39, 3: 13}
    return {"rows": rows, "groups": groups, "where": where,
            "longest": [max(len(d) for d in g) for g in groups]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, expected, single_rank) -> dict:
    root = tmp_path_factory.mktemp("pair_integrity")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in expected["rows"]))
    results = {}
    distributed = [[JOBS[name][0], str(JOBS[name][1]), str(root / name)] for name in DISTRIBUTED]
    assert {JOBS[name][2] for name in DISTRIBUTED} == {4}
    # One 4-process job runs both layouts one after the other (start-up dominates the time).
    (batching, tp, out), *rest = distributed
    torchrun(4, WORKER, "--data", str(data), "--out", out, "--batching", batching, "--tp", tp,
             *[arg for run in rest for arg in ("--then", *run)], timeout=300)
    for name, (batching, _tp, nproc) in JOBS.items():
        out = root / name
        if nproc == 1:
            results[name] = [worker.collect(worker.config(data, out, batching), single_rank)]
        else:
            results[name] = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
        assert len(results[name]) == nproc, f"{name}: {len(results[name])} of {nproc} ranks reported"
    return results


def _sampler(batching: str, expected: dict) -> GroupSampler:
    """The global batches, computed here from the texts' lengths (the store keeps row order)."""
    window = worker.DataConfig().bucket_window if batching == "bucket" else 0
    return GroupSampler(expected["longest"], worker.GLOBAL_BATCH, worker.SEED, window)


def _groups_of(micro: dict, expected: dict, what: str) -> list[int]:
    """The rows of a micro-batch's groups, in layout order, after checking that every group is
    whole, best first, and compared pair by pair (all K-choose-2 pairs, nothing else)."""
    where, groups = expected["where"], expected["groups"]
    documents = [tuple(d) for d in micro["documents"]]
    assert documents, f"{what}: an empty micro-batch"
    rows, expected_pairs, i = [], set(), 0
    while i < len(documents):
        assert documents[i] in where, f"{what}: document {i} is not a document of the data"
        row, place = where[documents[i]]
        group = groups[row]
        assert place == 0, f"{what}: row {row}'s document {place} starts a group (split or reordered)"
        got = documents[i: i + len(group)]
        assert got == group, (f"{what}: row {row}'s {len(group)} documents are not together best first "
                              f"(found {[where.get(d) for d in got]})")
        expected_pairs |= {(i + better, i + worse) for better, worse in combinations(range(len(group)), 2)}
        rows.append(row)
        i += len(group)
    pairs = [tuple(p) for p in micro["comparisons"]]
    assert len(pairs) == len(set(pairs)) and set(pairs) == expected_pairs, (
        f"{what}: comparisons {pairs}, expected the groups' (better, worse) pairs {sorted(expected_pairs)}")
    return rows


def _check_layout(micro: dict, batching: str, what: str) -> None:
    """Each row: documents numbered 1..n back to back from the start, then only padding."""
    for r, (ids, mask) in enumerate(zip(micro["input_ids"], micro["attention_mask"])):
        numbers = [m for m in mask if m]
        assert mask[: len(numbers)] == numbers, f"{what} row {r}: padding before a document ({mask})"
        runs = [m for k, m in enumerate(numbers) if k == 0 or numbers[k - 1] != m]
        assert runs == list(range(1, len(runs) + 1)), f"{what} row {r}: documents numbered {runs}"
        assert len(ids) % worker.DataConfig().pad_to_multiple_of == 0
        if batching == "bucket":
            assert runs == [1], f"{what} row {r}: bucket rows hold one document, found {len(runs)}"
    if batching == "pack":
        assert len(micro["input_ids"]) == 1, f"{what}: a packed micro-batch is one row"


def _train_groups(rank: dict, batching: str, expected: dict, name: str) -> list[list[list[int]]]:
    """Per step, per micro-batch: the rows of its groups (checked whole)."""
    steps = []
    for step, micros in enumerate(rank["steps"]):
        assert micros, f"{name} rank {rank['layout']['rank']} step {step}: no micro-batches"
        found = []
        for m, micro in enumerate(micros):
            what = f"{name} rank {rank['layout']['rank']} step {step} micro-batch {m}"
            _check_layout(micro, batching, what)
            found.append(_groups_of(micro, expected, what))
        steps.append(found)
    return steps


def _by_dp_rank(ranks: list[dict]) -> dict[int, dict]:
    """One rank per data-parallel rank (TP rank 0): what its DP rank trains on."""
    return {r["layout"]["dp_rank"]: r for r in ranks if r["layout"]["tp_rank"] == 0}


def test_every_rank_reports_its_place(runs):
    for name, (_, tp, nproc) in JOBS.items():
        layouts = sorted((r["layout"]["dp_rank"], r["layout"]["tp_rank"]) for r in runs[name])
        dp = nproc // tp
        assert layouts == [(d, t) for d in range(dp) for t in range(tp)], name
        for rank in runs[name]:
            assert (rank["layout"]["dp"], rank["layout"]["tp"]) == (dp, tp)
            assert rank["num_groups"] == ROWS and rank["steps_per_epoch"] == ROWS // worker.GLOBAL_BATCH
            assert len(rank["steps"]) == worker.STEPS


@pytest.mark.parametrize("name", list(JOBS))
def test_groups_stay_whole_in_one_micro_batch_best_first(runs, expected, name):
    batching = JOBS[name][0]
    sizes = Counter()
    for rank in runs[name]:
        for step in _train_groups(rank, batching, expected, name):
            for micro in step:
                sizes.update(len(expected["groups"][row]) for row in micro)
                if batching == "bucket":
                    assert len(micro) == worker.MICRO_BATCH
    # Both kinds of group went through (the checks above ran on something).
    assert sizes[2] > 0 and sizes[3] > 0, sizes


@pytest.mark.parametrize("name", DISTRIBUTED)
def test_tensor_parallel_ranks_of_one_dp_rank_get_identical_micro_batches(runs, name):
    by_dp: dict[int, list[dict]] = {}
    for rank in runs[name]:
        by_dp.setdefault(rank["layout"]["dp_rank"], []).append(rank)
    for dp_rank, ranks in by_dp.items():
        assert len(ranks) == JOBS[name][1]
        for other in ranks[1:]:
            assert other["steps"] == ranks[0]["steps"], f"{name} dp rank {dp_rank}: TP ranks differ"
            assert other["eval"] == ranks[0]["eval"], f"{name} dp rank {dp_rank}: TP ranks differ in eval"


@pytest.mark.parametrize("name", list(JOBS))
def test_dp_ranks_share_out_exactly_the_samplers_global_batch(runs, expected, name):
    batching, tp, nproc = JOBS[name]
    dp = nproc // tp
    sampler = _sampler(batching, expected)
    share = worker.GLOBAL_BATCH // dp
    per_dp = {d: _train_groups(rank, batching, expected, name) for d, rank in _by_dp_rank(runs[name]).items()}
    assert sorted(per_dp) == list(range(dp))
    seen_this_epoch: set[int] = set()
    for step in range(worker.STEPS):
        if step % sampler.steps_per_epoch == 0:
            seen_this_epoch = set()
        global_batch = [int(g) for g in sampler.global_batch(step)]
        assert len(set(global_batch)) == worker.GLOBAL_BATCH
        ordered = []
        for d in range(dp):
            rows = [row for micro in per_dp[d][step] for row in micro]
            assert len(rows) == len(set(rows)), f"{name} step {step} dp {d}: a group appears twice"
            # A rank's share is its contiguous slice of the global batch.
            assert sorted(rows) == sorted(global_batch[d * share: (d + 1) * share]), f"{name} step {step} dp {d}"
            ordered.extend(rows)
        counts = Counter(ordered)
        assert all(c == 1 for c in counts.values()), f"{name} step {step}: groups on two DP ranks {counts}"
        assert set(ordered) == set(global_batch), f"{name} step {step}"
        if batching == "bucket":
            # Micro-batches take the share's groups in order.
            assert ordered == global_batch, f"{name} step {step}"
        assert not seen_this_epoch & set(ordered), f"{name} step {step}: a group repeats within an epoch"
        seen_this_epoch |= set(ordered)


@pytest.mark.parametrize("name", DISTRIBUTED)
def test_global_order_does_not_depend_on_the_dp_size(runs, expected, name):
    single = _train_groups(runs[f"{name}_1rank"][0], name, expected, f"{name}_1rank")
    per_dp = _by_dp_rank(runs[name])
    spread = [_train_groups(per_dp[d], name, expected, name) for d in sorted(per_dp)]
    for step in range(worker.STEPS):
        alone = [row for micro in single[step] for row in micro]
        together = [row for rank in spread for micro in rank[step] for row in micro]
        assert len(alone) == worker.GLOBAL_BATCH
        if name == "bucket":
            assert together == alone, f"step {step}"
        else:  # packing reorders groups within a rank's share
            assert sorted(together) == sorted(alone), f"step {step}"


@pytest.mark.parametrize("name", [n for n in JOBS if JOBS[n][0] == "pack"])
def test_packed_micro_batches_fit_their_token_budget(runs, expected, name):
    budget = 2 * worker.MICRO_BATCH * worker.MAX_LENGTH  # data.pack_length unset
    packed = 0
    for rank in runs[name]:
        for micros in rank["steps"]:
            for micro in micros:
                tokens = sum(1 for m in micro["attention_mask"][0] if m)
                assert tokens <= budget
                assert tokens == sum(len(d) for d in micro["documents"])
                packed = max(packed, len(_groups_of(micro, expected, name)))
    assert packed > 1  # packing does put several groups in a row


@pytest.mark.parametrize("name", list(JOBS))
def test_evaluation_covers_each_held_out_group_once_whole(runs, expected, name):
    batching, tp, nproc = JOBS[name]
    dp = nproc // tp
    per_dp = _by_dp_rank(runs[name])
    rows = []
    for d in range(dp):
        rank = per_dp[d]
        assert rank["eval"], f"{name} dp {d}: no evaluation micro-batches"
        for m, micro in enumerate(rank["eval"]):
            what = f"{name} dp {d} eval micro-batch {m}"
            _check_layout(micro, batching, what)
            rows.extend(_groups_of(micro, expected, what))
    total = per_dp[0]["eval_groups"]
    assert 0 < total < ROWS
    assert len(rows) == total and len(set(rows)) == total, f"{name}: {Counter(rows).most_common(3)}"
    sizes = Counter(len(expected["groups"][row]) for row in rows)
    assert sizes[2] > 0 and sizes[3] > 0, sizes
