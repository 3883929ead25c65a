"""One test per way a container run can end, under runc and runsc, each followed by a
`print(1)` that must succeed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import docker
import pytest

from sandbox.backends.container.backend import ContainerBackend
from sandbox.backends.container.engine import SCOPE_LABEL, Engine
from sandbox.config import ContainerSettings
from sandbox_client import Failure, FailureKind, SuggestedAction
from tests.backends.container.conftest import (
    IMAGE,
    LIMITS,
    SCOPE,
    MiB,
    assert_healthy,
    make_backend,
    run,
    runtime_problem,
    signal_on_output,
    started,
)
from tests.conftest import require

pytestmark = pytest.mark.docker


async def assert_runtime_error(backend: ContainerBackend, code: str, exception_type: str) -> None:
    """`code` fails as its own RUNTIME_ERROR raising `exception_type`; the backend serves on."""
    result = await run(backend, code)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == exception_type
    await assert_healthy(backend)


async def test_ok_with_value_stdin_and_inputs(backend: ContainerBackend) -> None:
    code = "import sys\nname = input()\nprint('hi', name)\nprint('e', file=sys.stderr)\nx * 2"
    result = await run(backend, code, stdin="ada\n", inputs={"x": 21})
    assert result.ok, result.failure
    assert (result.stdout, result.stderr, result.result) == ("hi ada\n", "e\n", 42)
    assert result.backend == "container" and result.exit_code == 0
    await assert_healthy(backend)


async def test_full_cpython_stdlib(backend: ContainerBackend) -> None:
    code = "import sqlite3, decimal\n[str(decimal.Decimal(1) / 8), sqlite3.sqlite_version > '3']"
    result = await run(backend, code)
    assert result.ok, result.failure
    assert result.result == ["0.125", True]
    await assert_healthy(backend)


async def test_syntax_error(backend: ContainerBackend) -> None:
    result = await run(backend, "x = 1\ndef f(:\n    pass")
    assert result.failure is not None
    assert result.failure.kind is FailureKind.SYNTAX_ERROR
    assert result.failure.line == 2
    assert result.failure.suggested_action is SuggestedAction.REPAIR
    await assert_healthy(backend)


async def test_runtime_error_with_line(backend: ContainerBackend) -> None:
    code = "def f(d):\n    return d['missing']\n\nprint('before')\nf({})"
    result = await run(backend, code)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR
    assert failure.exception_type == "KeyError"
    assert [f.line for f in failure.frames] == [5, 2]
    assert failure.frames[-1].function_name == "f"
    assert result.stdout == "before\n"
    assert not failure.retryable
    await assert_healthy(backend)


async def test_timeout(backend: ContainerBackend) -> None:
    started = time.monotonic()
    result = await run(backend, "while True:\n    pass", wall_time_ms=1500)
    assert result.failure is not None and result.failure.kind is FailureKind.TIMEOUT
    assert time.monotonic() - started < 6
    await assert_healthy(backend)


async def test_a_set_result_is_the_same_sorted_array_as_in_monty(
    backend: ContainerBackend,
) -> None:
    result = await run(backend, "{3, 1, 2} | {10}")
    assert result.ok and result.result == [1, 2, 3, 10], result


async def test_timeout_names_the_line_the_code_was_at(backend: ContainerBackend) -> None:
    code = "def spin():\n    while True:\n        pass\n\nprint('go')\nspin()"
    result = await run(backend, code, wall_time_ms=1500)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.TIMEOUT, failure
    assert [(f.line, f.function_name) for f in failure.frames] in ([(2, "spin")], [(3, "spin")])
    assert failure.message.endswith((" (line 2: while True:)", " (line 3: pass)")), failure
    await assert_healthy(backend)


async def test_oom_is_memory_limit(backend: ContainerBackend) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 * 2**20))"
    result = await run(backend, code)
    assert result.failure is not None, result
    assert result.failure.kind is FailureKind.MEMORY_LIMIT, result.failure
    await assert_healthy(backend)


async def test_the_pids_cap_is_named_when_a_fork_is_refused(backend: ContainerBackend) -> None:
    code = "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(30)"
    result = await run(backend, code, pids=32, memory_bytes=1024 * MiB)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == "BlockingIOError"
    assert (failure.details["limit"], failure.details["limit_value"]) == ("pids", "32")
    assert failure.frames[-1].line == 3
    await assert_healthy(backend)


async def test_the_disk_cap_is_named_when_a_write_is_refused(backend: ContainerBackend) -> None:
    code = "with open('fill', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)"
    result = await run(backend, code)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.details["limit"] == "disk_bytes", failure
    assert failure.details["limit_value"] == str(LIMITS.disk_bytes)
    await assert_healthy(backend)


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_an_oom_kill_is_found_in_the_engines_event_log(
    engine: docker.DockerClient, runtime: str
) -> None:
    """dockerd can leave a runsc container's OOMKilled flag unset when it learns of the
    kill after the exit; its event log then has it (under runc, always), and a kill from
    outside is never taken for one. (Under load the runsc shim can miss the OOM event
    too: the runner's memory frame covers that, test_oom_is_memory_limit.)"""
    require(runtime_problem(engine, runtime))
    ours = Engine(docker_host=None, labels={}, max_pool=1)
    eater = ["python3", "-c", "b = []\nwhile True: b.append(b'x' * 2**24)"]
    common: dict[str, object] = {
        "entrypoint": [],
        "runtime": runtime,
        "network_mode": "none",
        "detach": True,
        "mem_limit": 128 * MiB,
        "memswap_limit": 128 * MiB,
        "labels": {SCOPE_LABEL: SCOPE},
    }
    oomed = engine.containers.run(IMAGE, eater, **common)
    killed = engine.containers.run(IMAGE, ["sleep", "60"], **common)
    try:
        oomed.wait(timeout=60)
        killed.kill()
        killed.wait(timeout=60)
        for container, was_oom in ((oomed, True), (killed, False)):
            container.reload()
            state = container.attrs["State"]
            assert state["ExitCode"] == 137
            found = ours._oom_event(container.id, state["StartedAt"])
            if was_oom and runtime == "runc":
                assert found
            if not was_oom:
                assert not found
    finally:
        oomed.remove(force=True)
        killed.remove(force=True)
        ours.close()


@pytest.mark.parametrize(
    "code",
    [
        "raise MemoryError('memory limit exceeded')",
        "def f():\n    raise MemoryError\nf()",
        "try:\n    raise MemoryError('x')\nexcept MemoryError:\n    raise",
    ],
)
async def test_the_codes_own_memory_error_is_a_runtime_error(
    backend: ContainerBackend, code: str
) -> None:
    await assert_runtime_error(backend, code, "MemoryError")


async def test_output_cap_is_output_limit_and_truncated(backend: ContainerBackend) -> None:
    result = await run(backend, "i = 0\nwhile True:\n    print(i)\n    i += 1", output_bytes=4096)
    assert result.failure is not None and result.failure.kind is FailureKind.OUTPUT_LIMIT
    assert result.stdout_truncated
    assert len(result.stdout.encode()) <= 4096
    assert result.stdout.startswith("0\n1\n2\n")
    await assert_healthy(backend)


async def test_oversized_result_is_output_limit(backend: ContainerBackend) -> None:
    result = await run(backend, "'x' * 10_000", output_bytes=1000)
    assert result.failure is not None and result.failure.kind is FailureKind.OUTPUT_LIMIT
    assert result.failure.details["part"] == "result"
    await assert_healthy(backend)


async def test_network_is_policy_violation(backend: ContainerBackend) -> None:
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)"
    result = await run(backend, code)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION, failure
    assert "socket" in failure.details["attempted"]
    assert failure.line == 2
    assert failure.suggested_action is SuggestedAction.ESCALATE
    await assert_healthy(backend)


