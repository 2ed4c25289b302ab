"""The seed's algorithm: patch matrix times kernel matrix, one tile at a time.

Each tile's patches are written into one reused buffer (no padded copy of the input, never the
whole patch matrix unless it fits the workspace), then one matrix product per tile does all
groups at once: ``[P, K] @ [K, c_out]`` for ``groups == 1``, a batched
``[G, P, K/G] @ [G, K/G, c_out/G]`` otherwise.
"""

from __future__ import annotations

import numpy as np

from patchconv._patches import Tile, fill_patches, iter_tiles, scatter_patches
from patchconv._spec import ConvSpec

__all__ = ["backward", "forward", "kernel_matrices"]


def kernel_matrices(kernel: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """HWIO kernel -> per-group matrices ``(groups, kh*kw*cg, c_out // groups)``.

    Column j of group g's matrix is output channel ``g * c_out_group + j``: "column j = filter j".
    """
    k_group = spec.kh * spec.kw * spec.c_in_group
    mats = kernel.reshape(k_group, spec.groups, spec.c_out_group)  # (K/G, G, c_out/G)
    return np.ascontiguousarray(mats.transpose(1, 0, 2))  # (G, K/G, c_out/G)


def _buffer(spec: ConvSpec, tiles: list[Tile], dtype: np.dtype) -> np.ndarray:
    largest = max(t.positions for t in tiles)
    return np.empty(largest * spec.patch_size, dtype=dtype)


def _tile_view(flat: np.ndarray, spec: ConvSpec, tile: Tile) -> np.ndarray:
    """The first ``tile.positions`` patches of the reused buffer, shaped for fill/scatter."""
    size = tile.positions * spec.patch_size
    return flat[:size].reshape(*tile.shape, spec.groups, spec.kh, spec.kw, spec.c_in_group)


def _block(arr: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's (P, c) block of an NHWC array, as a view (tiles are contiguous by design)."""
    view = arr[tile.n0 : tile.n1, tile.r0 : tile.r1, tile.c0 : tile.c1]
    assert view.flags.c_contiguous, "tiles must be contiguous blocks of a C-ordered array"
    return view.reshape(tile.positions, arr.shape[-1])


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """NHWC ``x`` (any strides), HWIO ``kernel`` -> NHWC output, all in ``x.dtype``."""
    itemsize = x.dtype.itemsize
    tiles = list(iter_tiles(spec, spec.patch_size * itemsize, workspace_limit))
    flat = _buffer(spec, tiles, x.dtype)
    mats = kernel_matrices(kernel, spec)  # (G, K/G, c_out/G)
    out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype=x.dtype)
    g, k_group, cog = spec.groups, mats.shape[1], spec.c_out_group
    for tile in tiles:
        patches = _tile_view(flat, spec, tile)
        fill_patches(patches, x, spec, tile)
        p = tile.positions
        out_block = _block(out, tile)  # (P, c_out)
        if g == 1:
            np.matmul(patches.reshape(p, k_group), mats[0], out=out_block)
        else:
            per_group = patches.reshape(p, g, k_group).transpose(1, 0, 2)  # (G, P, K/G)
            res = np.matmul(per_group, mats)  # (G, P, c_out/G)
            out_block.reshape(p, g, cog)[...] = res.transpose(1, 0, 2)
        if bias is not None:
            out_block += bias
    return out


def backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    kernel: np.ndarray,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    need_x: bool = True,
    need_kernel: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Gradients of the forward map: ``grad_kernel = patches^T @ grad_out`` and
    ``grad_x = col2im(grad_out @ kernel_matrix^T)``, tile by tile, in ``x.dtype``."""
    itemsize = x.dtype.itemsize
    tiles = list(iter_tiles(spec, spec.patch_size * itemsize, workspace_limit))
    flat = _buffer(spec, tiles, x.dtype)
    mats = kernel_matrices(kernel, spec)  # (G, K/G, c_out/G)
    g, k_group, cog = spec.groups, mats.shape[1], spec.c_out_group
    grad_mats = np.zeros_like(mats) if need_kernel else None
    grad_x = np.zeros((spec.n, spec.h, spec.w, spec.c_in), dtype=x.dtype) if need_x else None
    for tile in tiles:
        p = tile.positions
        go = _block(grad_out, tile)  # (P, c_out)
        patches = _tile_view(flat, spec, tile)
        if grad_mats is not None:
            fill_patches(patches, x, spec, tile)
            if g == 1:
                grad_mats[0] += patches.reshape(p, k_group).T @ go
            else:
                pt = patches.reshape(p, g, k_group).transpose(1, 2, 0)  # (G, K/G, P)
                grad_mats += np.matmul(pt, go.reshape(p, g, cog).transpose(1, 0, 2))
        if grad_x is not None:
            if g == 1:
                np.matmul(go, mats[0].T, out=patches.reshape(p, k_group))
            else:
                cols = np.matmul(go.reshape(p, g, cog).transpose(1, 0, 2), mats.transpose(0, 2, 1))
                patches.reshape(p, g, k_group)[...] = cols.transpose(1, 0, 2)  # (P, G, K/G)
            scatter_patches(grad_x, patches, spec, tile)
    grad_kernel = None
    if grad_mats is not None:
        grad_kernel = grad_mats.transpose(1, 0, 2).reshape(
            spec.kh, spec.kw, spec.c_in_group, spec.c_out
        )  # (kh, kw, cg, c_out)
    return grad_x, grad_kernel
