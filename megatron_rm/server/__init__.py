"""The reward server (`tools/serve_rm.py`): the HTTP app and its limits (`app`), the wire protocols
of a scalar head (`protocol`) and a token head (`token_protocol`, `token_routes`), and the loop that
serves a whole TP/PP/DP job (`serving_loop`). Scoring itself is `megatron_rm.scoring`'s."""