async def test_write_outside_work_dirs_is_policy_violation(backend: ContainerBackend) -> None:
    result = await run(backend, "open('/etc/hosts', 'a').write('1.2.3.4 evil')")
    assert result.failure is not None and result.failure.kind is FailureKind.POLICY_VIOLATION
    assert "/etc/hosts" in result.failure.details["attempted"]
    await assert_healthy(backend)


# The runner's frame writer (its stdin reader is PRIVATE_FD_MIN, 200).
RUNNER_OUT_FD = 201


async def channel_violation(
    backend: ContainerBackend, code: str, attempted: str, **limits: int
) -> Failure:
    """Runs `code`, which writes to the runner's private channel: a POLICY_VIOLATION that
    says so and is not retried, stopped within 10 s (not left to sleep, nor waiting on
    output nobody reads), with the backend healthy afterwards. Returns the failure."""
    started = time.monotonic()
    result = await run(backend, code, **limits)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION, failure
    assert "private channel" in failure.message
    assert failure.details == {"attempted": attempted}
    assert not failure.retryable
    assert time.monotonic() - started < 10
    await assert_healthy(backend)
    return failure


@pytest.mark.parametrize(
    "write",
    [
        "b'not a frame\\n'",
        "b'[1, 2]\\n'",  # JSON, but no frame
        "b'{\"t\": '",  # half a frame: the runner's own next frame completes the garbage
        "b'x' * (1 << 20)",  # a line that never ends, past the line cap (1 MiB + 2 x 4 KiB)
    ],
)
async def test_bytes_the_code_writes_to_the_runners_channel_are_policy_violation(
    backend: ContainerBackend, write: str
) -> None:
    # Not SANDBOX_CRASH: that is retried, and the same code writes the same bytes again.
    code = f"import os\nfor _ in range(64):\n    os.write({RUNNER_OUT_FD}, {write})\nprint(1)"
    await channel_violation(backend, code, "write to the runner's channel", output_bytes=4096)


