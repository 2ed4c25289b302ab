"""The same lazy graph on a dask.distributed LocalCluster with worker processes.

Only NumPy arrays and patchconv functions travel to the workers; each worker imports patchconv
itself. One cluster for the module, two worker processes, a handful of random cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv.scale import conv2d, local_client
from strategies import Case, conv_cases
from test_scale import chunkings


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = local_client(2, threads_per_worker=1, memory_limit="1GiB", set_as_default=False)
    try:
        assert len(c.scheduler_info()["workers"]) == 2
        yield c
    finally:
        cluster = c.cluster
        c.close()
        cluster.close()


@settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), case=conv_cases(max_batch=2))
def test_local_cluster_equals_in_memory_conv2d(
    client: Any, data: st.DataObject, case: Case
) -> None:
    chunks = data.draw(chunkings(case.x.shape))
    lazy = conv2d(da.from_array(case.x, chunks=chunks), case.kernel, case.bias, **case.options)
    got = client.compute(lazy).result()
    expected = patchconv.conv2d(case.x, case.kernel, case.bias, **case.options)
    assert got.dtype == expected.dtype
    assert_close(got, expected, case.x.dtype)


def test_work_runs_in_the_worker_processes(client: Any) -> None:
    import os

    x = da.from_array(
        np.arange(2 * 12 * 10 * 2, dtype=np.float64).reshape(2, 12, 10, 2), chunks=(1, 5, 4, 2)
    )
    kernel = np.ones((3, 3, 2, 1))
    lazy = conv2d(x, kernel, strides=2, padding="same")
    pids = set(client.run(os.getpid).values())
    assert os.getpid() not in pids and len(pids) == 2
    got = client.compute(lazy).result()
    np.testing.assert_allclose(
        got, patchconv.conv2d(x.compute(), kernel, strides=2, padding="same")
    )


def test_apply_chunks_runs_on_a_cluster_given_by_address(client: Any, tmp_path: Any) -> None:
    import tifffile
    import zarr

    from patchconv.cli import main

    img = np.random.default_rng(5).integers(0, 256, (70, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", img, tile=(16, 16))
    argv = [
        "apply",
        str(tmp_path / "g.tif"),
        "--chunks",
        "32",
        "-f",
        "identity",
        "-o",
        str(tmp_path),
    ]
    assert main([*argv, "--cluster", client.scheduler.address]) == 0
    got = zarr.open_array(tmp_path / "g_identity.zarr", mode="r")[:]
    np.testing.assert_array_equal(got[:, :, 0], img)  # identity, clipped, back to 8 bits
    assert client.run(lambda: 1)  # the cluster is still up: apply closed only its own client
    # An edge filter scales by the image's range first (block_range), block by block on the
    # cluster: that once sent one key in two forms (dask/dask#9888) and failed about half the
    # time; three runs.
    argv[argv.index("identity")] = "sobel_x,laplacian"
    for _ in range(3):
        assert main([*argv, "--cluster", client.scheduler.address]) == 0
    expected = np.abs(
        ndi.correlate(img / 255.0, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], mode="constant")
    )
    got = zarr.open_array(tmp_path / "g_sobel_x.zarr", mode="r")[:, :, 0]
    np.testing.assert_allclose(got / 255.0, expected / expected.max(), atol=1 / 255 + 1e-6)
