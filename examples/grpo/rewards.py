"""The demo task's rule reward, as a TRL-style reward function for `reward.functions`:

    reward.functions=[examples/grpo/rewards.py:right_count]

1.0 when a response lists exactly the number of items its prompt asks for ("Name 3 sports."),
else 0.0. It reads only the prompt and the response, so it needs no column of its own.
"""

from __future__ import annotations

import re

_ASKED = re.compile(r"\b(\d+)\b")


def right_count(prompts: list, completions: list, **columns) -> list[float]:
    return [float(_listed(completion) == _asked(prompt)) for prompt, completion in zip(prompts, completions)]


def _asked(prompt: str) -> int:
    """The N the prompt asks for: its first number."""
    found = _ASKED.search(prompt)
    return int(found.group(1)) if found else -1


def _listed(response: str) -> int:
    """How many numbered items ("1." "2." ...) the response lists."""
    return sum(1 for word in response.split() if word.endswith(".") and word[:-1].isdigit())
