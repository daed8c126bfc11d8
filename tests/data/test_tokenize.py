"""The one tokenization path: EOS once, chat templates, pad/EOS variants, length policy, texts for scoring."""

import pytest

from megatron_rm.data.ending import Ending, ending_with_eos
from megatron_rm.data.records import Comparison
from megatron_rm.data.tokenize import GroupEncoder, encode, encode_many, fingerprint, fit, load_tokenizer, pad_id
from megatron_rm.errors import DataError
from megatron_rm.scoring.inputs import InputEncoder
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


def test_plain_text_ends_as_its_eos_ending_tokenizer_ends_it(demo, tmp_path):
    """The EOS is appended as `ending_with_eos`'s post-processor appends it, to a text that ends in
    one too; and with that tokenizer itself, nothing more is appended."""
    ending = ending_with_eos(demo)
    for text in (" 1. fig", " 1. fig</s>", " 1. fig</s></s>"):
        ids = encode(demo, PROMPT, text).ids
        assert ids == demo(PROMPT + text)["input_ids"] + [demo.eos_token_id] == ending(PROMPT + text)["input_ids"]
        assert encode(ending, PROMPT, text).ids == ids
    with_bos = load_variant(tmp_path / "bos", bos=True)
    assert encode(with_bos, PROMPT, " 1. fig").ids == ending_with_eos(with_bos)(PROMPT + " 1. fig")["input_ids"]


def test_a_hugging_face_models_text_gets_nothing_appended(demo):
    """Read before trailing pad tokens, as transformers reads: here pad == EOS."""
    own = Ending(eos=False, pad_token_id=demo.eos_token_id)
    assert encode(demo, PROMPT, " 1. fig", own).ids == demo(PROMPT + " 1. fig")["input_ids"]
    assert encode(demo, PROMPT, " 1. fig</s>", own).ids == demo(PROMPT + " 1. fig")["input_ids"]


def test_prompt_tokens_are_the_shared_prefix(demo):
    encoded = encode(demo, PROMPT, " 1. fig")
    prompt_ids = demo(PROMPT)["input_ids"]
    assert encoded.prompt_tokens == len(prompt_ids)
    assert encoded.ids[: encoded.prompt_tokens] == prompt_ids


