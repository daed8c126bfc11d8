"""The reward server's routes for a token-head model (outcome and process reward models);
`server.app.build_app` adds them instead of the sequence routes, on the same paths.

Each request is parsed and located (ids and read positions) on the event loop, as the
sequence routes encode theirs; the batcher runs the forward and returns every input's
per-token logits, from which the answer is read (see `token_protocol` for the shapes).
"""

from __future__ import annotations

import torch
from fastapi import FastAPI

from megatron_rm.scoring.scorer import Scorer
from megatron_rm.scoring.token.scores import Located
from megatron_rm.server.protocol import (
    CLASSIFY_TASK,
    ClassifyRequest,
    PoolingRequest,
    RequestProblem,
    RewardRequest,
    reward_response,
)
from megatron_rm.server.serving_loop import Batcher
from megatron_rm.server.token_protocol import (
    TOKEN_CLASSIFY_TASK,
    TokenScoreRequest,
    as_classes,
    classify_response,
    located,
    outcome,
    pooling_response,
    rewards,
    score_response,
    token_probabilities,
    vllm_score_response,
)

TASKS = (CLASSIFY_TASK, TOKEN_CLASSIFY_TASK)


def add_token_routes(app: FastAPI, scorer: Scorer, batcher: Batcher, tokenizing, *, name: str,
                     max_items: int) -> None:
    """The routes of a token-head model; `tokenizing` (the server's `Tokenizing`) runs each
    request's tokenization off the event loop."""
    reading, encoder = scorer.reading, scorer.encoder

    async def logits_of(locate, request) -> tuple[list[Located], list, list[list[int]]]:
        """The request's inputs located (`locate`, off the event loop), their per-token logits and ids."""
        responses = await tokenizing(locate, request)
        sequences = [response.ids for response in responses]
        return responses, await batcher.score(sequences), sequences

    def texts_located(request) -> list[Located]:
        texts, names = request.texts(max_items)
        return located(encoder, [outcome(prompt, response, name) for (prompt, response), name in zip(texts, names)],
                       names)

    def score_located(request: TokenScoreRequest) -> list[Located]:
        parsed, names = request.responses(reading, max_items)
        return located(encoder, parsed, names)

    @app.post("/score")
    async def score(request: TokenScoreRequest):
        responses, logits, sequences = await logits_of(score_located, request)
        scored = rewards(logits, responses, reading)
        if request.native:
            return score_response(scored, responses)
        return vllm_score_response(name, scored, sequences)

    @app.post("/get_reward")
    async def get_reward(request: RewardRequest):
        responses, logits, _ = await logits_of(texts_located, request)
        scored = rewards(logits, responses, reading)
        return reward_response(torch.tensor([reward for reward, _ in scored], dtype=torch.float64))

    @app.post("/classify")
    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest):
        request.use_activation_resolved()  # checked, but the reward is a probability either way
        responses, logits, sequences = await logits_of(texts_located, request)
        return classify_response(name, rewards(logits, responses, reading), sequences)

    @app.post("/pooling")
    async def pooling(request: PoolingRequest):
        if request.task not in TASKS:
            raise RequestProblem(400, f"task {request.task!r} is not served: a token-head reward model serves "
                                      f"tasks {CLASSIFY_TASK!r} (each input's reward) and {TOKEN_CLASSIFY_TASK!r} "
                                      "(class probabilities at every token)", "task")
        activation = request.use_activation_resolved()
        responses, logits, sequences = await logits_of(texts_located, request)
        if request.task == TOKEN_CLASSIFY_TASK:
            return pooling_response(name, token_probabilities(logits, activation), sequences)
        data = [as_classes(reward) for reward, _ in rewards(logits, responses, reading)]
        return pooling_response(name, data, sequences)
