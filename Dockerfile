# GPU image: NGC PyTorch ships CUDA, NCCL, TransformerEngine and apex, which
# megatron-rm uses when present (TE layer spec, fused kernels, sequence parallelism).
#   docker build -t megatron-rm .
#   docker run --gpus all --ipc=host -it megatron-rm \
#       torchrun --nproc-per-node 8 tools/train_rm.py parallel.tp=2 parallel.pp=2
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /workspace/megatron-rm
COPY . .
# The container's torch satisfies setup.py's range (NGC's pip constraint file keeps it);
# only megatron-core, Hydra, transformers and friends are added.
RUN pip install --no-cache-dir -e ".[test]"
