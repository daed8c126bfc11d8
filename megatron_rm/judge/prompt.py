"""The judging prompt and its two answer-label tokens.

A template (Python `str.format` syntax) is the judge's instruction: it shows `{question}`,
`{answer_a}` and `{answer_b}` and may name the labels (`{label_a}`, `{label_b}`). With a
chat template the tokenizer renders it as one user message followed by the assistant's
generation prompt; without one it is plain text ending in `PLAIN_CUE`. Either way every
judging prompt ends in the same text, so the token that writes a label there is found once:
it must be exactly one token, or the judge is refused.
"""

from __future__ import annotations

import string
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from megatron_rm.data.records import Text
from megatron_rm.data.tokenize import encode_prompts
from megatron_rm.errors import ConfigError
from megatron_rm.judge.pairs import Pair

# MT-Bench's pairwise judge instruction (Zheng et al., 2023), asking for a single letter instead
# of an explanation and "[[A]]": the verdict is then the very next token.
DEFAULT_TEMPLATE = """\
Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants \
to the user question displayed below. You should choose the assistant that follows the user's instructions \
and answers the user's question better, considering helpfulness, relevance, accuracy, depth and level of \
detail. Do not let the order in which the responses were presented, their length, or the assistants' names \
influence your decision. Be as objective as possible.

[User Question]
{question}

[The Start of Assistant {label_a}'s Answer]
{answer_a}
[The End of Assistant {label_a}'s Answer]

[The Start of Assistant {label_b}'s Answer]
{answer_b}
[The End of Assistant {label_b}'s Answer]

Which assistant's answer is better? Answer with a single letter: {label_a} or {label_b}."""
DEFAULT_LABELS = ("A", "B")
PLAIN_CUE = "\nAnswer:"
"""Ends a plain-text judging prompt: a base model continues it with the label, as in multiple-choice evaluation."""
FIELDS = ("question", "answer_a", "answer_b", "label_a", "label_b")
REQUIRED = FIELDS[:3]


def check_template(template: str, source: str = "the judge template") -> str:
    """`template` when it names every required field and no other; ConfigError otherwise."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ConfigError(f"{source}: {error} (a literal brace is written {{{{ or }}}})") from None
    problems = [f"unknown field {{{name}}}" for name in dict.fromkeys(names) if name not in FIELDS]
    problems += [f"no {{{name}}}" for name in REQUIRED if name not in names]
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)} (fields: {', '.join(FIELDS)}; the first three are "
                          "required; a literal brace is written {{ or }})")
    return template


def read_template(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such template file")
    return check_template(path.read_text(encoding="utf-8"), str(path))


def parse_labels(text: str) -> tuple[str, str]:
    """`A,B` as ("A", "B"): two different, non-empty labels."""
    labels = tuple(label.strip() for label in text.split(","))
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise ConfigError(f"--labels {text!r}: expected two different labels separated by a comma, e.g. A,B")
    return labels


def question_text(prompt: Text) -> str:
    """What the template shows as the question: the prompt string, a lone user message's
    content, or a conversation as `Role: content` paragraphs."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in prompt)


class JudgePrompt:
    """Judging prompts for one tokenizer, template and pair of labels."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str = DEFAULT_TEMPLATE,
                 labels: tuple[str, str] = DEFAULT_LABELS):
        self.tokenizer, self.template = tokenizer, check_template(template)
        self.labels = parse_labels(",".join(labels))
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        # Any question and answers do: what follows the last answer is the same in every prompt.
        end = self._rendered(self._prompt(self.fill("Q", "a", "b")))
        found = [label_token(tokenizer, *end, label) for label in self.labels]
        self.label_ids = tuple(token for token, _ in found)
        """The token ids of label A and label B."""
        self.written = tuple(text for _, text in found)
        """How each label is written after the prompt ("A", or " A" after non-space text)."""
        if self.label_ids[0] == self.label_ids[1]:
            raise ConfigError(f"labels {self.labels[0]!r} and {self.labels[1]!r} are the same token "
                              f"({self.label_ids[0]}) of the tokenizer {tokenizer.name_or_path}")

    def fill(self, question: str, answer_a: str, answer_b: str) -> str:
        return self.template.format(question=question, answer_a=answer_a, answer_b=answer_b,
                                    label_a=self.labels[0], label_b=self.labels[1])

    def prompts(self, pair: Pair) -> tuple[Text, Text]:
        """The pair's two judging prompts: its first answer shown as A, then shown as B."""
        question = question_text(pair.prompt)
        return (self._prompt(self.fill(question, pair.first, pair.second)),
                self._prompt(self.fill(question, pair.second, pair.first)))

    def encode(self, pairs: list[Pair]) -> list[list[int]]:
        """Ids of every pair's two prompts, pair by pair (generation's prompt encoding)."""
        return encode_prompts(self.tokenizer, [prompt for pair in pairs for prompt in self.prompts(pair)])

    def _prompt(self, instruction: str) -> Text:
        return ({"role": "user", "content": instruction},) if self.chat else instruction + PLAIN_CUE

    def _rendered(self, prompt: Text) -> tuple[str, bool]:
        """(text, add the tokenizer's special tokens?): what `encode_prompts` tokenizes."""
        if isinstance(prompt, str):
            return prompt, True
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True), False


def label_token(tokenizer: PreTrainedTokenizerBase, text: str, special: bool, label: str) -> tuple[int, str]:
    """The one token that writes `label` right after `text`, and how it is written.

    A label after a space or newline (a chat template's generation prompt) is written as it is;
    after other text (`Answer:`) it is a new word, so " A" is tried first, then "A". A written
    label must add exactly one token to `text`'s tokens, leaving them unchanged, and not the
    unknown token; otherwise ConfigError names the label and the tokenizer.
    """
    before = tokenizer(text, add_special_tokens=special)["input_ids"]
    tried = []
    for written in (label,) if text[-1:].isspace() else (" " + label, label):
        after = tokenizer(text + written, add_special_tokens=special)["input_ids"]
        added = after[len(before):]
        if after[:len(before)] != before:
            tried.append(f"{written!r} merges with the text before it")
        elif len(added) == 1 and added[0] != tokenizer.unk_token_id:
            return added[0], written
        else:
            tried.append(f"{written!r} is {tokenizer.convert_ids_to_tokens(added)}")
    raise ConfigError(f"label {label!r} is not a single token of the tokenizer {tokenizer.name_or_path} after the "
                      f"judging prompt's end {text[-24:]!r}: {'; '.join(tried)}. Choose labels the tokenizer writes "
                      "as one token there (--labels, e.g. A,B or 1,2)")
