"""Replay can never reach a robot, and never deletes what it did not write.

Live replay starts the real node enabled (``start_enabled``, not a dry run) on the configured
command topics. Beside a robot on the same ROS network that would drive the robot, whatever
``ROS_DOMAIN_ID`` the shell happens to have. So the node, the player and the recorder always run
on a private, automatically chosen domain with discovery limited to this host
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; static peers and discovery servers from the shell
are dropped), and the replay says so in one line.

The output directory is claimed with a marker file listing what replay writes there. An existing
directory that holds anything else is refused before any work, in both modes; nothing is deleted.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

from kuavo_smolvla_ros.core.config import ConfigError

MARKER = ".kuavo_smolvla_replay"
# Everything replay may write into its --out directory (live and offline, report and plot).
REPLAY_NAMES = frozenset(
    {MARKER, "report.json", "trajectories.png", "outputs", "node.log", "live_node_params.yaml"}
)
# Domain ids whose Fast DDS / Cyclone ports stay below the Linux ephemeral range: 0..101.
DOMAIN_IDS = range(1, 102)
# Environment that would let the replay's participants reach beyond this host.
DISCOVERY_ENV_DROPPED = ("ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "ROS_LOCALHOST_ONLY")


def claim_out_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` or reuse one that only replay has written to; refuse anything else.

    Refused (``ConfigError``, before any work, nothing deleted): a file at ``path``; a
    non-empty directory without replay's marker; a replay directory holding other files.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; nothing was changed.")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        foreign = [n for n in entries if n not in REPLAY_NAMES]
        if entries and not (out / MARKER).is_file():
            foreign = entries
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise ConfigError(
                f"--out {out} already holds files replay did not write ({shown}); choose a new or"
                " empty directory. Nothing was deleted."
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "Written by kuavo-smolvla-replay; it may replace only these entries here:\n"
        + "\n".join(sorted(REPLAY_NAMES - {MARKER}))
        + "\n"
    )
    return out


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def domain_in_use(domain_id: int) -> bool:
    """Whether a DDS participant on this host already uses ``domain_id`` (RTPS: the first
    participant's unicast discovery port, 7410 + 250 * domain, is bound)."""
    return not _port_free(7410 + 250 * domain_id)


def choose_domain_id(
    avoid: Mapping[str, str] | None = None, rng: random.Random | None = None
) -> int:
    """A domain id no participant on this host uses, and not the shell's ``ROS_DOMAIN_ID``."""
    env = os.environ if avoid is None else avoid
    shell = env.get("ROS_DOMAIN_ID", "0").strip() or "0"
    candidates = [d for d in DOMAIN_IDS if str(d) != shell]
    (rng or random.Random()).shuffle(candidates)
    for d in candidates:
        if not domain_in_use(d):
            return d
    raise ConfigError("every ROS domain id on this host is in use: cannot isolate the replay.")


def private_ros_env(domain_id: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) moved to ``domain_id``, localhost only."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for key in DISCOVERY_ENV_DROPPED:
        env.pop(key, None)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def isolation_line(domain_id: int) -> str:
    return (
        f"live replay: isolated on private ROS_DOMAIN_ID {domain_id}, discovery localhost only"
        " (node, player and recorder); no robot on this network can receive its commands."
    )


@contextlib.contextmanager
def scoped_env(env: Mapping[str, str]) -> Iterator[None]:
    """This process's environment set to ``env`` for the duration (rcl reads the discovery
    range and peers when a context is initialised), then restored."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
