"""Write a `.nemo` of one of our checkpoints from a tensor-parallel job, as NeMo saves one trained
at that size (tests/convert/test_nemo_import.py; see nemo_files.py).

    torchrun --standalone --nproc-per-node TP tests/convert/nemo_worker.py CHECKPOINT WHOLE OUT FORM

WHOLE: the checkpoint's parameters, whole (`torch.save` of `nemo_files.whole_tensors`).
"""

import os
import sys
from pathlib import Path

import torch

from megatron_rm.config import ParallelConfig
from megatron_rm.runtime import parallel
from tests.convert.nemo_files import write_nemo


def main() -> None:
    checkpoint, whole, out, form = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    parallel.initialize(ParallelConfig(tp=int(os.environ["WORLD_SIZE"])), seed=0)
    write_nemo(checkpoint, out, form=form, whole=torch.load(whole))
    parallel.shutdown()


if __name__ == "__main__":
    main()
