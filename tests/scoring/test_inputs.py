"""Scoring inputs become exactly training's ids, under an explicit length policy."""

from __future__ import annotations

import pytest

from megatron_rm.data import GroupEncoder
from megatron_rm.data.ending import Ending
from megatron_rm.data.records import Comparison
from megatron_rm.scoring.inputs import InputEncoder
from tests.data.tokenizer_variants import load_variant

PROMPT = "User: Write a numbered list of 5 colors.\nAssistant:"
RESPONSE = " 1. gray 2. blue 3. purple"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return load_variant(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def with_bos(tmp_path_factory):
    return load_variant(tmp_path_factory.mktemp("bos"), bos=True, chat=True)


def test_texts_are_the_ids_training_stores(plain):
    texts = [(PROMPT, RESPONSE), ("", "just a response"), (PROMPT * 3, RESPONSE)]
    ours = InputEncoder(plain, max_length=128).texts(texts)
    training = GroupEncoder(plain, 128, "drop").encode_comparisons(
        [Comparison(prompt, (response,), source="t") for prompt, response in texts])
    assert [one.ids for one in ours] == [documents[0] for documents, _ in training]
    assert all(one.ids[-1] == plain.eos_token_id and not one.truncated for one in ours)


def test_truncate_prompt_keeps_the_whole_response_and_its_eos(plain):
    whole = InputEncoder(plain, max_length=512).texts([(PROMPT * 4, RESPONSE)])[0].ids
    response = plain(RESPONSE, add_special_tokens=False)["input_ids"]
    cut = InputEncoder(plain, max_length=40, policy="truncate_prompt").texts([(PROMPT * 4, RESPONSE)])[0]
    assert cut.truncated and len(cut.ids) == 40
    assert cut.ids == whole[-40:] and cut.ids[-len(response) - 1:-1] == response
    assert cut.ids[-1] == plain.eos_token_id


def test_over_long_inputs_are_refused_with_the_numbers(plain):
    refused = InputEncoder(plain, max_length=20).texts([(PROMPT * 4, RESPONSE)])[0]
    assert refused.ids is None and refused.reason == "too_long"
    assert "exceed the limit of 20" in refused.error and "truncate_prompt" in refused.error
    response_only = InputEncoder(plain, max_length=6, policy="truncate_prompt").texts([(PROMPT, RESPONSE * 3)])[0]
    assert response_only.ids is None and "the response alone does not fit" in response_only.error


def test_blank_responses_are_refused(plain, with_bos):
    encoder = InputEncoder(plain, max_length=64)
    assert [one.reason for one in encoder.texts([(PROMPT, "   "), (PROMPT, "")])] == ["empty", "empty"]
    chat = InputEncoder(with_bos, max_length=64)
    empty_final = chat.messages([({"role": "user", "content": "hi"}, {"role": "assistant", "content": " "})])
    assert empty_final[0].reason == "empty"


def test_token_ids_are_scored_as_given_and_checked(plain):
    encoder = InputEncoder(plain, max_length=8)
    eos = plain.eos_token_id
    given = [[5, 6], [5, 6, eos], [5, 6, eos, eos]]
    assert [one.ids for one in encoder.token_ids(given)] == given
    bad = encoder.token_ids([[5, len(plain)], [5, True], [], list(range(1, 10))])
    assert [one.reason for one in bad] == ["bad_input_ids", "bad_input_ids", "empty", "too_long"]
    assert f"input_ids[1]={len(plain)}" in bad[0].error


def test_a_hugging_face_models_token_ids_are_read_before_trailing_pad_tokens(plain):
    """transformers reads at the last token that is not the pad token, pad == EOS included."""
    eos = plain.eos_token_id
    encoder = InputEncoder(plain, max_length=8, ending=Ending(eos=False, pad_token_id=eos))
    assert [one.ids for one in encoder.token_ids([[5, 6, eos, eos], [5, 6]])] == [[5, 6], [5, 6]]
    assert encoder.token_ids([[eos, eos]])[0].reason == "empty"


def test_a_text_that_already_starts_with_bos_gets_no_second_one(with_bos):
    encoder = InputEncoder(with_bos, max_length=128)
    plain_ids = encoder.whole_texts([PROMPT + RESPONSE])[0].ids
    decoded_ids = encoder.whole_texts(["<s>" + PROMPT + RESPONSE])[0].ids
    assert plain_ids[0] == with_bos.bos_token_id and decoded_ids == plain_ids


def test_a_conversation_scores_as_prompt_messages_plus_final_message(with_bos):
    encoder = InputEncoder(with_bos, max_length=128)
    conversation = ({"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Teal."})
    assert encoder.messages([conversation])[0].ids == encoder.texts([(conversation[:1], conversation[1:])])[0].ids
    rendered = with_bos.apply_chat_template(list(conversation), tokenize=False)
    assert encoder.messages([conversation])[0].ids[:-1] == with_bos(rendered, add_special_tokens=False)["input_ids"]
