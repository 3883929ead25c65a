"""The least of each limit a container can be made with and still start its runner.
Below these the engine refuses the container, or the runner never says it is ready, and
every attempt came back INFRA_UNAVAILABLE, which clients retry forever. Planning
(core/plan.py) refuses a request below them as INVALID_REQUEST naming the field, and
`sandbox policy lint` (policy/files.py) a policy file that allows containers.

Measured (scripts: a print(1) job on a fresh container, the value halved until it fails,
under runc and runsc; docker 20.10, cgroup v1): see each entry. Imports nothing: the
planner and the policy linter read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Minimum:
    value: int
    why: str  # one clause, shown after the number


CONTAINER_MINIMUMS: Mapping[str, Minimum] = {
    "memory_bytes": Minimum(
        48 * MiB,
        "docker refuses less than 6 MiB, and the supervisor and the runner need 17 MiB to "
        "start under runc, 33 MiB under runsc",
    ),
    "cpu_millis": Minimum(
        50,
        "the engine refuses less than 10 (a CFS quota under 1 ms), and below 50 the "
        "supervisor and the runner take 30 s or more to start under runsc, past the 30 s "
        "they are given (at 50: 2.3 s under runc, 8.9 s under runsc)",
    ),
    "pids": Minimum(3, "the supervisor, the runner and its output thread need 3"),
    "disk_bytes": Minimum(
        16 * KiB,
        "each of the 4 tmpfs shares needs a 4 KiB page, and a tmpfs of size 0 has no limit",
    ),
}


def below_container_minimums(limits: Mapping[str, int]) -> list[tuple[str, int, Minimum]]:
    """(field, value, minimum) for each limit in `limits` below its container minimum."""
    return [
        (name, limits[name], minimum)
        for name, minimum in CONTAINER_MINIMUMS.items()
        if name in limits and limits[name] < minimum.value
    ]
