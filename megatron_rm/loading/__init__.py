"""Models ready to run at this job's TP/PP layout, from any source: one of our checkpoints or a
Hugging Face folder converted in memory (`models`), a reward model with what scoring needs
(`reward`). Scoring, generation, the judge, training and PPO all find and build models here."""
