"""The Batch stream on the wire, with the raw generated messages (a client that follows
the window and ones that do not): one tagged result per item, refusals as classified
results, the window bounded by the tenant's quota, and bad streams ended without
hurting the server."""

from __future__ import annotations

import json
import queue
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sandbox.access.tenants import new_api_key
from sandbox_client import SandboxClient
from sandbox_client.protocol.convert import result_from_proto
from sandbox_client.protocol.models import ExecutionResult, FailureKind
from sandbox_client.protocol.service import ServiceStub
from sandbox_client.protocol.v1 import sandbox_pb2
from tests.conftest import ServerThread, running_server

KEY, DIGEST = new_api_key()
# About 30-80 ms of Monty work, so items overlap.
SLOW = "t = 0\nfor i in range(300000):\n    t += i\nt"


def item(item_id: int, code: str, **fields: object) -> sandbox_pb2.BatchRequest:
    """A message of one item (the SDK packs several; both are the same to the server)."""
    return sandbox_pb2.BatchRequest(
        items=[
            sandbox_pb2.BatchItem(
                item_id=item_id, request=sandbox_pb2.ExecuteRequest(code=code, **fields)
            )
        ]
    )


class Driver:
    """A Batch call driven by hand: `send()` items whenever, `events()` as they come."""

    def __init__(self, srv: ServerThread, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = grpc.insecure_channel(srv.address)
        self.outgoing: queue.Queue[sandbox_pb2.BatchRequest | None] = queue.Queue()
        self.call = ServiceStub(self.channel).Batch(self._requests(), timeout=60, metadata=metadata)

    def _requests(self) -> Iterator[sandbox_pb2.BatchRequest]:
        while (msg := self.outgoing.get()) is not None:
            yield msg

    def send(self, *msgs: sandbox_pb2.BatchRequest) -> None:
        for msg in msgs:
            self.outgoing.put(msg)

    def close(self) -> None:
        self.outgoing.put(None)

    def window(self) -> int:
        first = next(self.call)
        assert first.HasField("window") and not first.results
        return int(first.window.items)

    def results(self) -> dict[int, ExecutionResult]:
        """Every remaining result, by item id; no item answered twice."""
        found: dict[int, ExecutionResult] = {}
        for msg in self.call:
            assert not msg.HasField("window") and msg.results
            for answer in msg.results:
                assert answer.item_id not in found
                found[answer.item_id] = result_from_proto(answer.result)
        return found

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.call.cancel()
        self.channel.close()


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with running_server(batch={"window": 4, "idle_timeout_s": 1.0}) as server:
        yield server


def serves(srv: ServerThread) -> bool:
    with SandboxClient(srv.address, timeout_s=30) as client:
        return client.execute("1 + 1").result == 2


def test_every_item_gets_one_result_tagged_with_its_id(srv: ServerThread) -> None:
    codes = {
        10: "1 + 1",
        11: "1 / 0",
        12: "",  # INVALID_REQUEST: code is empty
        13: "print('hi')",
        14: "def f(:\n  pass",
    }
    with Driver(srv) as batch:
        assert batch.window() == 4
        # Within the window: at most 4 in flight at once.
        batch.send(*(item(i, codes[i]) for i in list(codes)[:4]))
        first = next(batch.call)
        batch.send(item(14, codes[14]))
        batch.close()
        results = {r.item_id: result_from_proto(r.result) for r in first.results}
        results.update(batch.results())
    assert set(results) == set(codes)
    assert results[10].ok and results[10].result == 2
    assert results[11].failure is not None
    assert results[11].failure.kind is FailureKind.RUNTIME_ERROR
    assert results[11].failure.exception_type == "ZeroDivisionError"
    empty = results[12].failure
    assert empty is not None and empty.kind is FailureKind.INVALID_REQUEST
    assert empty.details.get("field") == "code"
    assert results[13].stdout == "hi\n"
    assert results[14].failure is not None
    assert results[14].failure.kind is FailureKind.SYNTAX_ERROR
    # Each ran as an execution of its own.
    ids = {r.execution_id for r in results.values() if r.execution_id}
    assert len(ids) == 4


def test_bad_fields_are_per_item_failures_naming_the_field(srv: ServerThread) -> None:
    bad = {
        1: item(1, "x", inputs_json="[1, 2]"),
        2: item(2, "x", backend=77),
        3: item(3, "x", limits=sandbox_pb2.Limits(memory_bytes=-1)),
        4: item(4, "x", policy="no-such-policy"),
    }
    with Driver(srv) as batch:
        batch.window()
        batch.send(*bad.values())
        batch.close()
        results = batch.results()
    assert set(results) == set(bad)
    fields = {i: r.failure.details.get("field") for i, r in results.items() if r.failure}
    assert fields[1] == "inputs_json"
    assert fields[2] == "backend"
    assert fields[3] == "limits.memory_bytes"
    assert all(r.failure is not None for r in results.values())
    assert serves(srv)


def test_an_item_sent_beyond_the_window_is_throttled_not_run(srv: ServerThread) -> None:
    with Driver(srv) as batch:
        window = batch.window()
        batch.send(*(item(i, SLOW) for i in range(window + 3)))
        batch.close()
        results = batch.results()
    assert len(results) == window + 3
    throttled = [r for r in results.values() if r.failure is not None]
    ran = [r for r in results.values() if r.ok]
    # The three sent past the window came back at once, unrun, saying so; items sent
    # while the first ones still ran are at least those three.
    assert len(throttled) >= 3 and len(ran) >= window
    for result in throttled:
        assert result.failure is not None
        assert result.failure.kind is FailureKind.THROTTLED
        assert result.failure.retryable
        assert result.failure.details["quota"] == "batch_window"
        assert not result.execution_id
    assert serves(srv)


def test_a_stream_that_never_sends_is_ended_and_its_slots_returned(srv: ServerThread) -> None:
    started = time.monotonic()
    with Driver(srv) as batch:
        assert batch.window() == 4
        with pytest.raises(grpc.RpcError) as raised:
            next(batch.call)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "idle_timeout_s" in (raised.value.details() or "")
    assert time.monotonic() - started < 10
    assert serves(srv)


def test_an_item_of_ten_mib_ends_the_stream_and_the_server_serves_on(srv: ServerThread) -> None:
    with Driver(srv) as batch:
        batch.window()
        batch.send(item(1, "x = 1\n" * (10 * 1024 * 1024 // 6)))
        with pytest.raises(grpc.RpcError) as raised:
            next(batch.call)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert serves(srv)


def test_an_item_larger_than_the_policy_takes_is_its_own_failure(srv: ServerThread) -> None:
    with Driver(srv) as batch:
        batch.window()
        batch.send(item(1, "x = 1\n" * (2 * 1024 * 1024 // 6)), item(2, "2 + 2"))
        batch.close()
        results = batch.results()
    big = results[1].failure
    assert big is not None and big.kind is FailureKind.INVALID_REQUEST
    assert big.details["field"] == "code" and "accepts at most" in big.message
    assert results[2].result == 4


def test_garbage_bytes_end_the_stream_after_the_items_in_flight() -> None:
    with running_server() as server:
        channel = grpc.insecure_channel(server.address)
        call = channel.stream_stream(
            "/sandbox.v1.SandboxService/Batch",
            request_serializer=lambda b: b,
            response_deserializer=sandbox_pb2.BatchResponse.FromString,
        )
        good = item(1, "3 + 3").SerializeToString()
        responses = list_until_error(call(iter([good, b"\xff\xff\xff\xff"]), timeout=30))
        channel.close()
        events, error = responses
        assert events[0].HasField("window")
        assert [r.item_id for e in events[1:] for r in e.results] == [1]
        assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "could not be decoded" in (error.details() or "")
        assert serves(server)


def list_until_error(
    call: Iterator[sandbox_pb2.BatchResponse],
) -> tuple[list[sandbox_pb2.BatchResponse], grpc.RpcError | None]:
    events = []
    try:
        for event in call:
            events.append(event)
    except grpc.RpcError as error:
        return events, error
    return events, None


def test_keys_repeated_within_a_batch_are_refused_per_item(srv: ServerThread) -> None:
    """100,000 items under one key: the first runs, every other is INVALID_REQUEST on
    idempotency_key, each answered, and the server serves others meanwhile."""
    count = 100_000
    with SandboxClient(srv.address, timeout_s=300) as client:
        results = client.as_completed(
            ({"code": "7 * 6", "idempotency_key": "same"} for _ in range(count)),
            concurrency=64,
        )
        seen = 0
        kinds: dict[str, int] = {}
        for index, result in results:
            seen += 1
            kind = result.failure.kind.value if result.failure else "OK"
            kinds[kind] = kinds.get(kind, 0) + 1
            if index == 0:
                assert result.result == 42
            else:
                assert result.failure is not None
                assert result.failure.details["field"] == "idempotency_key"
            if seen == count // 2:
                assert serves(srv)
    assert seen == count
    assert kinds == {"OK": 1, "INVALID_REQUEST": count - 1}


def test_the_window_is_bounded_by_the_tenants_free_slots(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        textwrap.dedent(f"""
            [tenants.t]
            api_key_sha256 = ["{DIGEST}"]
            max_concurrent = 3
            rate_per_s = 10000
            burst = 10000
        """)
    )
    auth = (("authorization", f"Bearer {KEY}"),)
    with running_server(tenants={"file": tenants}, batch={"window": 16}) as server:
        access = server.server.access
        with Driver(server, metadata=auth) as batch:
            assert batch.window() == 3  # max_concurrent, not [batch] window
            with Driver(server, metadata=auth) as other:
                # The first batch holds all three: the second is refused admission.
                with pytest.raises(grpc.RpcError) as raised:
                    other.window()
                assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            batch.send(*(item(i, SLOW) for i in range(3)))
            batch.close()
            assert all(r.ok for r in batch.results().values())
            assert access.peak_concurrency("t") == 3
        # Every slot is given back once the batch ends.
        deadline = time.monotonic() + 5
        while access._buckets["t"].running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert access._buckets["t"].running == 0


def test_items_take_rate_tokens_and_wait_for_them(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        textwrap.dedent(f"""
            [tenants.t]
            api_key_sha256 = ["{DIGEST}"]
            max_concurrent = 4
            rate_per_s = 20
            burst = 5
        """)
    )
    with (
        running_server(tenants={"file": tenants}) as server,
        SandboxClient(server.address, timeout_s=60, api_key=KEY) as client,
    ):
        started = time.monotonic()
        results = list(client.map([f"{i} + 1" for i in range(25)]))
        elapsed = time.monotonic() - started
    assert [r.result for r in results] == [i + 1 for i in range(25)]
    # 5 from the burst (less the call's own token), 20 more at 20/s: about a second.
    assert elapsed >= 0.8


def test_many_batches_at_once_all_answered(srv: ServerThread) -> None:
    outcomes: list[list[object]] = []

    def one(n: int) -> None:
        with SandboxClient(srv.address, timeout_s=60) as client:
            outcomes.append([r.result for r in client.map([f"{n} * {i}" for i in range(50)])])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(json.dumps(o) for o in outcomes) == sorted(
        json.dumps([n * i for i in range(50)]) for n in range(4)
    )