@pytest.mark.parametrize("then", ["import time\ntime.sleep(30)", "print(1)"])
async def test_a_fatal_frame_the_code_writes_is_policy_violation(
    backend: ContainerBackend, then: str
) -> None:
    # The runner's own fatal frames come before "ready"; during a job only the code can
    # write one. It was INFRA_UNAVAILABLE ("the runner could not start"), retried.
    frame = b'{"t": "fatal", "message": "seccomp: forged\\nsecond line"}\n'
    code = f"import os\nos.write({RUNNER_OUT_FD}, {frame!r})\n{then}"
    failure = await channel_violation(backend, code, "forge a runner frame")
    assert "fatal frame" in failure.message
    assert "seccomp: forged" in failure.message and "second line" not in failure.message


@pytest.mark.parametrize(
    "fields",
    [
        b'"exit_code":"x"',
        b'"exit_code":' + str(10**30).encode(),  # past the wire's int32
        b'"exit_code":0,"usage":"x"',
        b'"exit_code":0,"value":"\\"\\\\ud800\\""',  # JSON text escaping a lone surrogate
    ],
)
async def test_a_result_frame_the_code_forges_is_policy_violation(
    backend: ContainerBackend, fields: bytes
) -> None:
    # Fields the runner never writes failed converting the frame (int(), the proto's
    # int32, the client's json.loads) and escaped as an engine error, or reached the client.
    frame = b'{"t":"result","ok":true,' + fields + b"}\n"
    code = f"import os\nos.write({RUNNER_OUT_FD}, {frame!r})\nimport time\ntime.sleep(30)"
    failure = await channel_violation(backend, code, "forge a runner frame")
    assert "result frame" in failure.message


async def test_names_the_code_chooses_are_clipped_to_fit_the_channel(
    backend: ContainerBackend,
) -> None:
    # Past the line cap unclipped (2 x 1 MiB + 1 MiB): this must stay the code's own
    # error, not look like garbage on the channel.
    result = await run(backend, "raise type('E' * (20 << 20), (Exception,), {})()")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type.startswith("EEE") and len(failure.exception_type) == 500
    code = (
        "for _ in range(20):\n"
        "    try:\n"
        "        open('/' + 'x' * (1 << 20), 'w')\n"
        "    except OSError:\n"
        "        pass\n"
        "open('/etc/hosts', 'a')"
    )
    result = await run(backend, code)
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.POLICY_VIOLATION, failure
    assert failure.details["attempted"].startswith("write to '/xxx")
    await assert_healthy(backend)


async def test_killed_from_outside_is_sandbox_crash(
    backend: ContainerBackend, engine: docker.DockerClient
) -> None:
    printed, sink = signal_on_output()
    code = "print('up', flush=True)\nimport time\ntime.sleep(30)"
    task = asyncio.create_task(run(backend, code, on_output=sink))
    await asyncio.wait_for(printed.wait(), 20)
    (running,) = backend.running_ids()
    await asyncio.to_thread(engine.api.kill, running)
    result = await asyncio.wait_for(task, 20)
    assert result.failure is not None and result.failure.kind is FailureKind.SANDBOX_CRASH
    assert result.failure.retryable
    await assert_healthy(backend)


