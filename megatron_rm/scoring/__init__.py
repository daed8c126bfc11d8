"""Using a reward model: scoring document batches at any TP/PP layout."""
