"""The data-science image: the same runner with Debian's numpy, pandas and matplotlib."""

from __future__ import annotations

import docker
import pytest

from tests.backends.container.conftest import (
    DS_IMAGE,
    MiB,
    assert_healthy,
    make_backend,
    require,
    run,
)

pytestmark = pytest.mark.docker


async def test_numpy_pandas_matplotlib(engine: docker.DockerClient) -> None:
    try:
        engine.images.get(DS_IMAGE)
    except docker.errors.ImageNotFound:
        require(f"the image {DS_IMAGE} is missing; build it with `make image`")
    backend = make_backend(image=DS_IMAGE, pool_size=0)
    await backend.start()
    try:
        code = """
import io
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
frame = pd.DataFrame({"x": np.arange(5), "y": np.arange(5) ** 2})
fig, ax = plt.subplots()
ax.plot(frame.x, frame.y)
png = io.BytesIO()
fig.savefig(png, format="png")
[int(frame.y.sum()), png.getvalue()[:4] == b"\\x89PNG"]
"""
        result = await run(backend, code, memory_bytes=512 * MiB)
        assert result.ok, result.failure
        assert result.result == [30, True]
        await assert_healthy(backend)
    finally:
        await backend.stop()