async def test_runner_exit_status_is_runtime_error(backend: ContainerBackend) -> None:
    result = await run(backend, "import os\nprint('bye', flush=True)\nos._exit(3)")
    assert result.failure is not None and result.failure.kind is FailureKind.RUNTIME_ERROR
    assert result.exit_code == 3
    result = await run(backend, "import sys\nsys.exit(4)")
    assert result.failure is not None and result.failure.exception_type == "SystemExit"
    assert result.exit_code == 4
    assert (await run(backend, "import sys\nsys.exit(0)")).ok
    await assert_healthy(backend)


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        # The statuses CPython's own `python3 -c 'raise SystemExit(...)'` exits with.
        ("10**5000", 255, ""),  # past a C long; no JSON text either (4300-digit limit)
        ("2**63", 255, ""),
        ("-1", 255, ""),
        ("257", 1, ""),
        ("[10**5000]", 1, "<list: str() raised ValueError>"),
        ("'x' * 10**6", 1, "x" * 1997 + "..."),
    ],
)
async def test_any_exit_code_is_reported_as_the_status_cpython_gives(
    backend: ContainerBackend, code: str, status: int, message: str
) -> None:
    # SystemExit(10**5000) broke the runner's result frame: INFRA_UNAVAILABLE, retried.
    result = await run(backend, f"raise SystemExit({code})")
    failure = result.failure
    assert failure is not None and failure.kind is FailureKind.RUNTIME_ERROR, failure
    assert failure.exception_type == "SystemExit" and not failure.retryable
    assert result.exit_code == status
    assert failure.details == {"exit_code": str(status)}
    shown = f"SystemExit: exit status {status}" + (f": {message}" if message else "")
    assert (
        failure.message.startswith(shown[:60]) and "(line 1: raise SystemExit(" in failure.message
    )
    assert len(failure.message) < 3000  # a long message is clipped


async def test_huge_ints_the_code_chooses_do_not_break_the_result_frame(
    backend: ContainerBackend,
) -> None:
    # An exit status CPython takes modulo 256 to 0 is a clean exit, as for the process.
    assert (await run(backend, "raise SystemExit(2**40)")).ok
    result = await run(backend, "10**5000")
    assert result.ok and result.result == "<int of about 5001 digits>", result
    # The runner's tool mark on an exception, set by the code to a huge int.
    code = "e = ValueError('v')\ne._sandbox_tool_seq = 10**5000\nraise e"
    await assert_runtime_error(backend, code, "ValueError")


async def test_engine_unreachable_is_infra_unavailable(backend: ContainerBackend) -> None:
    settings = ContainerSettings(docker_host="unix:///nonexistent/docker.sock", pool_size=0)
    async with started(ContainerBackend(settings)) as unreachable:
        result = await run(unreachable, "print(1)")
    assert result.failure is not None and result.failure.kind is FailureKind.INFRA_UNAVAILABLE
    assert result.failure.retryable and result.failure.retry_after_ms > 0
    await assert_healthy(backend)


async def test_image_missing_is_infra_unavailable(backend: ContainerBackend) -> None:
    missing = make_backend(backend.runtime, image="sandbox-runner-missing:none", pool_size=0)
    async with started(missing):
        result = await run(missing, "print(1)")
    assert result.failure is not None and result.failure.kind is FailureKind.INFRA_UNAVAILABLE
    assert "make image" in result.failure.message
    await assert_healthy(backend)


async def test_full_queue_is_infra_unavailable(backend: ContainerBackend) -> None:
    narrow = make_backend(backend.runtime, pool_size=1, max_concurrency=1, queue_size=0)
    async with started(narrow):
        printed, sink = signal_on_output()
        slow = asyncio.create_task(
            run(narrow, "print('up', flush=True)\nimport time\ntime.sleep(2)", on_output=sink)
        )
        await asyncio.wait_for(printed.wait(), 20)
        refused = await run(narrow, "print(1)")
        assert (await slow).ok
        after = await run(narrow, "print(1)")
    assert refused.failure is not None
    assert refused.failure.kind is FailureKind.INFRA_UNAVAILABLE
    assert refused.failure.retry_after_ms > 0
    assert after.ok
    await assert_healthy(backend)


