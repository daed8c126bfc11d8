"""A causal language model as a pairwise judge (LLM-as-a-judge), run like a reward model.

A template shows the question and two answers labelled A and B and asks which is better
(`prompt`); the verdict is read from the next-token log-probabilities of the two label tokens
at the end of that prompt, both orders averaged against position bias (`judge`). Rows are
`{prompt, chosen, rejected}` or `{prompt, response_a, response_b}` (`pairs`); `batch_job` is
`tools/judge.py`'s file job and `evaluation` is `tools/eval_rm.py --judge`.
"""

from megatron_rm.judge.judge import Judge, Verdict, verdict
from megatron_rm.judge.prompt import DEFAULT_LABELS, DEFAULT_TEMPLATE, JudgePrompt

__all__ = ["DEFAULT_LABELS", "DEFAULT_TEMPLATE", "Judge", "JudgePrompt", "Verdict", "verdict"]
