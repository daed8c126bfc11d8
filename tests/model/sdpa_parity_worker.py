"""The sdpa-against-local comparison of test_layer_specs.py at TP2.

    torchrun --standalone --nproc-per-node 2 tests/model/sdpa_parity_worker.py OUT_DIR

Each rank writes OUT_DIR/rank<R>.json: per model config and batch, the relative
difference of the rewards and of the worst gradient of this rank's weight shards.
"""

import json
import sys
from pathlib import Path

from megatron_rm.config import ParallelConfig
from megatron_rm.runtime import parallel
from tests.model.test_layer_specs import MODELS, build_pair, compare


def main() -> None:
    out = Path(sys.argv[1])
    layout = parallel.initialize(ParallelConfig(tp=2), seed=0)
    result = {name: compare(*build_pair(ParallelConfig(tp=2), **overrides))
              for name, overrides in MODELS.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{layout.rank}.json").write_text(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":
    main()
