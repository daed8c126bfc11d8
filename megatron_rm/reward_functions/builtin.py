"""The built-in verifiable rewards: `gsm8k`, `math` and `exact_match`, each 1.0 for a right answer
and 0.0 otherwise, with TRL's reward-function signature `fn(prompts, completions, **columns)`.

A row's reference answer comes from its `ground_truth` column, else its `answer` column (GSM8K's
own rows), else verl's `reward_model` column (`{"ground_truth": ...}` per row) (`references`);
a row without one gets None, no reward, and is left out of its group's statistics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation

REFERENCE_COLUMNS = ("ground_truth", "answer", "reward_model")


def references(columns: Mapping[str, Sequence], n: int) -> list:
    """The reference answer of each of the `n` completions, None where a row has none.

    The first of the columns `ground_truth`, `answer` and `reward_model` (verl's: a dict per row
    holding `ground_truth`) that is present gives them; a ValueError names the three when none
    is, or when the column does not hold `n` values.
    """
    name = next((column for column in REFERENCE_COLUMNS if column in columns), None)
    if name is None:
        raise ValueError("no reference answer: the rows have none of the columns ground_truth, answer and "
                         "reward_model (a dict with ground_truth)")
    values = list(columns[name])
    if len(values) != n:
        raise ValueError(f"the {name} column holds {len(values)} values for {n} completions")
    return [_from_reward_model(value) for value in values] if name == "reward_model" else values


def _from_reward_model(value):
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"a reward_model value is a {type(value).__name__}, not a dict with ground_truth")
    return value.get("ground_truth")


def _rewards(completions: Sequence[str], columns: Mapping[str, Sequence],
             correct: Callable[[str, str], bool]) -> list[float | None]:
    """`correct(completion, reference)` as 1.0 or 0.0 per completion; None where the reference is missing.
    References are read as text, so a number in a `ground_truth` column works too."""
    return [None if reference is None else float(correct(completion, str(reference)))
            for completion, reference in zip(completions, references(columns, len(completions)))]


# GSM8K ---------------------------------------------------------------------------------------------

# verl's gsm8k reward looks only at the end of a completion, where the final answer belongs, so a
# `#### N` quoted early in a long ramble is not taken for the answer.
GSM8K_TAIL_CHARS = 300
# `#### ` then a number: a sign and/or a dollar sign, digits with thousands commas, decimals. A
# period after the number is sentence punctuation and is left out by the pattern itself.
_GSM8K_ANSWER = re.compile(r"####[ \t]*((?:-\$?|\$-?)?(?:\d[\d,]*(?:\.\d+)?|\.\d+))")


def gsm8k(prompts: list, completions: list[str], **columns) -> list[float | None]:
    """1.0 where the completion's last `#### N` is the reference number, else 0.0 (verl's strict format).

    Only the last 300 characters of a completion are read, as verl does; a completion without a
    `#### N` there scores 0.0. `N` may carry thousands commas, a leading `$` or `-` and a trailing
    period; it is compared with the reference as a number (`1,234` equals `1234.0`). A reference
    holding a whole GSM8K solution is read as its last `#### N`.
    """
    return _rewards(completions, columns, _gsm8k_correct)


def _gsm8k_correct(completion: str, reference: str) -> bool:
    answer = _last_gsm8k_answer(completion[-GSM8K_TAIL_CHARS:])
    if answer is None:
        return False
    expected = _last_gsm8k_answer(reference) or reference
    return _same_number(_number_text(answer), _number_text(expected))


def _last_gsm8k_answer(text: str) -> str | None:
    answers = _GSM8K_ANSWER.findall(text)
    return answers[-1] if answers else None


def _number_text(text: str) -> str:
    return text.strip().replace(",", "").replace("$", "").rstrip(".")


def _same_number(a: str, b: str) -> bool:
    """Equal as numbers when both read as finite numbers, else as the same text."""
    x, y = _decimal(a), _decimal(b)
    return x == y if x is not None and y is not None else a == b


def _decimal(text: str) -> Decimal | None:
    # Decimal rather than float: exact, so two long integers one apart never compare equal.
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


# MATH ----------------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def math(prompts: list, completions: list[str], **columns) -> list[float | None]:
    """1.0 where the completion's last `\\boxed{...}` equals the reference after normalisation, else 0.0.

    The answer is the content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces allowed)
    or `\\boxed 5` (one token); none, or a last box left open, scores 0.0. A reference holding a
    box is read as its content. Both are normalised in the spirit of the Hendrycks MATH
    `strip_string` (`normalise`) and must then be the same text, so `0.5` is not `\\frac{1}{2}`.
    """
    return _rewards(completions, columns, _math_correct)


def _math_correct(completion: str, reference: str) -> bool:
    answer = last_boxed(completion)
    if answer is None:
        return False
    boxed_reference = last_boxed(reference)
    expected = reference if boxed_reference is None else boxed_reference
    return normalise(answer) == normalise(expected)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}`, `\\fbox{...}` or `\\boxed 5` in `text`; None when
    there is none or the last is never closed (a completion cut off inside its answer)."""
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    rest = text[boxes[-1].end():]
    argument = rest.lstrip()
    if argument.startswith("{"):
        group = _group(argument, 0)
        return None if group is None else group[0]
    # `\boxed 5`: only a space-separated token is an argument; `\boxed` glued to text is not one.
    token = re.match(r"[^\s$]*", argument).group()
    return token if token and argument != rest else None


