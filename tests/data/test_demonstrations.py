"""Supervised examples: which rows give one, what is wrong with the others, and each document's
prompt length through tokenization, truncation and the token store."""

from __future__ import annotations

import json

import pytest

from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.data.rows import parse_demonstration
from megatron_rm.data.sources import RawRow
from megatron_rm.data.store import GroupStore
from megatron_rm.data.tokenize import encode, load_tokenizer
from megatron_rm.errors import DataError
from tests.data.test_prepare import TOKENIZER, write_jsonl
from tests.data.tokenizer_variants import save_variant


def parse(row):
    return parse_demonstration(RawRow("d.jsonl:7", json.dumps(row).encode()))


def test_each_row_shape_gives_its_one_response():
    assert parse({"prompt": "Q:", "response": " A"}).responses == (" A",)
    preference = parse({"prompt": "Q:", "chosen": " good", "rejected": " bad", "margin": 2.0})
    assert (preference.prompt, preference.responses, preference.margin) == ("Q:", (" good",), None)
    ranked = parse({"prompt": "Q:", "responses": [" b", " a", " c"], "ranking": [1, 0, 2]})
    assert ranked.responses == (" a",)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "and?"}, {"role": "assistant", "content": "bye"}]
    conversation = parse({"messages": turns})
    assert conversation.prompt == tuple(turns[:3]) and conversation.responses == (tuple(turns[3:]),)


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "Q:"}, "response", "missing; an example needs 'response'"),
    ({"prompt": "Q:", "response": "  "}, "response", "empty response"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages[0].role",
     "is 'user': the final message is the response to learn"),
    ({"messages": [{"role": "assistant", "content": " "}]}, "messages[0].content", "the final message is empty"),
    ({"messages": [{"role": "user", "content": "hi"}], "prompt": "x"}, "prompt", "cannot also have 'prompt'"),
    ({"messages": "hi"}, "messages", "expected a list of messages"),
    ({"prompt": "Q:", "chosen": " a"}, "rejected", "missing"),
])
def test_a_row_without_a_response_to_learn_names_file_line_and_field(row, field, message):
    problem = parse(row)
    assert problem.field == field and message in problem.message
    assert str(problem).startswith(f"d.jsonl:7: field '{field}': ")


def test_the_store_keeps_each_prompt_length_through_truncation(tmp_path):
    tokenizer = load_tokenizer(TOKENIZER)
    prompt, response = "User: Name 4 fruits, then 4 more fruits.\nAssistant:", " 1. fig 2. lime 3. plum 4. pear"
    full = encode(tokenizer, prompt, response)
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": prompt, "chosen": response, "rejected": " no"},
                                             {"prompt": "", "response": response}])
    cut = 4
    for truncation, prompt_tokens in (("drop", full.prompt_tokens), ("truncate_prompt", full.prompt_tokens - cut)):
        length = len(full.ids) - (cut if truncation != "drop" else 0)
        folder = tmp_path / truncation
        meta = build_store([data], folder, Settings(TOKENIZER, length, truncation, grouping="demonstrations"),
                           progress_every=0)
        store = GroupStore(folder)
        assert meta["grouping"] == "demonstrations" and list(store.group_sizes()) == [1, 1]
        assert store.prompt_lengths(0) == [prompt_tokens] and len(store.documents(0)[0]) == length
        assert store.documents(0)[0][prompt_tokens:].tolist() == full.ids[full.prompt_tokens:]
    # truncate_response keeps the whole prompt and cuts the response's tail (its EOS stays).
    build_store([data], tmp_path / "tail", Settings(TOKENIZER, len(full.ids) - cut, "truncate_response",
                                                    grouping="demonstrations"), progress_every=0)
    assert GroupStore(tmp_path / "tail").prompt_lengths(0) == [full.prompt_tokens]


def test_conversations_need_a_chat_template_and_mask_every_earlier_turn(tmp_path):
    chat = str(save_variant(tmp_path / "chat", chat=True))
    turns = [{"role": "user", "content": "Name 2 fruits."}, {"role": "assistant", "content": "fig, lime"}]
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": turns}])
    build_store([data], tmp_path / "store", Settings(chat, 128, "drop", grouping="demonstrations"),
                progress_every=0)
    store = GroupStore(tmp_path / "store")
    expected = encode(load_tokenizer(chat), tuple(turns[:1]), tuple(turns[1:]))
    assert store.documents(0)[0].tolist() == expected.ids and store.prompt_lengths(0) == [expected.prompt_tokens]
    assert 0 < expected.prompt_tokens < len(expected.ids) - 2
    with pytest.raises(DataError, match="chat template"):
        build_store([data], tmp_path / "plain", Settings(TOKENIZER, 128, "drop", grouping="demonstrations"),
                    progress_every=0)
