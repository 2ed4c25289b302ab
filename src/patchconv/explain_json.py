"""The walkthrough as one JSON object (reads a Walkthrough, computes nothing).

Shapes are lists, arrays nested lists of Python floats (a float32 value converts to a double
exactly, so nothing is lost), and ``flat_kernel`` is shown as the seed shows it: ``(K, c_out)``
for one group, ``(groups, K/groups, c_out/groups)`` otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from patchconv.explain import Walkthrough

__all__ = ["render_json", "to_dict"]


def _jsonable(value: Any) -> Any:
    """Options as the caller gave them (tuples become lists, numpy scalars Python numbers)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_dict(wt: Walkthrough, *, arrays: bool = True) -> dict[str, Any]:
    """Every shape, number and (with ``arrays``) array of the walkthrough, JSON-ready."""
    spec = wt.spec
    data: dict[str, Any] = {
        "input_shape": list(wt.input_shape),
        "kernel_shape": list(wt.kernel_shape),
        "bias_shape": list(wt.bias_shape),
        "output_shape": list(wt.output_shape),
        "dtype": str(wt.output.dtype),
        "options": {k: _jsonable(v) for k, v in wt.options.items()},
        "resolved": {
            "strides": list(spec.strides),
            "dilation_rate": list(spec.dilation),
            "pads": [list(p) for p in spec.pads],
            "groups": spec.groups,
            "data_format": spec.data_format,
            "oh": spec.oh,
            "ow": spec.ow,
        },
        "batch_index": wt.batch_index,
        "position": list(wt.position),
        "patch_origin": list(wt.patch_origin),
        "patch_in_padding": wt.patch_in_padding.tolist(),
        "patch_shape": list(wt.patch.shape),
        "flat_patch_shape": list(wt.flat_patch.shape),
        "flat_kernel_shape": list(wt.kernel_matrix.shape),
        "output_for_patch": wt.output_for_patch.tolist(),
        "conv_output_at_position": wt.conv_output_at_position.tolist(),
        "max_abs_diff": wt.max_abs_diff,
        "all_patches_shape": list(wt.all_patches.shape),
        "all_patches_row": wt.patch_row,
        "all_patches_max_abs_diff": wt.all_patches_max_abs_diff,
        "tolerance": wt.tolerance,
        "matches": wt.matches,
        "slices_equal": list(wt.slices_equal),
        "notes": dict(wt.notes),
        "steps": [
            {
                "key": s.key,
                "title": s.title,
                "shapes": {k: list(v) for k, v in s.shapes.items()},
            }
            for s in wt.steps
        ],
    }
    if arrays:
        data.update(
            x=wt.x.tolist(),
            kernel=wt.kernel.tolist(),
            bias=wt.bias.tolist(),
            output=wt.output.tolist(),
            patch=wt.patch.tolist(),
            flat_patch=wt.flat_patch.tolist(),
            flat_kernel=wt.kernel_matrix.tolist(),
        )
    return data


def render_json(wt: Walkthrough, *, arrays: bool = True) -> str:
    """:func:`to_dict` as one line of JSON text."""
    return json.dumps(to_dict(wt, arrays=arrays), allow_nan=False)
