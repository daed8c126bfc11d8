"""What vLLM's worker process runs for the trainer (`LLM(worker_extension_cls=...)`): the pushed
weights loaded in place. Imported by that process, so it imports nothing of the trainer's.

vLLM's own `reload_weights` is the load that works on every build: the `model.load_weights` call
other RL frameworks make fails on vLLM's CPU build once it has repacked its linear layers
(their `weight` is then an empty placeholder), and would leave the packed copy stale anyway.
"""

from __future__ import annotations


class WeightReceiver:
    def load_pushed_weights(self, blob: bytes) -> int:
        """Load a safetensors blob of (Hugging Face name, whole tensor); returns the tensors loaded."""
        from safetensors.torch import load

        tensors = load(blob)
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)
