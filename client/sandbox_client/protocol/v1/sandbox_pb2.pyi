from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    AUTO: _ClassVar[Backend]
    MONTY: _ClassVar[Backend]
    CONTAINER: _ClassVar[Backend]

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    SYNTAX_ERROR: _ClassVar[FailureKind]
    RUNTIME_ERROR: _ClassVar[FailureKind]
    TIMEOUT: _ClassVar[FailureKind]
    MEMORY_LIMIT: _ClassVar[FailureKind]
    OUTPUT_LIMIT: _ClassVar[FailureKind]
    POLICY_VIOLATION: _ClassVar[FailureKind]
    UNSUPPORTED: _ClassVar[FailureKind]
    SANDBOX_CRASH: _ClassVar[FailureKind]
    INFRA_UNAVAILABLE: _ClassVar[FailureKind]
    THROTTLED: _ClassVar[FailureKind]
    CANCELLED: _ClassVar[FailureKind]
    INVALID_REQUEST: _ClassVar[FailureKind]
    CORRUPT_STATE: _ClassVar[FailureKind]
    TOOL_ERROR: _ClassVar[FailureKind]

class SuggestedAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUGGESTED_ACTION_UNSPECIFIED: _ClassVar[SuggestedAction]
    RETRY: _ClassVar[SuggestedAction]
    REPAIR: _ClassVar[SuggestedAction]
    FALLBACK: _ClassVar[SuggestedAction]
    ESCALATE: _ClassVar[SuggestedAction]
    ABORT: _ClassVar[SuggestedAction]

class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_UNSPECIFIED: _ClassVar[Stream]
    STDOUT: _ClassVar[Stream]
    STDERR: _ClassVar[Stream]
BACKEND_UNSPECIFIED: Backend
AUTO: Backend
MONTY: Backend
CONTAINER: Backend
FAILURE_KIND_UNSPECIFIED: FailureKind
SYNTAX_ERROR: FailureKind
RUNTIME_ERROR: FailureKind
TIMEOUT: FailureKind
MEMORY_LIMIT: FailureKind
OUTPUT_LIMIT: FailureKind
POLICY_VIOLATION: FailureKind
UNSUPPORTED: FailureKind
SANDBOX_CRASH: FailureKind
INFRA_UNAVAILABLE: FailureKind
THROTTLED: FailureKind
CANCELLED: FailureKind
INVALID_REQUEST: FailureKind
CORRUPT_STATE: FailureKind
TOOL_ERROR: FailureKind
SUGGESTED_ACTION_UNSPECIFIED: SuggestedAction
RETRY: SuggestedAction
REPAIR: SuggestedAction
FALLBACK: SuggestedAction
ESCALATE: SuggestedAction
ABORT: SuggestedAction
STREAM_UNSPECIFIED: Stream
STDOUT: Stream
STDERR: Stream

