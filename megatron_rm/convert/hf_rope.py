"""RoPE settings in `config.json`, as either generation of transformers spells them.

transformers 5 writes one `rope_parameters` entry (`rope_type`, `rope_theta` and the type's
parameters); 4.x wrote a top-level `rope_theta` and a `rope_scaling` dict (null when unscaled),
and reads nothing else, while 5 still reads those keys. Importing reads either; exports write
both, so that either generation builds the same model from them.
"""

from __future__ import annotations

from pathlib import Path

from megatron_rm.config import RopeScalingConfig
from megatron_rm.errors import CheckpointError

ROPE_PARAMETERS = {"default": (), "linear": ("factor",),
                   "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
"""The RoPE types we implement and the parameters each reads; any other key in the settings
would change the model in a way we do not reproduce, so it is refused."""
_ROPE_NEUTRAL = {"rope_type", "type", "rope_theta"}


def rope_settings(hf: dict, source: Path) -> tuple[float, RopeScalingConfig | None]:
    """The RoPE base and scaling of config `hf` (read from `source`), in either spelling.

    A config may hold both (our exports do): they must then agree, since 4.x and 5 would build
    different models from a disagreement. Neither, or a type or parameter we do not implement,
    is refused rather than read as a default.
    """
    parameters, legacy_scaling = (_json_object(hf, key, source) for key in ("rope_parameters", "rope_scaling"))
    if any(isinstance(value, dict) for value in parameters.values()):
        raise CheckpointError(f"{source}: rope_parameters={parameters!r} is given per layer type; one RoPE "
                              "for every layer is implemented")
    theta, legacy_theta = parameters.get("rope_theta"), hf.get("rope_theta")
    if theta is not None and legacy_theta is not None and float(theta) != float(legacy_theta):
        raise CheckpointError(f"{source}: rope_parameters.rope_theta={theta!r} and rope_theta={legacy_theta!r} "
                              "disagree (transformers 4.x reads only rope_theta): keep one of them")
    theta = theta if theta is not None else legacy_theta
    if theta is None:
        raise CheckpointError(f"{source}: no RoPE base: rope_parameters.rope_theta (transformers 5) and "
                              "rope_theta (4.x) are both missing; transformers would assume 10000.0, which is "
                              "wrong for most current models: add the model's value")
    scaling = {key: value for key, value in parameters.items() if key != "rope_theta"}
    if scaling and legacy_scaling and _comparable(scaling) != _comparable(legacy_scaling):
        raise CheckpointError(f"{source}: rope_parameters={parameters!r} and rope_scaling={legacy_scaling!r} "
                              "disagree (transformers 4.x reads only rope_scaling): keep one of them")
    if legacy_scaling:
        return float(theta), _scaling_config("rope_scaling", legacy_scaling, hf, source)
    return float(theta), _scaling_config("rope_parameters", scaling, hf, source)


def _json_object(hf: dict, key: str, source: Path) -> dict:
    """`hf[key]`, a dict; {} when absent or null."""
    value = hf.get(key)
    if value is not None and not isinstance(value, dict):
        raise CheckpointError(f"{source}: {key}={value!r} is not a JSON object")
    return value or {}


def _scaling_config(spelling: str, scaling: dict, hf: dict, source: Path) -> RopeScalingConfig | None:
    """Our scaling for the `spelling` (a config key) entry `scaling`; None for the default type."""
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_PARAMETERS:
        raise CheckpointError(f"{source}: {spelling}.rope_type={rope_type!r} is not supported "
                              f"(supported: {', '.join(ROPE_PARAMETERS)})")
    reads = ROPE_PARAMETERS[rope_type]
    for key, value in scaling.items():
        if key not in _ROPE_NEUTRAL and key not in reads and not (key == "partial_rotary_factor" and value == 1.0):
            raise CheckpointError(f"{source}: {spelling}.{key}={value!r} is not supported with rope_type="
                                  f"{rope_type!r} (it reads {', '.join(reads) or 'nothing'})")
    missing = [key for key in reads if key not in scaling and key != "original_max_position_embeddings"]
    if missing:
        raise CheckpointError(f"{source}: {spelling} with rope_type={rope_type!r} is missing {', '.join(missing)}")
    if rope_type == "default":
        return None
    # transformers 5 takes the context length as the original one when a llama3 entry leaves it out.
    original = scaling.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
    defaults = RopeScalingConfig()
    return RopeScalingConfig(
        rope_type=rope_type,
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling.get("low_freq_factor", defaults.low_freq_factor)),
        high_freq_factor=float(scaling.get("high_freq_factor", defaults.high_freq_factor)),
        original_max_position_embeddings=int(original if original is not None
                                             else defaults.original_max_position_embeddings),
    )


def _comparable(scaling: dict) -> dict:
    """A scaling entry with `type` spelled `rope_type` and numbers as floats, to compare spellings."""
    form = {("rope_type" if key == "type" else key): (float(value) if isinstance(value, (int, float))
                                                       and not isinstance(value, bool) else value)
            for key, value in scaling.items() if key != "rope_theta"}
    form.setdefault("rope_type", "default")
    return form


def legacy_rope_keys(scaling: RopeScalingConfig | None, rotary_base: float) -> dict:
    """The settings in transformers 4.x's spelling: `rope_theta` and `rope_scaling`."""
    return {"rope_theta": rotary_base, "rope_scaling": _legacy_scaling(scaling)}


def _legacy_scaling(scaling: RopeScalingConfig | None) -> dict | None:
    if scaling is None:
        return None
    if scaling.rope_type == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {"rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings}
