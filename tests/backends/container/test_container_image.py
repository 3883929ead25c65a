"""The runner in the image and the host speak one protocol: the image ships the host's own
protocol.py beside the runner, the runner takes its frames, caps and value_to_json from
it, and defines none of them again."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import docker
import docker.errors
import pytest

from sandbox.backends.container import protocol
from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.container.engine import SCOPE_LABEL
from tests.backends.container.conftest import DS_IMAGE, IMAGE, SCOPE, run

REPO = Path(__file__).resolve().parents[3]
RUNNER = REPO / "images" / "runner" / "sandbox_runner.py"
SUPERVISOR = REPO / "images" / "runner" / "supervisor.py"
PROTOCOL = REPO / "sandbox" / "backends" / "container" / "protocol.py"
# What the image holds, and where each came from in the repository.
SHIPPED = {
    "/opt/sandbox/runner.py": RUNNER,
    "/opt/sandbox/supervisor.py": SUPERVISOR,
    "/opt/sandbox/protocol.py": PROTOCOL,
}
REBUILD = "the image is stale: rebuild it with scripts/build_images.sh (`make image`)"


def test_protocol_is_standard_library_only() -> None:
    imported = set()
    for node in ast.walk(ast.parse(PROTOCOL.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= sys.stdlib_module_names | {"__future__"}, imported


@pytest.mark.parametrize("source", [RUNNER, SUPERVISOR], ids=["runner", "supervisor"])
def test_the_runner_takes_the_protocol_and_defines_none_of_it(source: Path) -> None:
    tree = ast.parse(source.read_text())
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
    again = defined & {name for name in vars(protocol) if not name.startswith("__")}
    assert not again, f"the runner defines protocol names itself: {sorted(again)}"
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "protocol"]
    assert imports, "the runner does not import protocol"
    names = {alias.name for alias in imports[0].names}
    assert {"encode_frame", "fatal_frame", "ready_frame"} <= names
    assert source != RUNNER or "value_to_json" in names


def _read(engine: docker.DockerClient, image: str, path: str) -> bytes | None:
    """The file at `path` in `image`; None when it has none."""
    try:
        output: bytes = engine.containers.run(
            image, ["cat", path], remove=True, network_disabled=True, labels={SCOPE_LABEL: SCOPE}
        )
    except docker.errors.ContainerError:
        return None
    return output


@pytest.mark.docker
@pytest.mark.parametrize("image", [IMAGE, DS_IMAGE])
@pytest.mark.parametrize("shipped", sorted(SHIPPED))
def test_the_image_ships_the_repositorys_files(
    engine: docker.DockerClient, image: str, shipped: str
) -> None:
    try:
        engine.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the image {image} is missing; build it with `make image`")
    assert _read(engine, image, shipped) == SHIPPED[shipped].read_bytes(), REBUILD


@pytest.mark.docker
async def test_the_runner_in_the_image_uses_the_shipped_protocol(
    runc_backend: ContainerBackend,
) -> None:
    # The runner is __main__; the code runs in its process and can look.
    code = """
import sys
runner, shipped = sys.modules["__main__"], sys.modules["protocol"]
[
    shipped.__file__,
    runner.value_to_json is shipped.value_to_json,
    runner.encode_frame is shipped.encode_frame,
    runner.MAX_NAME_CHARS == shipped.MAX_NAME_CHARS,
]
"""
    result = await run(runc_backend, code)
    assert result.ok, result.failure
    assert result.result == ["/opt/sandbox/protocol.py", True, True, True]