class Limits(_message.Message):
    __slots__ = ("cpu_millis", "disk_bytes", "max_recursion_depth", "memory_bytes", "output_bytes", "pids", "wall_time_ms")
    WALL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RECURSION_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_time_ms: int
    memory_bytes: int
    output_bytes: int
    max_recursion_depth: int
    cpu_millis: int
    pids: int
    disk_bytes: int
    def __init__(self, wall_time_ms: int | None = ..., memory_bytes: int | None = ..., output_bytes: int | None = ..., max_recursion_depth: int | None = ..., cpu_millis: int | None = ..., pids: int | None = ..., disk_bytes: int | None = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("backend", "code", "idempotency_key", "inputs_json", "limits", "policy", "session_id", "stdin")
    CODE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    code: str
    backend: Backend
    policy: str
    inputs_json: str
    stdin: str
    limits: Limits
    session_id: str
    idempotency_key: str
    def __init__(self, code: str | None = ..., backend: Backend | str | None = ..., policy: str | None = ..., inputs_json: str | None = ..., stdin: str | None = ..., limits: Limits | _Mapping | None = ..., session_id: str | None = ..., idempotency_key: str | None = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: ExecutionResult
    def __init__(self, result: ExecutionResult | _Mapping | None = ...) -> None: ...

class ExecuteStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: ExecuteRequest
    def __init__(self, request: ExecuteRequest | _Mapping | None = ...) -> None: ...

class ExecuteStreamResponse(_message.Message):
    __slots__ = ("output", "result")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    result: ExecutionResult
    def __init__(self, output: OutputChunk | _Mapping | None = ..., result: ExecutionResult | _Mapping | None = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "text")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: Stream
    text: str
    def __init__(self, stream: Stream | str | None = ..., text: str | None = ...) -> None: ...

class ExecutionResult(_message.Message):
    __slots__ = ("backend", "execution_id", "exit_code", "failure", "fallback_from", "ok", "policy_digest", "policy_name", "replayed", "result_json", "session_id", "stderr", "stderr_truncated", "stdout", "stdout_truncated", "usage")
    OK_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FROM_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    execution_id: str
    backend: Backend
    fallback_from: Backend
    stdout: str
    stdout_truncated: bool
    stderr: str
    stderr_truncated: bool
    result_json: str
    exit_code: int
    failure: Failure
    usage: Usage
    policy_name: str
    policy_digest: str
    session_id: str
    replayed: bool
    def __init__(self, ok: bool | None = ..., execution_id: str | None = ..., backend: Backend | str | None = ..., fallback_from: Backend | str | None = ..., stdout: str | None = ..., stdout_truncated: bool | None = ..., stderr: str | None = ..., stderr_truncated: bool | None = ..., result_json: str | None = ..., exit_code: int | None = ..., failure: Failure | _Mapping | None = ..., usage: Usage | _Mapping | None = ..., policy_name: str | None = ..., policy_digest: str | None = ..., session_id: str | None = ..., replayed: bool | None = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("details", "exception_type", "frames", "kind", "message", "retry_after_ms", "retryable", "suggested_action")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_ACTION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    kind: FailureKind
    retryable: bool
    suggested_action: SuggestedAction
    retry_after_ms: int
    message: str
    exception_type: str
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    details: _containers.ScalarMap[str, str]
    def __init__(self, kind: FailureKind | str | None = ..., retryable: bool | None = ..., suggested_action: SuggestedAction | str | None = ..., retry_after_ms: int | None = ..., message: str | None = ..., exception_type: str | None = ..., frames: _Iterable[Frame | _Mapping] | None = ..., details: _Mapping[str, str] | None = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("column", "end_column", "end_line", "filename", "function_name", "line", "source_line")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    END_LINE_FIELD_NUMBER: _ClassVar[int]
    END_COLUMN_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LINE_FIELD_NUMBER: _ClassVar[int]
    filename: str
    line: int
    column: int
    end_line: int
    end_column: int
    function_name: str
    source_line: str
    def __init__(self, filename: str | None = ..., line: int | None = ..., column: int | None = ..., end_line: int | None = ..., end_column: int | None = ..., function_name: str | None = ..., source_line: str | None = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("cpu_ms", "peak_memory_bytes", "wall_ms")
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_ms: int
    cpu_ms: int
    peak_memory_bytes: int
    def __init__(self, wall_ms: int | None = ..., cpu_ms: int | None = ..., peak_memory_bytes: int | None = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("backend", "limits", "policy")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    policy: str
    limits: Limits
    def __init__(self, backend: Backend | str | None = ..., policy: str | None = ..., limits: Limits | _Mapping | None = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("backend", "idle_timeout_ms", "policy_name", "session_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    backend: Backend
    policy_name: str
    idle_timeout_ms: int
    def __init__(self, session_id: str | None = ..., backend: Backend | str | None = ..., policy_name: str | None = ..., idle_timeout_ms: int | None = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: str | None = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("is_async", "json_schema", "name", "stub")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STUB_FIELD_NUMBER: _ClassVar[int]
    IS_ASYNC_FIELD_NUMBER: _ClassVar[int]
    name: str
    json_schema: str
    stub: str
    is_async: bool
    def __init__(self, name: str | None = ..., json_schema: str | None = ..., stub: str | None = ..., is_async: bool | None = ...) -> None: ...

class RunStart(_message.Message):
    __slots__ = ("request", "tools")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    request: ExecuteRequest
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    def __init__(self, request: ExecuteRequest | _Mapping | None = ..., tools: _Iterable[ToolSpec | _Mapping] | None = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "error", "value_json")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    value_json: str
    error: ToolError
    def __init__(self, call_id: int | None = ..., value_json: str | None = ..., error: ToolError | _Mapping | None = ...) -> None: ...

class ToolError(_message.Message):
    __slots__ = ("exception_type", "kind", "message")
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    exception_type: str
    message: str
    kind: FailureKind
    def __init__(self, exception_type: str | None = ..., message: str | None = ..., kind: FailureKind | str | None = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("start", "tool_result")
    START_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    start: RunStart
    tool_result: ToolResult
    def __init__(self, start: RunStart | _Mapping | None = ..., tool_result: ToolResult | _Mapping | None = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("args_json", "call_id", "kwargs_json", "name")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    name: str
    args_json: str
    kwargs_json: str
    def __init__(self, call_id: int | None = ..., name: str | None = ..., args_json: str | None = ..., kwargs_json: str | None = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("output", "result", "tool_call")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    tool_call: ToolCall
    result: ExecutionResult
    def __init__(self, output: OutputChunk | _Mapping | None = ..., tool_call: ToolCall | _Mapping | None = ..., result: ExecutionResult | _Mapping | None = ...) -> None: ...
