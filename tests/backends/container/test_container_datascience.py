"""The data-science image: the same runner with Debian's numpy, pandas and matplotlib."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from sandbox.policy.model import DEFAULT_POLICY
from sandbox_client import FailureKind, SandboxClient
from tests.backends.container.conftest import (
    DS_IMAGE,
    IMAGE,
    SCOPE,
    MiB,
    assert_healthy,
    make_backend,
    require,
    run,
)
from tests.conftest import REPO, running_server

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
        # Under the imports the built-in policy denies (policies/data-analysis.toml keeps
        # them): pandas imports ctypes for itself, which is not the code's import.
        denied = DEFAULT_POLICY.denied_imports
        result = await run(backend, code, memory_bytes=512 * MiB, denied_imports=denied)
        assert result.ok, result.failure
        assert result.result == [30, True]
        # The code's own load is refused (once pandas has loaded ctypes, it is loaded).
        own = "import pydoc\npydoc.locate('ctypes')"
        refused = await run(backend, own, denied_imports=denied)
        assert refused.failure is not None, refused
        assert refused.failure.kind is FailureKind.POLICY_VIOLATION, refused.failure
        assert refused.failure.details["target"] == "ctypes"
        await assert_healthy(backend)
    finally:
        await backend.stop()


def test_numpy_on_the_plain_image_names_the_policy_that_has_it(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    """`import numpy` under the default policy (the plain image) fails as the code's own
    error, and says which policy's image has numpy: the repository's data-analysis."""
    try:
        engine.images.get(DS_IMAGE)
    except docker.errors.ImageNotFound:
        require(f"the image {DS_IMAGE} is missing; build it with `make image`")
    policies = tmp_path / "policies"
    policies.mkdir()
    shipped = (REPO / "policies" / "data-analysis.toml").read_text()
    (policies / "data-analysis.toml").write_text(
        shipped.replace("sandbox-runner-datascience:latest", DS_IMAGE)
    )
    container = {"enabled": True, "image": IMAGE, "pool_size": 0, "scope": SCOPE}
    with (
        running_server(container=container, policies={"dir": str(policies)}) as server,
        SandboxClient(server.address, timeout_s=120) as client,
    ):
        result = client.execute("import numpy\nnumpy.zeros(3)", backend="container")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == "ModuleNotFoundError"
    assert failure.details["provided_by_policies"] == "data-analysis"
    assert "send policy='data-analysis'" in failure.message
