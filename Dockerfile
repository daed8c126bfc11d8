# GPU image for megatron-rm on NVIDIA's NGC PyTorch container, which ships CUDA, NCCL,
# a CUDA build of torch, TransformerEngine and apex (used when present: TE layer spec,
# fused kernels, sequence parallelism).
#
# Build (from the repository root; runs the CPU test suite as a smoke check, ~10 min):
#   docker build -t megatron-rm .
#   docker build -t megatron-rm --build-arg RUN_TESTS=0 .                  # skip the tests
#   docker build -t megatron-rm --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3 .
#
# Train (one node, 8 GPUs; mount a directory for run.dir so checkpoints outlive the container):
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 --rm -it \
#       -v /shared:/shared megatron-rm \
#       torchrun --nproc-per-node 8 tools/train_rm.py parallel.tp=2 parallel.pp=2 \
#           data.train_path=/shared/pairs.jsonl run.dir=/shared/runs/rm checkpoint.load=auto
# Across nodes with SLURM (pyxis/enroot or apptainer): examples/slurm/README.md.
#
# Unverified: docker cannot run in this project's CI, so this file has not been built
# there. What was checked: that pip keeps an installed NGC torch (a pre-release such as
# 2.9.0a0+50eac811a6.nv25.09) for setup.py's "torch>=2.6,<2.14", and that the constraint
# below turns a base image whose torch does not fit into a resolution error.

# The base image must hold torch >= 2.6 final. NGC 25.01 ships 2.6.0a0+ecf3bae40a, a
# pre-release that sorts *below* 2.6, so pip would fetch a PyPI torch over it: use 25.02
# (2.7.0a0) or later.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
FROM ${BASE_IMAGE}

# 1: run the test suite during the build; 0: skip it.
ARG RUN_TESTS=1

# Never replace the container's torch. NGC images already point PIP_CONSTRAINT at
# /etc/pip/constraint.txt (pins for the packages they build); adding an exact pin of the
# installed torch makes that explicit for any base image: a dependency that wants another
# torch fails the build loudly instead of downloading gigabytes of CUDA wheels over the
# NGC build (which carries NCCL, TE and apex compiled against it). pip accepts the
# pre-release version of an installed torch for ">=2.6,<2.14" as long as it sorts inside
# the range. PIP_CONSTRAINT takes space-separated files; an unset base value leaves a
# leading space, which pip ignores.
RUN mkdir -p /etc/pip \
 && python -c "import torch; print(f'torch=={torch.__version__}')" > /etc/pip/megatron-rm-torch.txt \
 && cat /etc/pip/megatron-rm-torch.txt
ENV PIP_CONSTRAINT="${PIP_CONSTRAINT} /etc/pip/megatron-rm-torch.txt"

WORKDIR /workspace/megatron-rm
COPY . .

# Into the container's Python, next to its torch: megatron-core, Hydra, transformers, ...
RUN pip install --no-cache-dir -e ".[test]" \
 && python -c "import torch, megatron.core, megatron_rm; print('torch', torch.__version__, 'megatron-core', megatron.core.__version__)"

# Smoke check on the build machine's CPUs (gloo; no GPU during a build), through the same
# `make test` as CI. The venv sees the container's packages instead of installing torch
# (--system-site-packages, TORCH_SPEC=torch is already satisfied); --without-pip because
# NGC's Python may lack ensurepip (the system pip bootstraps the venv's). The tests launch
# `.venv/bin/torchrun`, which a venv that reuses the system torch does not get: a two-line
# launcher provides it. VLLM_SPEC= keeps vLLM's CPU build out of the image (its tests are then
# skipped): for `rollout.engine=vllm` on the GPUs, install the `vllm` release built for the
# container's torch. The venv and test runs are removed afterwards.
RUN if [ "$RUN_TESTS" = 1 ]; then \
        command -v make >/dev/null \
        || (apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*); \
        make install VENV_FLAGS="--system-site-packages --without-pip" TORCH_SPEC=torch VLLM_SPEC= \
        && printf '#!%s\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n' \
               "$PWD/.venv/bin/python" > .venv/bin/torchrun \
        && chmod +x .venv/bin/torchrun \
        && make test VENV_FLAGS="--system-site-packages --without-pip" TORCH_SPEC=torch VLLM_SPEC= \
        && rm -rf .venv runs; \
    fi
