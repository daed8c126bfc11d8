"""Rewards written as Python functions (verifiable rewards for critic-free RL): the built-ins
(`builtin`: `gsm8k`, `math`, `exact_match`) and any function a config names, found and called
with TRL's calling convention (`function.RewardFunction`)."""
