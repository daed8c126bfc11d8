"""The shared core below every product (reward-model training, scoring, generation, the judge,
PPO): megatron's schedule over micro-batches, micro-batch plans for forward-only work, optimizers,
checkpoints of several models and states, and the file-job frame of the tools that read rows."""
