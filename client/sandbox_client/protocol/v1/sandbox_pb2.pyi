from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    __slots__ = ("wall_time_ms", "memory_bytes", "output_bytes", "max_recursion_depth", "cpu_millis", "pids", "disk_bytes")
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
    def __init__(self, wall_time_ms: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., max_recursion_depth: _Optional[int] = ..., cpu_millis: _Optional[int] = ..., pids: _Optional[int] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("code", "backend", "policy", "inputs_json", "stdin", "limits", "session_id", "idempotency_key", "filename")
    CODE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    code: str
    backend: Backend
    policy: str
    inputs_json: str
    stdin: str
    limits: Limits
    session_id: str
    idempotency_key: str
    filename: str
    def __init__(self, code: _Optional[str] = ..., backend: _Optional[_Union[Backend, str]] = ..., policy: _Optional[str] = ..., inputs_json: _Optional[str] = ..., stdin: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., session_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: ExecutionResult
    def __init__(self, result: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class ExecuteStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: ExecuteRequest
    def __init__(self, request: _Optional[_Union[ExecuteRequest, _Mapping]] = ...) -> None: ...

class ExecuteStreamResponse(_message.Message):
    __slots__ = ("output", "result")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    result: ExecutionResult
    def __init__(self, output: _Optional[_Union[OutputChunk, _Mapping]] = ..., result: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "text")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: Stream
    text: str
    def __init__(self, stream: _Optional[_Union[Stream, str]] = ..., text: _Optional[str] = ...) -> None: ...

class ExecutionResult(_message.Message):
    __slots__ = ("ok", "execution_id", "backend", "fallback_from", "fallback_reason", "fidelity_warning", "stdout", "stdout_truncated", "stderr", "stderr_truncated", "result_json", "exit_code", "failure", "usage", "policy_name", "policy_digest", "session_id", "replayed")
    OK_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FROM_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_WARNING_FIELD_NUMBER: _ClassVar[int]
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
    fallback_reason: str
    fidelity_warning: str
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
    def __init__(self, ok: _Optional[bool] = ..., execution_id: _Optional[str] = ..., backend: _Optional[_Union[Backend, str]] = ..., fallback_from: _Optional[_Union[Backend, str]] = ..., fallback_reason: _Optional[str] = ..., fidelity_warning: _Optional[str] = ..., stdout: _Optional[str] = ..., stdout_truncated: _Optional[bool] = ..., stderr: _Optional[str] = ..., stderr_truncated: _Optional[bool] = ..., result_json: _Optional[str] = ..., exit_code: _Optional[int] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., policy_name: _Optional[str] = ..., policy_digest: _Optional[str] = ..., session_id: _Optional[str] = ..., replayed: _Optional[bool] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("kind", "retryable", "suggested_action", "retry_after_ms", "message", "exception_type", "frames", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    def __init__(self, kind: _Optional[_Union[FailureKind, str]] = ..., retryable: _Optional[bool] = ..., suggested_action: _Optional[_Union[SuggestedAction, str]] = ..., retry_after_ms: _Optional[int] = ..., message: _Optional[str] = ..., exception_type: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("filename", "line", "column", "end_line", "end_column", "function_name", "source_line")
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
    def __init__(self, filename: _Optional[str] = ..., line: _Optional[int] = ..., column: _Optional[int] = ..., end_line: _Optional[int] = ..., end_column: _Optional[int] = ..., function_name: _Optional[str] = ..., source_line: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("wall_ms", "cpu_ms", "peak_memory_bytes")
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_ms: int
    cpu_ms: int
    peak_memory_bytes: int
    def __init__(self, wall_ms: _Optional[int] = ..., cpu_ms: _Optional[int] = ..., peak_memory_bytes: _Optional[int] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("backend", "policy", "limits")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    policy: str
    limits: Limits
    def __init__(self, backend: _Optional[_Union[Backend, str]] = ..., policy: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "backend", "policy_name", "idle_timeout_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    backend: Backend
    policy_name: str
    idle_timeout_ms: int
    def __init__(self, session_id: _Optional[str] = ..., backend: _Optional[_Union[Backend, str]] = ..., policy_name: _Optional[str] = ..., idle_timeout_ms: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "json_schema", "stub", "is_async")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STUB_FIELD_NUMBER: _ClassVar[int]
    IS_ASYNC_FIELD_NUMBER: _ClassVar[int]
    name: str
    json_schema: str
    stub: str
    is_async: bool
    def __init__(self, name: _Optional[str] = ..., json_schema: _Optional[str] = ..., stub: _Optional[str] = ..., is_async: _Optional[bool] = ...) -> None: ...

class RunStart(_message.Message):
    __slots__ = ("request", "tools")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    request: ExecuteRequest
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    def __init__(self, request: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "value_json", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    value_json: str
    error: ToolError
    def __init__(self, call_id: _Optional[int] = ..., value_json: _Optional[str] = ..., error: _Optional[_Union[ToolError, _Mapping]] = ...) -> None: ...

class ToolError(_message.Message):
    __slots__ = ("exception_type", "message", "kind")
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    exception_type: str
    message: str
    kind: FailureKind
    def __init__(self, exception_type: _Optional[str] = ..., message: _Optional[str] = ..., kind: _Optional[_Union[FailureKind, str]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("start", "tool_result")
    START_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    start: RunStart
    tool_result: ToolResult
    def __init__(self, start: _Optional[_Union[RunStart, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("call_id", "name", "args_json", "kwargs_json")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    name: str
    args_json: str
    kwargs_json: str
    def __init__(self, call_id: _Optional[int] = ..., name: _Optional[str] = ..., args_json: _Optional[str] = ..., kwargs_json: _Optional[str] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("output", "tool_call", "result")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    tool_call: ToolCall
    result: ExecutionResult
    def __init__(self, output: _Optional[_Union[OutputChunk, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., result: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("item_id", "request")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    request: ExecuteRequest
    def __init__(self, item_id: _Optional[int] = ..., request: _Optional[_Union[ExecuteRequest, _Mapping]] = ...) -> None: ...

class BatchWindow(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: int
    def __init__(self, items: _Optional[int] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("item_id", "result")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    result: ExecutionResult
    def __init__(self, item_id: _Optional[int] = ..., result: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("window", "results")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    window: BatchWindow
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, window: _Optional[_Union[BatchWindow, _Mapping]] = ..., results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...