async def test_session_keeps_state_until_a_timeout_ends_it(backend: ContainerBackend) -> None:
    session = await backend.open_session(LIMITS)
    try:
        assert (await run(backend, "counter = 41", session=session)).ok
        result = await run(backend, "counter += 1\ncounter", session=session)
        assert result.result == 42
        failed = await run(backend, "1/0", session=session)
        assert failed.failure is not None and failed.failure.kind is FailureKind.RUNTIME_ERROR
        assert session.alive  # a plain exception keeps the interpreter
        timed_out = await run(backend, "while True: pass", session=session, wall_time_ms=1000)
        assert timed_out.failure is not None and timed_out.failure.kind is FailureKind.TIMEOUT
        assert not session.alive
        lost = await run(backend, "counter", session=session)
        assert lost.failure is not None and lost.failure.kind is FailureKind.CORRUPT_STATE
    finally:
        await backend.close_session(session)
    await assert_healthy(backend)


async def test_pool_holds_its_size_and_stop_removes_everything(
    engine: docker.DockerClient,
) -> None:
    own = make_backend(pool_size=3)
    async with started(own):
        for _ in range(5):
            assert (await run(own, "print(1)")).ok
        await own.settled()
        assert len(await own.containers()) == 3
    left = engine.containers.list(
        all=True, filters={"label": f"dev.sandbox.instance={own.instance}"}
    )
    assert left == []


async def test_start_reaps_what_a_dead_server_left(engine: docker.DockerClient) -> None:
    labels = {
        "dev.sandbox.owner": "sandbox-server",
        "dev.sandbox.scope": SCOPE,
        "dev.sandbox.owner-process": "ignored-host:1:0",
    }
    dead = dict(labels, **{"dev.sandbox.owner-process": f"{socket.gethostname()}:999999999:1"})
    foreign = await asyncio.to_thread(
        engine.containers.create, "sandbox-runner:latest", "true", labels=labels
    )
    leftover = await asyncio.to_thread(
        engine.containers.create, "sandbox-runner:latest", "true", labels=dead
    )
    fresh = make_backend(pool_size=0)
    await fresh.start()
    await fresh.stop()
    remaining = {
        c.id
        for c in engine.containers.list(all=True, filters={"label": f"dev.sandbox.scope={SCOPE}"})
    }
    assert leftover.id not in remaining
    assert foreign.id in remaining  # another host's: not ours to judge
    foreign.remove(force=True)


def labelled(engine: docker.DockerClient, label: str) -> set[str]:
    return {c.id for c in engine.containers.list(all=True, filters={"label": label})}


async def test_a_pool_container_killed_while_idle_is_not_handed_out(
    engine: docker.DockerClient,
) -> None:
    """The pool's container dies while it waits (killed from outside): the next run gets
    a live one, not the dead one's SANDBOX_CRASH."""
    from sandbox.backends.container.engine import INSTANCE_LABEL

    async with started(make_backend(pool_size=1)) as backend:
        await backend.settled()
        (idle,) = engine.containers.list(filters={"label": f"{INSTANCE_LABEL}={backend.instance}"})
        idle.kill()
        idle.wait(timeout=30)
        result = await run(backend, "print(1)")
        assert result.ok, result.failure
        assert result.stdout == "1\n"


async def test_a_launch_cancelled_midway_leaves_no_container(engine: docker.DockerClient) -> None:
    """A request whose deadline passes while its fresh container starts: the container,
    once up, is removed, not left running until the server stops."""
    from sandbox.backends.container.engine import INSTANCE_LABEL

    async with started(make_backend(pool_size=0)) as backend:
        ours = {"label": f"{INSTANCE_LABEL}={backend.instance}"}
        for _ in range(3):
            task = asyncio.create_task(run(backend, "print(1)"))
            await asyncio.sleep(0.08)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _ in range(120):  # each launch ends within the engine's own time; then gone
            left = engine.api.containers(all=True, filters=ours)  # no inspect: may vanish
            if not left:
                break
            await asyncio.sleep(0.5)
        assert left == []
