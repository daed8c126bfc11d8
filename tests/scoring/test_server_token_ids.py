"""Token ids on vLLM's /classify and /pooling, as vLLM takes them: `input` as one input's ids
(a list of ints) or several inputs' (a list of lists). Real server on loopback, real client.
Ids equal to the model's ids of a text score as that text does; a bad id is a 400 naming the
element (`input[1][3]`), a list mixing forms a 4xx naming the element, and after every refusal
the server answers as before."""

from __future__ import annotations

import pytest
import requests

from tests.scoring.test_server import MAX_ITEMS, PAIRS, one  # noqa: F401 (a fixture)
from tests.scoring.test_token_server import served  # noqa: F401 (a fixture)

TEXTS = [p + r for p, r in PAIRS]


def post(url: str, path: str, body) -> requests.Response:
    return requests.post(url + path, json=body, timeout=30)


def answered(url: str, path: str, body) -> dict:
    response = post(url, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def rewards(answer: dict) -> list:
    return [item["probs"] if "probs" in item else item["data"] for item in answer["data"]]


def text_ids(scorer) -> list[list[int]]:
    """The ids the server scores for each text: the ids a client that tokenizes as the model does sends."""
    return [item.ids for item in scorer.encoder.whole_texts(TEXTS)]


@pytest.mark.parametrize("path", ["/classify", "/pooling"])
def test_token_ids_score_as_the_text_they_encode(one, path):  # noqa: F811
    url, scorer = one[0], one[1]
    ids = text_ids(scorer)
    texts = answered(url, path, {"input": TEXTS, "use_activation": False})
    given = answered(url, path, {"input": ids, "use_activation": False})
    assert len(given["data"]) == len(TEXTS) and rewards(given) == rewards(texts)
    assert [item["index"] for item in given["data"]] == list(range(len(TEXTS)))
    tokens = sum(map(len, ids))
    assert given["usage"] == texts["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens,
                                                "completion_tokens": 0, "prompt_tokens_details": None}
    two = answered(url, path, {"input": ids[:2], "use_activation": False})
    assert rewards(two) == rewards(answered(url, path, {"input": TEXTS[:2], "use_activation": False}))
    single = answered(url, path, {"model": "m", "input": ids[1]})  # one input's ids: a list of ints
    assert len(single["data"]) == 1 and single["usage"]["prompt_tokens"] == len(ids[1])
    assert rewards(single) == rewards(answered(url, path, {"model": "m", "input": TEXTS[1]}))
    assert answered(url, path, {"input": []})["data"] == []  # still an empty batch


def bad_cases(vocab: int, ids: list[list[int]]) -> list[tuple]:
    """(input, status, param, message fragment)."""
    good = ids[0]
    return [
        ([good, [5, 6, -1, 7]], 400, "input[1][2]", "input[1][2]: -1 is not a token id of this model"),
        ([good, [5, vocab]], 400, "input[1][1]", f"{vocab} is not a token id of this model (a whole number in [0, "
                                                 f"{vocab}))"),
        ([[5, 2.5]], 400, "input[0][1]", "2.5 is not a token id"),
        ([[5, True]], 400, "input[0][1]", "true is not a token id"),
        ([5, 6, -3], 400, "input[2]", "input[2]: -3 is not a token id"),
        ([5, "six"], 400, "input[1]", '"six" is not a token id'),  # a string among one input's ids
        (["a b", 5], 422, "input[1]", "input[1]: expected a string, as input[0] is"),
        ([good, "a b"], 422, "input[1]", "input[1]: expected a list of token ids, as input[0] is"),
        ([good, 5], 422, "input[1]", "input[1]: expected a list of token ids"),
        ([None], 422, "input[0]", "input[0]: expected a string, a token id or a list of token ids"),
        ([{"ids": good}], 422, "input[0]", "input[0]: expected a string, a token id or a list of token ids"),
        ([good, []], 422, "input[1]", "input[1]: "),
        ([good] * (MAX_ITEMS + 1), 422, "input", f"exceed the server's limit of {MAX_ITEMS}"),
        ([good, list(range(2, 200))], 422, "input[1]", "exceed the limit of 64"),
    ]


@pytest.mark.parametrize("path", ["/classify", "/pooling"])
def test_bad_token_ids_are_refused_naming_the_element_and_serving_goes_on(one, path):  # noqa: F811
    url, scorer = one[0], one[1]
    ids = text_ids(scorer)
    expected = rewards(answered(url, path, {"input": ids, "use_activation": False}))
    for value, status, param, fragment in bad_cases(len(scorer.encoder.tokenizer), ids):
        response = post(url, path, {"input": value, "use_activation": False})
        assert response.status_code == status, (value, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (status, param), (value, error)
        assert fragment in error["message"], (value, error)
        assert rewards(answered(url, path, {"input": ids, "use_activation": False})) == expected


def test_a_token_head_model_refuses_token_ids(served):  # noqa: F811
    """A token-head model reads the response's tokens out of text; ids alone are a 422, not a guess."""
    url, scorer = served
    ids = [item.ids for item in scorer.encoder.whole_texts(["What is 2+3? It is 5."])]
    for path, body in [("/classify", {"input": ids}), ("/pooling", {"input": ids[0], "task": "token_classify"})]:
        response = post(url, path, body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "input" and "token ids are scored by a sequence reward model only" in \
            error["message"]
    assert len(answered(url, "/classify", {"input": ["What is 2+3? It is 5."]})["data"]) == 1
