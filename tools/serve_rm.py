"""Serve a reward model over HTTP: OpenRLHF's /get_reward, vLLM's /classify and /pooling (what
verl's reward loop calls), OpenAI's /v1/models, /health and a native /score.

    python tools/serve_rm.py --model runs/demo/checkpoints
    torchrun --nproc-per-node 2 tools/serve_rm.py --model ckpt/llama-rm --tp 2 --port 8000
    torchrun --nproc-per-node 8 tools/serve_rm.py --model hf/Skywork-Reward-Llama-3.1-8B --tp 2 --pp 2 \\
        --precision bf16 --host 0.0.0.0

    curl -s localhost:8000/score -H 'content-type: application/json' \\
        -d '{"items": [{"prompt": "What is 2+2?", "response": "4"}]}'

A token-head model (an outcome or process reward model) serves the same paths: per-token class
probabilities (`/pooling` task token_classify), rewards aggregated from them (/classify,
/get_reward) and step scores (/score, natively or as vLLM's {queries, documents}); --aggregation
and --step-separator default to the checkpoint's (docs/scoring.md).

OpenRLHF: `--reward.remote_url http://HOST:PORT/get_reward` (add --normalize here to get the
rewards normalised by the model's stored statistics, as OpenRLHF's own server does with
--reward.normalize_enable). verl: its reward loop's vLLM client posts to http://HOST:PORT/classify.

Rank 0 serves HTTP and gathers concurrent requests into batches (--batch-wait-ms, up to
--max-batch-tokens and --max-batch-requests; `--batch-wait-ms 0 --max-batch-requests 1` scores
one request at a time); every rank runs each forward, and the dp = world / (tp * pp) replicas
share it. Once it accepts connections it prints `serving MODEL on http://HOST:PORT (tp= pp= dp=)`
(with --port 0 the port is a free one). It binds to 127.0.0.1 unless --host says otherwise.
SIGTERM or Ctrl-C to rank 0 finishes the requests in flight, stops the other ranks and exits 0.
torchrun passes a SIGTERM on to every rank: the others wait for rank 0's stop and the job ends
the same way, though torchrun itself reports the signal with status 1, and kills the ranks left
after its --shutdown-timeout (30 s by default): give it more than --drain-timeout-s.
"""

import argparse
import gc
import os
import signal

import uvicorn

from megatron_rm.errors import UsageError, exit_on_usage_error
from megatron_rm.runtime import parallel
from megatron_rm.scoring.arguments import add_model_arguments, add_token_arguments, scorer_from_arguments
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.server.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ITEMS,
    HeaderTimeout,
    Server,
    build_app,
    check_normalize,
    listen,
)
from megatron_rm.server.serving_loop import IDLE_TICK_S, Batcher, BatchLimits, Lead, follow


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_token_arguments(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    group.add_argument("--port", type=int, default=8000, help="0: a free port (the ready line names it)")
    group.add_argument("--served-model-name", help="the model's name in responses (default: --model)")
    group.add_argument("--normalize", action="store_true",
                       help="/get_reward returns rewards normalised by the model's stored statistics")
    group.add_argument("--max-batch-tokens", type=int, default=BatchLimits.max_tokens,
                       help="tokens gathered into one forward (a larger request goes alone)")
    group.add_argument("--max-batch-requests", type=int, default=None,
                       help="requests gathered into one forward (default: no limit)")
    group.add_argument("--batch-wait-ms", type=float, default=BatchLimits.wait_s * 1000,
                       help="how long a batch's first request waits for others to join it")
    group.add_argument("--max-items", type=int, default=DEFAULT_MAX_ITEMS, help="inputs per request")
    group.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="request body size")
    group.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                       help="a request whose body stops arriving this long is answered 408")
    group.add_argument("--header-timeout-s", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                       help="a connection whose request headers are not complete this long after it opens "
                            "(or after the request's first byte) is answered 408 and closed")
    group.add_argument("--drain-timeout-s", type=float, default=30.0,
                       help="on SIGTERM, how long requests in flight may take to finish before they are cut")
    group.add_argument("--idle-tick-s", type=float, default=IDLE_TICK_S,
                       help="while idle, wake the other ranks this often (keep it under the process "
                            "group's timeout)")
    args = parser.parse_args()
    for name in ("max_batch_tokens", "max_batch_requests", "max_items", "max_body_bytes", "port"):
        value, lowest = getattr(args, name), 0 if name == "port" else 1
        if value is not None and value < lowest:
            parser.error(f"--{name.replace('_', '-')}={value} must be >= {lowest}")
    if (args.batch_wait_ms < 0 or args.idle_tick_s <= 0 or args.body_timeout_s <= 0 or args.header_timeout_s <= 0
            or args.drain_timeout_s < 0):
        parser.error("--batch-wait-ms and --drain-timeout-s must be >= 0, --idle-tick-s, --body-timeout-s and "
                     "--header-timeout-s > 0")
    return args


def serve(scorer: Scorer, args: argparse.Namespace) -> None:
    """Rank 0: the HTTP server until a signal; closing the app's batcher stops the other ranks."""
    lead = Lead(scorer)
    try:
        sock = listen(args.host, args.port)
    except UsageError:
        lead.stop()
        raise
    limits = BatchLimits(max_tokens=args.max_batch_tokens, max_requests=args.max_batch_requests,
                         wait_s=args.batch_wait_ms / 1000)
    name = args.served_model_name or scorer.model.name
    app = build_app(scorer, Batcher(lead, limits, idle_tick_s=args.idle_tick_s), name=name,
                    normalize=args.normalize, max_items=args.max_items, max_body_bytes=args.max_body_bytes,
                    body_timeout_s=args.body_timeout_s)
    layout = scorer.model.layout
    host, port = sock.getsockname()[:2]
    address = f"[{host}]" if ":" in host else host

    def ready():
        print(f"serving {name} on http://{address}:{port} (tp={layout.tp} pp={layout.pp} dp={layout.dp})",
              flush=True)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=args.drain_timeout_s,
                            http=HeaderTimeout.after(args.header_timeout_s))
    # The loaded model, tokenizer and libraries are a million long-lived objects: frozen, they
    # are out of the collector's sight, whose full passes over them would otherwise stall
    # every client for a third of a second now and then.
    gc.collect()
    gc.freeze()
    Server(config, on_ready=ready).run(sockets=[sock])


def main() -> None:
    args = arguments()

    def run():
        scorer = scorer_from_arguments(args)
        if args.normalize:  # checked on every rank, not only by build_app on rank 0: all stop alike
            check_normalize(scorer, "--normalize", args.model)
        if scorer.model.layout.rank == 0:
            serve(scorer, args)
        else:
            # Rank 0 decides when the job stops (after the requests in flight): a signal here
            # would leave it broadcasting to a rank that is gone.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            follow(scorer)

    try:
        exit_on_usage_error(run, rank=int(os.environ.get("RANK", "0")))
    finally:
        parallel.shutdown()


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