def _group(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at `text[start]` and the index after its closing
    brace; None when it is never closed. Escaped braces (`\\{`) do not count."""
    depth = 0
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
        i += 1
    return None


# Rewrites applied in order by `normalise`; each is presentation only, never a change of value.
_REWRITES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"\\[!,;: ]", ""),  # spacing commands, before the spaces go (`\ ` is one)
    (r"\s+", ""),
    (r"\\[dt]frac(?![A-Za-z])", r"\\frac"),
    (r"\\(?:left|right)(?![A-Za-z])", ""),  # the lookahead keeps \leftarrow and \rightarrow
    (r"\^(?:\\circ|\{\\circ\})", ""),
    (r"\\?[$%]", ""),
    (r"\.+$", ""),
    # Units: a \text{...} at the end after something else (a bare `\text{Monday}` is the answer).
    (r"(?<=.)\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\d|\^\{\d+\})?$", ""),
    (r"^[A-Za-z]=(?=[^=]*$)", ""),  # `x=5` -> `5`, but not an equation such as `x=y=5`
    (r"(?<![\w)}\]])\.(?=\d)", "0."),  # `.5` -> `0.5`
)]
_INTEGER_RATIO = re.compile(r"(-?)(\d+)/(\d+)")
# The commands whose shorthand arguments `normalise` braces, with their number of arguments.
_BRACED_COMMANDS = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")
_ARGUMENT_COUNTS = {"frac": 2, "sqrt": 1}
_ROOT_INDEX = re.compile(r"\[[^\]]*\]")
_CONTROL_SEQUENCE = re.compile(r"\\(?:[A-Za-z]+|.)")


def normalise(answer: str) -> str:
    """`answer` in one canonical spelling, in the spirit of the Hendrycks MATH `strip_string`.

    Spaces, `\\left`/`\\right`, spacing commands such as `\\!`, `$`, degrees (`^\\circ`), percent signs,
    trailing periods, a trailing `\\text{...}` unit and a leading single-variable `x=` go;
    `\\dfrac`/`\\tfrac` become `\\frac`; shorthand arguments are braced (`\\frac12` -> `\\frac{1}{2}`,
    `\\sqrt2` -> `\\sqrt{2}`); a ratio of two integers becomes a fraction (`3/4` -> `\\frac{3}{4}`);
    `.5` becomes `0.5`. Decimals are not turned into fractions.
    """
    for pattern, replacement in _REWRITES:
        answer = pattern.sub(replacement, answer)
    answer = _brace_arguments(answer)
    ratio = _INTEGER_RATIO.fullmatch(answer)
    return rf"{ratio[1]}\frac{{{ratio[2]}}}{{{ratio[3]}}}" if ratio else answer


def _brace_arguments(text: str) -> str:
    """Every `\\frac` and `\\sqrt` in `text` (nested ones too) with its arguments in braces."""
    parts = []
    i = 0
    while (command := _BRACED_COMMANDS.search(text, i)) is not None:
        parts.append(text[i:command.end()])
        i = command.end()
        if command[1] == "sqrt" and (root := _ROOT_INDEX.match(text, i)):
            parts.append(root.group())  # `\sqrt[3]x`: the optional index stays as it is
            i = root.end()
        for _ in range(_ARGUMENT_COUNTS[command[1]]):
            argument = _argument(text, i)
            if argument is None:
                break
            content, i = argument
            parts.append("{" + _brace_arguments(content) + "}")
    parts.append(text[i:])
    return "".join(parts)


def _argument(text: str, i: int) -> tuple[str, int] | None:
    """One TeX macro argument at `text[i]` (a brace group, a control sequence such as `\\pi`, or
    one character) and the index after it; None at the end of `text` or an unmatched brace."""
    if i >= len(text) or text[i] == "}":
        return None
    if text[i] == "{":
        return _group(text, i)
    if text[i] == "\\":
        sequence = _CONTROL_SEQUENCE.match(text, i)  # None for a lone `\` at the end
        return None if sequence is None else (sequence.group(), sequence.end())
    return text[i], i + 1


# Exact match ---------------------------------------------------------------------------------------


def exact_match(prompts: list, completions: list[str], **columns) -> list[float | None]:
    """1.0 where the completion equals the reference, both stripped of surrounding whitespace, else 0.0."""
    return _rewards(completions, columns, lambda completion, reference: completion.strip() == reference.strip())


BUILTINS = {"gsm8k": gsm8k, "math": math, "exact_match": exact_match}
