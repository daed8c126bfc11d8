"""What the RL demos (`make ppo-demo`, `make grpo-demo`) share: launching the tools, the demo's
reward model and SFT policy, and judging evaluation samples by the demo task's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from make_data import asked_count, listed_count

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(list(args), cwd=REPO, check=True)


def torchrun(nproc: int) -> list[str]:
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={nproc}"]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reward_model(work: Path, given: Path | None, steps: int, nproc: int) -> Path:
    """`given`, else `make demo`'s reward model (runs/demo/checkpoints) when it exists, else the
    demo's reward model trained into `work/rm`."""
    made_by_demo = REPO / "runs" / "demo" / "checkpoints"
    if given is not None:
        return given
    if (made_by_demo / "latest").is_file():
        return made_by_demo
    run(*torchrun(nproc), "tools/train_rm.py", f"run.dir={work / 'rm'}", f"train.max_steps={steps}")
    return work / "rm" / "checkpoints"


# `--engine vllm`: the rollouts come from vLLM, whose CPU attention needs a head size of 32 or more;
# the demo's tiny model has 16 (64 wide, 4 heads), so its policy is warm-started with 2 heads of 32.
VLLM_POLICY = ("model.num_attention_heads=2", "model.num_query_groups=2")


def add_engine_argument(parser) -> None:
    """The demos' `--engine` (rollout.engine)."""
    parser.add_argument("--engine", choices=("megatron", "vllm"), default="megatron",
                        help="what samples the rollouts (rollout.engine; vllm: vLLM installed, and a policy with "
                        "heads of 32 for its CPU attention, which the SFT warm start then trains)")


def policy(work: Path, given: Path | None, steps: int, nproc: int, engine: str = "megatron") -> Path:
    """`given`, else a policy warm-started by SFT on the demo's chosen responses into `work/sft`
    (shaped for `engine`)."""
    if given is not None:
        return given
    shape = VLLM_POLICY if engine == "vllm" else ()
    run(*torchrun(nproc), "tools/train_sft.py", f"run.dir={work / 'sft'}", f"train.max_steps={steps}", *shape)
    return work / "sft" / "checkpoints"


def judge(samples: list[dict]) -> dict:
    """Mean reward and ground-truth accuracy of one evaluation's responses: a response is right
    when its list has exactly the number of items the prompt asks for."""
    right = [listed_count(row["response"]) == asked_count(row["prompt"]) for row in samples]
    scored = [row["reward"] for row in samples if row["reward"] is not None]
    return {"reward_mean": sum(scored) / len(scored) if scored else None,
            "right_fraction": sum(right) / len(right),
            "eos_fraction": sum(row["finish_reason"] == "eos" for row in samples) / len(samples)}
