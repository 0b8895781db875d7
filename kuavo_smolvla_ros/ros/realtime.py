"""``policy_node_rt``: the policy node under SCHED_FIFO, or one line that says how to allow it.

The launch file's ``realtime:=true`` runs this instead of ``chrt -f 10 policy_node``. ``chrt``
printed "failed to set pid 0's policy", the node "died" and ``ros2 launch`` still exited 0, with
nothing saying how to fix it. Here the process asks for SCHED_FIFO itself; when the kernel refuses
(no CAP_SYS_NICE and an rtprio limit of 0) it prints one line naming the three ways to grant it
and exits with ``EXIT_NO_REALTIME``, which the launch file turns into a failed launch.

On success the node runs in this process; threads it starts inherit the policy, and the
inference child process resets itself to normal scheduling at nice +10 (runners/process.py).

    policy_node_rt [--priority N] [--ros-args ...]
"""

from __future__ import annotations

import os
import resource
import sys

EXIT_NO_REALTIME = 78  # EX_CONFIG: the system's configuration does not allow it
DEFAULT_PRIORITY = 10


def how_to_grant(priority: int, error: str) -> str:
    """The one line printed when SCHED_FIFO is refused."""
    return (
        f"realtime:=true: SCHED_FIFO priority {priority} refused ({error}); grant it with an rtprio"
        f" limit (add '{_user()} - rtprio {max(priority, 20)}' to /etc/security/limits.conf and"
        " log in again) or CAP_SYS_NICE (sudo setcap cap_sys_nice+ep"
        f" {os.path.realpath(sys.executable)}), or launch with realtime:=false."
    )


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "<user>"


def enter_realtime(priority: int = DEFAULT_PRIORITY) -> str | None:
    """Switch this process to SCHED_FIFO ``priority``; None on success, else the reason."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as exc:
        limit = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
        return f"{exc.strerror}, rtprio limit {limit}, no CAP_SYS_NICE"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _split_priority(argv: list[str]) -> tuple[int, list[str]]:
    """``--priority N`` (before any ``--ros-args``) and the rest for the node."""
    rest = list(argv)
    priority = DEFAULT_PRIORITY
    if "--priority" in rest and (
        "--ros-args" not in rest or rest.index("--priority") < rest.index("--ros-args")
    ):
        i = rest.index("--priority")
        try:
            priority = int(rest[i + 1])
        except (IndexError, ValueError):
            raise SystemExit("policy_node_rt: --priority needs an integer (1..99).") from None
        del rest[i : i + 2]
    return priority, rest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    priority, rest = _split_priority(argv)
    lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
    if not lo <= priority <= hi:
        print(f"policy_node_rt: --priority {priority} outside {lo}..{hi}.", file=sys.stderr)
        return 2
    error = enter_realtime(priority)
    if error is not None:
        print(how_to_grant(priority, error), file=sys.stderr, flush=True)
        return EXIT_NO_REALTIME
    from kuavo_smolvla_ros.ros.node import main as node_main

    return node_main([sys.argv[0], *rest])


if __name__ == "__main__":
    raise SystemExit(main())
