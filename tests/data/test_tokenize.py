"""The one tokenization path: EOS once, chat templates, pad/EOS variants, length policy."""

import pytest

from megatron_rm.data.records import Comparison
from megatron_rm.data.tokenize import GroupEncoder, encode, fingerprint, fit, load_tokenizer, pad_id
from megatron_rm.errors import DataError
from tests.conftest import DEMO
from tests.data.tokenizer_variants import load_variant

PROMPT = "User: Name 3 fruits.\nAssistant:"


@pytest.fixture(scope="module")
def demo():
    return load_tokenizer(DEMO / "tokenizer")


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return load_variant(tmp_path_factory.mktemp("chat"), pad=None, bos=True, chat=True)


def pair(chosen=" 1. fig 2. lime 3. kiwi", rejected=" 1. fig 2. lime", prompt=PROMPT):
    return Comparison(prompt, (chosen, rejected), source="test")


def test_plain_text_gets_one_eos_and_the_tokenizer_special_tokens(demo):
    ids = encode(demo, PROMPT, " 1. fig").ids
    assert ids == demo(PROMPT + " 1. fig")["input_ids"] + [demo.eos_token_id]
    for text in (" 1. fig</s>", " 1. fig</s></s>"):
        assert encode(demo, PROMPT, text).ids == ids


def test_prompt_tokens_are_the_shared_prefix(demo):
    encoded = encode(demo, PROMPT, " 1. fig")
    prompt_ids = demo(PROMPT)["input_ids"]
    assert encoded.prompt_tokens == len(prompt_ids)
    assert encoded.ids[: encoded.prompt_tokens] == prompt_ids


def test_training_and_scoring_give_the_same_ids(chat):
    """A pair encoded for training and each text encoded alone for scoring agree id for id."""
    encoder = GroupEncoder(chat, max_length=64, truncation="drop")
    for prompt, chosen, rejected in (
        (PROMPT, " 1. fig 2. lime", " 1. fig"),
        (({"role": "user", "content": "Name 2 fruits."},),
         ({"role": "assistant", "content": "1. fig 2. lime"},), ({"role": "assistant", "content": "1. fig"},)),
    ):
        documents, reason = encoder.encode_comparison(Comparison(prompt, (chosen, rejected), source="t"))
        assert reason is None
        assert documents == [encoder.encode_text(prompt, chosen), encoder.encode_text(prompt, rejected)]


def test_chat_template_renders_messages(chat):
    prompt = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name 2 fruits."})
    response = ({"role": "assistant", "content": "1. fig 2. lime"},)
    encoded = encode(chat, prompt, response)
    rendered = chat.apply_chat_template([*prompt, *response], tokenize=False)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    # The template writes its own special tokens: no BOS is added on top of it.
    assert encoded.ids == chat(rendered, add_special_tokens=False)["input_ids"] + [chat.eos_token_id]
    assert encoded.ids[0] == chat.convert_tokens_to_ids("<|im_start|>")
    generation_prompt = chat.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    assert encoded.prompt_tokens == len(chat(generation_prompt, add_special_tokens=False)["input_ids"])


def test_messages_need_a_chat_template(demo):
    with pytest.raises(DataError, match="chat template"):
        encode(demo, ({"role": "user", "content": "hi"},), ({"role": "assistant", "content": "yo"},))


@pytest.mark.parametrize("pad", ["</s>", None])
def test_pad_equal_to_eos_or_missing(tmp_path, pad):
    tokenizer = load_variant(tmp_path, pad=pad)
    assert tokenizer.pad_token_id == (tokenizer.eos_token_id if pad else None)
    assert pad_id(tokenizer) == tokenizer.eos_token_id
    ids = encode(tokenizer, PROMPT, " 1. fig").ids
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id


def test_drop_policy_counts_too_long(demo):
    full = len(encode(demo, PROMPT, " 1. fig 2. lime 3. kiwi").ids)
    encoder = GroupEncoder(demo, max_length=full - 1, truncation="drop")
    assert encoder.encode_comparison(pair()) == (None, "too_long")
    assert GroupEncoder(demo, max_length=full, truncation="drop").encode_comparison(pair())[1] is None


def test_truncate_prompt_keeps_bos_response_and_eos(tmp_path):
    tokenizer = load_variant(tmp_path, bos=True)
    encoded = encode(tokenizer, PROMPT, " 1. fig 2. lime")
    response = encoded.ids[encoded.prompt_tokens:]
    max_length = len(encoded.ids) - 3
    ids, status = fit(encoded, max_length, "truncate_prompt", tokenizer.bos_token_id)
    assert status == "truncated" and len(ids) == max_length
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == encoded.ids[4:]
    assert ids[-len(response):] == response and ids[-1] == tokenizer.eos_token_id
    too_short = len(response)  # BOS + whole response cannot fit
    assert fit(encoded, too_short, "truncate_prompt", tokenizer.bos_token_id) == (None, "response_too_long")


def test_truncate_response_keeps_the_start_and_ends_with_eos(demo):
    encoded = encode(demo, PROMPT, " 1. fig 2. lime 3. kiwi")
    ids, status = fit(encoded, encoded.prompt_tokens + 3, "truncate_response", None)
    assert status == "truncated"
    assert ids == encoded.ids[: encoded.prompt_tokens + 2] + [demo.eos_token_id]
    assert fit(encoded, encoded.prompt_tokens, "truncate_response", None) == (None, "prompt_too_long")


def test_pair_identical_after_truncation_is_dropped(demo):
    # The responses differ only after their shared start, which is all that survives.
    shared = encode(demo, PROMPT, " 1. fig 2. lime").prompt_tokens + 4
    encoder = GroupEncoder(demo, max_length=shared, truncation="truncate_response")
    assert encoder.encode_comparison(pair(" 1. fig 2. lime 3. kiwi", " 1. fig 2. lime 3. plum")) == (
        None, "identical_after_truncation")


def test_texts_equal_after_eos_collapse_are_dropped(demo):
    encoder = GroupEncoder(demo, max_length=64, truncation="drop")
    assert encoder.encode_comparison(pair(" 1. fig", " 1. fig</s>")) == (None, "identical_tokens")


def test_unknown_truncation_is_refused(demo):
    with pytest.raises(DataError, match="data.truncation"):
        GroupEncoder(demo, 64, "middle")


def test_fingerprint_tells_tokenizers_apart(tmp_path, demo):
    assert fingerprint(demo) == fingerprint(load_tokenizer(DEMO / "tokenizer"))
    assert fingerprint(demo) != fingerprint(load_variant(tmp_path / "bos", bos=True))
    assert fingerprint(demo) != fingerprint(load_variant(tmp_path / "chat", chat=True))
