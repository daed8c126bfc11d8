"""Best-of-N on the demo, end to end: a reward model picks the best of K sampled responses.

    python examples/best_of_n/run.py                       # ~3 minutes on 2 CPU cores
    python examples/best_of_n/run.py --samples 8 --prompts 400 --temperature 1.2

1. trains the demo reward model (`tools/train_rm.py`, conf/train_rm.yaml) and a policy by
   supervised fine-tuning on the chosen responses (`tools/train_sft.py`, conf/train_sft.yaml),
   unless --reward-model / --policy name existing checkpoints;
2. samples K responses for each held-out prompt (`tools/generate.py`);
3. scores them (`tools/score_rm.py` on `{prompt, responses}` rows, whose `best` is best-of-K);
4. judges every response by the demo task's ground truth, which neither model sees: a
   response is right when it lists exactly the number of items the prompt asks for.

Prints the accuracy of the first sample, of the reward model's pick and of the best possible
pick (any right sample), and the win rate of best-of-K over the first sample (prompts where
exactly one of the two is right). Everything lands in --work (default runs/best_of_n).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "examples" / "demo"))
from make_data import asked_count, listed_count  # noqa: E402  (the demo's own ground truth)


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def judge(rows: list[dict]) -> dict:
    """Ground-truth accuracy of the first sample, the reward model's pick and the best pick."""
    first = best = oracle = wins = losses = 0
    for row in rows:
        right = [listed_count(response) == asked_count(row["prompt"]) for response in row["responses"]]
        first += right[0]
        best += right[row["best"]]
        oracle += any(right)
        wins += right[row["best"]] and not right[0]
        losses += right[0] and not right[row["best"]]
    count = len(rows)
    return {"prompts": count, "samples": len(rows[0]["responses"]), "first_sample_accuracy": first / count,
            "best_of_k_accuracy": best / count, "oracle_accuracy": oracle / count, "wins": wins, "losses": losses,
            "win_rate": wins / (wins + losses) if wins + losses else 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "best_of_n")
    parser.add_argument("--reward-model", type=Path, help="an existing reward model (default: train the demo's)")
    parser.add_argument("--policy", type=Path, help="an existing policy (default: SFT on the demo's chosen responses)")
    parser.add_argument("--rm-steps", type=int, default=300)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts (examples/demo/data/eval.jsonl)")
    parser.add_argument("--samples", type=int, default=4, help="K: responses per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    reward_model = args.reward_model or work / "rm" / "checkpoints"
    if not args.reward_model:
        run("tools/train_rm.py", f"run.dir={work / 'rm'}", f"train.max_steps={args.rm_steps}")
    policy = args.policy or work / "sft" / "checkpoints"
    if not args.policy:
        run("tools/train_sft.py", f"run.dir={work / 'sft'}", f"train.max_steps={args.sft_steps}")

    held_out = read(REPO / "examples" / "demo" / "data" / "eval.jsonl")[:args.prompts]
    write(work / "prompts.jsonl", [{"prompt": row["prompt"]} for row in held_out])
    for stale in ("samples.jsonl", "scored.jsonl"):  # a new run, not a resume of an older one
        (work / stale).unlink(missing_ok=True)
    run("tools/generate.py", "--model", str(policy), "--input", str(work / "prompts.jsonl"),
        "--output", str(work / "samples.jsonl"), "--num-samples", str(args.samples),
        "--temperature", str(args.temperature), "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed))
    samples = read(work / "samples.jsonl")
    # An empty response (EOS first) is a wrong sample that no reward model scores: the pick
    # is among the others (the first sample when all are empty).
    kept = [[i for i, text in enumerate(row["responses"]) if text.strip()] or [0] for row in samples]
    write(work / "to_score.jsonl", [{"prompt": row["prompt"], "responses": [row["responses"][i] or " " for i in keep]}
                                    for row, keep in zip(samples, kept)])
    run("tools/score_rm.py", "--model", str(reward_model), "--input", str(work / "to_score.jsonl"),
        "--output", str(work / "scored.jsonl"), "--on-invalid", "skip")
    picks = [keep[row["best"]] if "best" in row else 0 for row, keep in zip(read(work / "scored.jsonl"), kept)]
    report = judge([{**row, "best": pick} for row, pick in zip(samples, picks)])
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['prompts']} held-out prompts, {report['samples']} samples each, judged by the list's length:")
    print(f"  first sample right:    {report['first_sample_accuracy']:.3f}")
    print(f"  best-of-{report['samples']} (reward model's pick) right: {report['best_of_k_accuracy']:.3f}")
    print(f"  any sample right:      {report['oracle_accuracy']:.3f}")
    print(f"  best-of-{report['samples']} vs first sample: {report['wins']} wins, {report['losses']} losses, "
          f"win rate {report['win_rate']:.3f}")


if __name__ == "__main__":
    main()
