"""The container backend: full CPython in a network-isolated, capped, hardened Docker
container, one per execution (or per session), started ahead by a warm pool.

A run, in order: `ContainerBackend` (backend.py) admits it and takes a ready container
from the `WarmPool` (pool.py), or starts one (conversation.launch: engine.py's docker-py
calls, then the runner's ready frame); `conversation.execute` sends the job and reads
frames over the attach socket (channel.py), relaying tool calls to the ToolHost through
a `ToolBridge` (tools.py) and holding the output cap and the wall clock; the signals it
collected become the result or a failure of the taxonomy (outcome.py); the container is
removed. `check_runtimes` (doctor.py) probes which OCI runtimes work on this machine.
"""

# Design notes:
#
# * protocol.py is the one schema of the host <-> runner frames (types, fields, caps,
#   value_to_json, checked_result_frame). The image ships that very file beside the
#   runner (images/Dockerfile), so it is standard library only and imports nothing of
#   this package; tests/backends/container/test_container_image.py checks the copy in the image.
# * engine.py speaks to the engine by container id and never reads the attach socket;
#   conversation.py never makes an engine call but through engine.py. Both block, and
#   run on the backend's own threads, never on the event loop.
# * Every frame is read as possibly the code's: it runs in the runner's process and can
#   write to the channel. What only the code can have written is POLICY_VIOLATION, what
#   the engine broke SANDBOX_CRASH (outcome.py).
# * This __init__ imports nothing: sandbox.backends.values (the Monty backend's
#   value_to_json) imports protocol.py, and that must not load docker-py. Import the
#   modules themselves (sandbox.backends.container.backend.ContainerBackend).
