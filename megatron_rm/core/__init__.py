"""The shared core below every product (reward-model training, scoring, PPO): megatron's
schedule over micro-batches, optimizers, and checkpoints of several models and states."""
