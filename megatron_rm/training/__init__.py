"""Training runs: the lifecycle every loop runs in (`lifecycle`), and the reward-model and SFT
loop (`loop`) with its data setup, checks and resume."""
