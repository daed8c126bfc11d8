"""The grad-free linear layers (model/linear.py) against megatron's own.

With gradients disabled they must give megatron's outputs bit for bit without running its
autograd Function; with gradients enabled they are megatron's forward and backward. Inside
`sampling_products` (generation) a CPU product is oneDNN's: megatron's outputs to rounding.
sdpa_parity_worker.py repeats the no-gradient comparison at TP2, where the row layer's
partial sums are all-reduced.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.tensor_parallel import layers as megatron_layers
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from megatron_rm.model import linear
from megatron_rm.model.layer_spec import transformer_layer_spec
from megatron_rm.model.linear import GradFreeColumnParallelLinear, GradFreeRowParallelLinear, sampling_products
from tests.conftest import tiny_model_config
from tests.model.test_layer_specs import tiny_transformer_config

# name: (megatron's class, ours, constructor options)
LAYERS = {
    "column": (ColumnParallelLinear, GradFreeColumnParallelLinear, {"gather_output": False}),
    "row": (RowParallelLinear, GradFreeRowParallelLinear, {"input_is_parallel": True}),
}
BIASES = {"bias": dict(bias=True, skip_bias_add=False), "no bias": dict(bias=False, skip_bias_add=False),
          "bias returned": dict(bias=True, skip_bias_add=True)}


def layer_pair(kind: str, bias: str, tp_size: int = 1):
    """megatron's layer and ours of kind `kind` (32 -> 48 features), with the same weights
    (a random bias: megatron initialises biases to zero), and an input for this rank."""
    reference_class, our_class, options = LAYERS[kind]
    config = tiny_transformer_config(init_method=torch.nn.init.normal_)
    built = dict(input_size=32, output_size=48, config=config, init_method=config.init_method, **BIASES[bias],
                 **options)
    reference, ours = reference_class(**built), our_class(**built)
    with torch.no_grad():
        if reference.bias is not None:
            reference.bias.normal_()
        ours.load_state_dict(reference.state_dict())
    width = 32 // tp_size if kind == "row" else 32
    generator = torch.Generator().manual_seed(5 + torch.distributed.get_rank())
    return reference, ours, torch.randn(4, 3, width, generator=generator)


def no_grad_outputs(kind: str, bias: str, tp_size: int = 1) -> tuple[list, list]:
    """(megatron's, ours) outputs and returned biases with gradients disabled."""
    reference, ours, inputs = layer_pair(kind, bias, tp_size)
    with torch.no_grad():
        return list(reference(inputs)), list(ours(inputs))


def same(expected: list, actual: list) -> bool:
    return all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
               for a, b in zip(expected, actual, strict=True))


def refuse_megatrons_function(monkeypatch):
    """megatron's matmul Functions (trained and frozen weights) made to fail from here on, so
    a path that runs one is seen."""
    def refuse(*args):
        raise AssertionError("megatron's autograd Function ran")
    for function in (megatron_layers.LinearWithGradAccumulationAndAsyncCommunication,
                     megatron_layers.LinearWithFrozenWeight):
        monkeypatch.setattr(function, "apply", refuse)


@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])
@pytest.mark.parametrize("bias", list(BIASES))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_without_gradients_the_same_bits_without_megatrons_function(single_rank, kind, bias, frozen, monkeypatch):
    reference, ours, inputs = layer_pair(kind, bias)
    with torch.no_grad():
        expected = list(reference(inputs))
    refuse_megatrons_function(monkeypatch)
    ours.requires_grad_(not frozen)
    with torch.no_grad():
        actual = list(ours(inputs))
    with torch.inference_mode():
        in_inference_mode = list(ours(inputs))
    assert expected[0].shape == (4, 3, 48)
    assert same(expected, actual) and same(expected, in_inference_mode)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_with_gradients_megatrons_forward_and_backward(single_rank, kind, monkeypatch):
    reference, ours, inputs = layer_pair(kind, "bias")
    for layer in (reference, ours):
        output, _ = layer(inputs)
        (output * torch.arange(48.0)).sum().backward()
    assert torch.equal(reference.weight.grad, ours.weight.grad) and torch.equal(reference.bias.grad, ours.bias.grad)
    refuse_megatrons_function(monkeypatch)
    with pytest.raises(AssertionError, match="Function ran"):
        ours(inputs)


def test_what_it_cannot_skip_runs_megatrons_forward(single_rank, monkeypatch):
    _, ours, inputs = layer_pair("column", "bias")
    refuse_megatrons_function(monkeypatch)
    with torch.no_grad(), pytest.raises(AssertionError, match="Function ran"):
        ours(inputs, runtime_gather_output=True)
    with torch.no_grad(), pytest.raises(AssertionError, match="Function ran"):
        ours(inputs, weight=torch.nn.Parameter(ours.weight.detach().clone()))


@pytest.mark.skipif(not linear._ONEDNN, reason="this torch has no oneDNN linear")
@pytest.mark.parametrize("bias", list(BIASES))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_sampling_products_are_onednns_and_megatrons_outputs_to_rounding(single_rank, kind, bias, monkeypatch):
    reference, ours, inputs = layer_pair(kind, bias)
    with torch.no_grad():
        expected = list(reference(inputs))

    def refuse(*args, **kwargs):
        raise AssertionError("matmul ran")
    monkeypatch.setattr(torch, "matmul", refuse)
    monkeypatch.setattr(linear, "ONEDNN_MIN_WEIGHT", 0)  # these layers are small
    with torch.no_grad(), sampling_products():
        sampled = list(ours(inputs))
    with torch.no_grad(), pytest.raises(AssertionError, match="matmul ran"):  # the context is left: matmul again
        ours(inputs)
    assert sampled[0].shape == expected[0].shape == (4, 3, 48)
    for want, got in zip(expected, sampled, strict=True):
        assert (want is None) == (got is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_small_sampling_product_stays_matmuls(single_rank):
    reference, ours, inputs = layer_pair("column", "bias")
    with torch.no_grad():
        expected = list(reference(inputs))
        with sampling_products():
            assert same(expected, list(ours(inputs)))  # a 48 x 32 weight: far below oneDNN's threshold


def test_the_local_and_sdpa_specs_build_them():
    for impl in ("local", "sdpa"):
        model = tiny_model_config()
        model.transformer_impl = impl
        spec = transformer_layer_spec(model)
        attention, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
        assert attention.linear_qkv is mlp.linear_fc1 is GradFreeColumnParallelLinear
        assert attention.linear_proj is mlp.linear_fc2 is GradFreeRowParallelLinear
