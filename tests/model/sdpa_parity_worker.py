"""The sdpa-against-local comparison of test_layer_specs.py at TP2.

    torchrun --standalone --nproc-per-node 2 tests/model/sdpa_parity_worker.py OUT_DIR

Each rank writes OUT_DIR/rank<R>.json: per model config and batch, the relative
difference of the rewards and of the worst gradient of this rank's weight shards
("models"); and per grad-free linear layer of test_linear.py, whether its output without
gradients is megatron's, bit for bit ("linear").
"""

import json
import sys
from pathlib import Path

from megatron_rm.config import ParallelConfig
from megatron_rm.runtime import parallel
from tests.model.test_layer_specs import MODELS, build_pair, compare
from tests.model.test_linear import BIASES, LAYERS, no_grad_outputs, same


def main() -> None:
    out = Path(sys.argv[1])
    layout = parallel.initialize(ParallelConfig(tp=2), seed=0)
    result = {"models": {name: compare(*build_pair(ParallelConfig(tp=2), **overrides))
                         for name, overrides in MODELS.items()},
              "linear": {f"{kind}, {bias}": same(*no_grad_outputs(kind, bias, tp_size=2))
                         for kind in LAYERS for bias in BIASES}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{layout.rank}.json").write_text(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":
    main()
