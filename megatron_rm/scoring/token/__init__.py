"""Scoring with a token head (outcome and process reward models): the rows `score_rm` reads
(`rows`) and the solution and step scores read from the per-token logits (`scores`)."""