def test_training_and_scoring_give_the_same_ids(chat):
    """A pair encoded for training and each text encoded alone for scoring agree id for id."""
    training = GroupEncoder(chat, max_length=64, truncation="drop")
    scoring = InputEncoder(chat, max_length=64)
    for prompt, chosen, rejected in (
        (PROMPT, " 1. fig 2. lime", " 1. fig"),
        (({"role": "user", "content": "Name 2 fruits."},),
         ({"role": "assistant", "content": "1. fig 2. lime"},), ({"role": "assistant", "content": "1. fig"},)),
    ):
        documents, reason = training.encode_comparison(Comparison(prompt, (chosen, rejected), source="t"))
        assert reason is None
        assert [one.ids for one in scoring.texts([(prompt, chosen), (prompt, rejected)])] == documents


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
    ids, status = fit(encoded, max_length, "truncate_prompt", tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert status == "truncated" and len(ids) == max_length
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == encoded.ids[4:]
    assert ids[-len(response):] == response and ids[-1] == tokenizer.eos_token_id
    too_short = len(response)  # BOS + whole response cannot fit
    assert fit(encoded, too_short, "truncate_prompt", tokenizer.bos_token_id,
               tokenizer.eos_token_id) == (None, "response_too_long")


def test_truncate_response_keeps_the_start_and_ends_with_eos(demo):
    encoded = encode(demo, PROMPT, " 1. fig 2. lime 3. kiwi")
    ids, status = fit(encoded, encoded.prompt_tokens + 3, "truncate_response", None, demo.eos_token_id)
    assert status == "truncated"
    assert ids == encoded.ids[: encoded.prompt_tokens + 2] + [demo.eos_token_id]
    assert fit(encoded, encoded.prompt_tokens, "truncate_response", None,
               demo.eos_token_id) == (None, "prompt_too_long")


def test_pair_identical_after_truncation_is_dropped(demo):
    # The responses differ only after their shared start, which is all that survives.
    shared = encode(demo, PROMPT, " 1. fig 2. lime").prompt_tokens + 4
    encoder = GroupEncoder(demo, max_length=shared, truncation="truncate_response")
    assert encoder.encode_comparison(pair(" 1. fig 2. lime 3. kiwi", " 1. fig 2. lime 3. plum")) == (
        None, "identical_after_truncation")


def test_texts_with_identical_ids_are_dropped(demo):
    encoder = GroupEncoder(demo, max_length=64, truncation="drop")
    assert encoder.encode_comparison(pair(" 1. fig", " 1. fig")) == (None, "identical_tokens")


def test_unknown_truncation_is_refused(demo):
    with pytest.raises(DataError, match="data.truncation"):
        GroupEncoder(demo, 64, "middle")


def test_fingerprint_tells_tokenizers_apart(tmp_path, demo):
    assert fingerprint(demo) == fingerprint(load_tokenizer(DEMO / "tokenizer"))
    assert fingerprint(demo) != fingerprint(load_variant(tmp_path / "bos", bos=True))
    assert fingerprint(demo) != fingerprint(load_variant(tmp_path / "chat", chat=True))


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def expected_ids(tokenizer, texts, max_length):
    """`encode_many` + `fit` one text at a time: what batched scoring must agree with."""
    return [fit(encode_many(tokenizer, [text])[0], max_length, "drop", tokenizer.bos_token_id,
                tokenizer.eos_token_id)[0] for text in texts]


def test_scoring_keeps_order_and_names_each_refusal(demo):
    short, long = " 1. fig", " 1. fig 2. lime 3. kiwi 4. plum 5. pear"
    limit = len(encode(demo, PROMPT, long).ids) - 1
    texts = [(PROMPT, short), (PROMPT, ""), (PROMPT, long), ("", " 2. lime"), (PROMPT, " \n\t"), (PROMPT, short)]
    scored = InputEncoder(demo, max_length=limit).texts(texts)
    assert [one.reason for one in scored] == [None, "empty", "too_long", None, "empty", None]
    assert scored[0].ids == encode(demo, PROMPT, short).ids and scored[5].ids == scored[0].ids
    for index in (0, 3, 5):
        assert scored[index].ids == expected_ids(demo, [texts[index]], limit)[0]
    assert scored[2].ids is None and expected_ids(demo, [texts[2]], limit) == [None]


def test_scoring_chat_messages(chat):
    prompt = (user("Name 2 fruits."),)
    texts = [
        (prompt, (bot("1. fig 2. lime"),)),
        (prompt, ()),
        ([user("Name 2 fruits.")], [bot("1. fig")]),  # lists, as JSON gives them, encode like tuples
        (prompt, (bot("1. fig"), user("more?"), bot("  "))),
        ((), (bot("1. kiwi"),)),
        (PROMPT, " 1. fig"),  # plain text beside messages in one call
    ]
    scored = InputEncoder(chat, max_length=64).texts(texts)
    assert [one.reason for one in scored] == [None, "empty", None, "empty", None, None]
    kept = [0, 2, 4, 5]
    assert [scored[i].ids for i in kept] == expected_ids(chat, [texts[i] for i in kept], 64)
    assert scored[2].ids == encode(chat, prompt, (bot("1. fig"),)).ids


def test_fit_reports_truncation_and_what_cannot_be_cut(tmp_path, demo):
    encoded = encode(demo, PROMPT, " 1. fig 2. lime 3. kiwi")
    assert fit(encoded, encoded.prompt_tokens + 3, "truncate_response", demo.bos_token_id, demo.eos_token_id) == (
        encoded.ids[: encoded.prompt_tokens + 2] + [demo.eos_token_id], "truncated")
    assert fit(encoded, encoded.prompt_tokens, "truncate_response", demo.bos_token_id,
               demo.eos_token_id) == (None, "prompt_too_long")
    with_bos = load_variant(tmp_path, bos=True)
    assert fit(encode(with_bos, PROMPT, " 1. fig 2. lime 3. kiwi"), 4, "truncate_prompt",
               with_bos.bos_token_id, with_bos.eos_token_id) == (None, "response_too_long")


class CountingTokenizer:
    """A tokenizer that counts its encoding calls, for checking that texts are encoded in batches."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_scoring_encodes_all_texts_in_one_batched_pass(demo):
    counting = CountingTokenizer(demo)
    texts = [(f"User: Name {n} fruits.\nAssistant:", " 1. fig" * n) for n in range(1, 30)]
    encoder = InputEncoder(counting, max_length=1024)
    encoder.texts(texts[:1])  # asks once whether the tokenizer appends the EOS itself
    counting.calls = 0
    assert all(one.ids is not None for one in encoder.texts(texts))
    assert counting.calls <= 2  # the full texts, then their prompts
