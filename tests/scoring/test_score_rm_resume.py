"""score_rm's job stopping and going on: invalid rows stop it at the chunk that holds them,
naming file:line and field; a rerun after an interruption (a torn last line, a Parquet
output's sidecar) ends with the file a clean run writes; a complete output is left alone."""

from __future__ import annotations

import pytest

from megatron_rm.errors import DataError, UsageError
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer
from tests.scoring.score_rm_files import read_rows, run_job, save_scoring_model, write_rows

ROWS = [{"n": n, "prompt": "count", "response": " one two" * (1 + n % 4)} for n in range(8)]
ROWS[5] = {"n": 5, "prompt": "pick", "responses": [" a", " b c"]}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("score_rm_resume") / "hf"
    save_scoring_model(folder)
    return Scorer(load_model(folder))


def test_error_mode_stops_at_the_chunk_with_invalid_rows(scorer, tmp_path):
    rows = ROWS[:4] + [{"prompt": "p", "chosen": " a"}, {"prompt": "p", "responses": [" a", 3]}] + ROWS[4:]
    path = write_rows(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError) as error:
        run_job(scorer, path, tmp_path / "out.jsonl", chunk_rows=4)
    assert str(error.value).splitlines() == [
        f"{path} (rows 5-8; rows 1-4 are in {tmp_path / 'out.jsonl'} and a rerun resumes after them): "
        "2 invalid row(s):",
        f"  {path}:5: field 'rejected': missing",
        f"  {path}:6: field 'responses[1]': expected a string or a list of messages, got a number",
        "  by reason: missing_field 1, wrong_type 1",
        "pass --on-invalid skip to write them with an 'error' field instead"]
    assert [row["n"] for row in read_rows(tmp_path / "out.jsonl")] == [0, 1, 2, 3]


def test_resume_after_a_torn_line_ends_like_a_clean_run(scorer, tmp_path, capsys):
    path = write_rows(tmp_path / "in.jsonl", ROWS)
    clean, resumed = tmp_path / "clean.jsonl", tmp_path / "resumed.jsonl"
    run_job(scorer, path, clean, chunk_rows=3)
    lines = clean.read_bytes().splitlines(keepends=True)
    resumed.write_bytes(b"".join(lines[:6]) + lines[6][:20])  # killed while writing row 7
    summary, _ = run_job(scorer, path, resumed, chunk_rows=3)
    assert "resuming: 6 rows already in" in capsys.readouterr().err
    assert (summary.skipped, summary.done) == (6, 2)
    assert resumed.read_bytes() == clean.read_bytes()
    summary, _ = run_job(scorer, path, resumed)
    assert summary.complete and summary.skipped == len(ROWS)
    assert resumed.read_bytes() == clean.read_bytes()


def test_parquet_output_resumes_from_its_sidecar(scorer, tmp_path):
    path = write_rows(tmp_path / "in.jsonl", ROWS)
    clean, resumed = tmp_path / "clean.parquet", tmp_path / "resumed.parquet"
    run_job(scorer, path, clean, chunk_rows=4)
    sidecar = tmp_path / "resumed.parquet.partial.jsonl"
    write_rows(sidecar, read_rows(clean)[:4])
    with sidecar.open("a") as file:
        file.write('{"n": 4, "prom')
    summary, rows = run_job(scorer, path, resumed, chunk_rows=4)
    assert summary.skipped == 4 and not sidecar.exists()
    assert rows == read_rows(clean)
    summary, _ = run_job(scorer, path, resumed)
    assert summary.complete and summary.skipped == len(ROWS)


def test_an_output_of_another_input_is_refused(scorer, tmp_path):
    longer = write_rows(tmp_path / "longer.jsonl", ROWS + ROWS)
    run_job(scorer, longer, tmp_path / "out.jsonl")
    with pytest.raises(DataError, match="holds 16 rows but .* has only 8: is it the output of another input"):
        run_job(scorer, write_rows(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl")
    with pytest.raises(UsageError, match="expected a .jsonl or .parquet file"):
        run_job(scorer, tmp_path / "in.jsonl", tmp_path / "out.csv")
