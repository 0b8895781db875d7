"""``kuavo-smolvla-sim``: the simulator node, or ``--record N`` expert demonstrations as bags.

    kuavo-smolvla-sim [--ros-args -p task:=pick -p image_width:=128 ...]
    kuavo-smolvla-sim --record 20 --task reach --out demos/ [--seed 0 --width 128 --height 96]

``--record`` runs the simulator node and the scripted expert node in this process; the expert
drives the simulator over the real topics, and each successful episode is saved as an mcap bag
(``OUT/episode_0000`` ...) holding what a real recording holds: ``/joint_states``,
``/gripper/state``, the three cameras, ``/kuavo_arm_traj`` (degrees) and ``/gripper/command``,
timed in sim time. ``OUT/episodes.json`` lists seeds, outcomes and the task's instruction, which
``kuavo-smolvla-convert --task`` takes. Failed episodes are counted and not saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from kuavo_smolvla_ros.sim.robot import SimError
from kuavo_smolvla_ros.sim.tasks import TASKS

PROG = "kuavo-smolvla-sim"


class EpisodeRecorder:
    """Collects the simulator's messages (sim time) while active; writes one mcap bag.

    Only the two message types a Kuavo recording has here (JointState, CompressedImage) are
    converted field by field into rosbags' classes (rclpy's CDR bytes carry trailing padding
    that rosbags refuses).
    """

    def __init__(self) -> None:
        from kuavo_smolvla_ros.bag import typestore_for

        self.store = typestore_for("mcap")
        self.active = False
        self.rows: list[tuple[str, str, int, object]] = []

    def __call__(self, topic: str, msgtype: str, t: float, msg) -> None:
        if self.active:
            self.rows.append((topic, msgtype, round(t * 1e9), self._convert(msgtype, msg)))

    def _convert(self, msgtype: str, msg) -> object:
        import numpy as np

        T = self.store.types
        st = msg.header.stamp
        header = T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=st.sec, nanosec=st.nanosec),
            frame_id=msg.header.frame_id,
        )
        if msgtype == "sensor_msgs/msg/JointState":
            return T[msgtype](
                header=header,
                name=list(msg.name),
                position=np.asarray(msg.position, float),
                velocity=np.asarray(msg.velocity, float),
                effort=np.asarray(msg.effort, float),
            )
        return T[msgtype](
            header=header, format=msg.format, data=np.frombuffer(bytes(msg.data), np.uint8)
        )

    def write(self, path: Path) -> None:
        from kuavo_smolvla_ros.bag import BagWriter

        with BagWriter(path, "mcap", typestore=self.store, overwrite=True) as w:
            for topic, msgtype, t_ns, msg in sorted(self.rows, key=lambda r: r[2]):
                w.write(topic, msgtype, t_ns, msg)


def record(
    n: int,
    task: str,
    out: Path,
    seed: int = 0,
    width: int = 128,
    height: int = 96,
    camera_rate_hz: float = 10.0,
    episode_time_s: float = 20.0,
    after_success_s: float = 0.5,
    max_attempts: int | None = None,
    real_time_factor: float = 0.0,
    progress: bool = True,
) -> dict:
    """Record ``n`` successful expert episodes (seeds ``seed``, ``seed+1``...) as mcap bags."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from kuavo_smolvla_ros.sim.expert_node import ExpertNode
    from kuavo_smolvla_ros.sim.node import NodeParams, SimNode

    out.mkdir(parents=True, exist_ok=True)
    rec = EpisodeRecorder()
    params = NodeParams(
        task=task,
        seed=seed,
        image_width=width,
        image_height=height,
        camera_rate_hz=camera_rate_hz,
        real_time_factor=real_time_factor,
    )
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx)
    sim = expert = None
    executor = None
    episodes: list[dict] = []
    try:
        sim = SimNode(params, recorder=rec, context=ctx)
        expert = ExpertNode(context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(sim)
        executor.add_node(expert)
        threading.Thread(target=executor.spin, daemon=True).start()
        sim.start_loop()
        bar = _bar(n, progress, f"recording {task}")
        attempts = max_attempts if max_attempts is not None else 2 * n + 5
        saved = 0
        for _ in range(attempts):
            if saved >= n:
                break
            sim.reset_episode()
            deadline = time.monotonic() + 120.0
            while expert.planned_episode != sim.episode and time.monotonic() < deadline:
                time.sleep(0.01)
            if expert.planned_episode != sim.episode:
                raise SimError("the expert did not plan the episode within 120 s")
            # one state message at the ready posture before the episode starts
            rec.rows.clear()
            rec.active = True
            ok, why = sim.start_episode()
            if not ok:
                raise SimError(why)
            t0 = sim.t_start
            while True:
                t = sim.robot.time
                if sim.succeeded_at is not None and t >= sim.succeeded_at + after_success_s:
                    break
                if t - t0 >= episode_time_s:
                    break
                if not sim.running:
                    raise SimError(sim.error or "the simulator loop stopped")
                time.sleep(0.005)
            rec.active = False
            success = sim.succeeded_at is not None
            entry = {
                "episode": sim.episode,
                "seed": sim.layout.seed,
                "success": success,
                "time_to_success_s": None if not success else sim.succeeded_at - t0,
            }
            if success:
                path = out / f"episode_{saved:04d}"
                rec.write(path)
                entry["bag"] = str(path)
                saved += 1
                bar.update(1)
            episodes.append(entry)
        bar.close()
    finally:
        if sim is not None:
            sim.stop_loop()
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        for node in (sim, expert):
            if node is not None:
                node.destroy_node()
        rclpy.shutdown(context=ctx)
    summary = {
        "task": task,
        "instruction": TASKS[task].instruction,
        "saved": sum(e["success"] for e in episodes),
        "attempts": len(episodes),
        "success_rate": sum(e["success"] for e in episodes) / max(len(episodes), 1),
        "image_size": [height, width],
        "camera_rate_hz": camera_rate_hz,
        "episodes": episodes,
    }
    (out / "episodes.json").write_text(json.dumps(summary, indent=2))
    return summary


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--record" not in argv:
        from kuavo_smolvla_ros.sim.node import main as node_main

        return node_main(["kuavo-smolvla-sim", *argv])
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--record", type=int, required=True, metavar="N", help="successful episodes")
    p.add_argument("--task", default="reach", choices=sorted(TASKS))
    p.add_argument("--out", type=Path, required=True, help="directory for the bags")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--camera-rate", type=float, default=10.0, help="Hz in sim time")
    p.add_argument("--episode-time", type=float, default=20.0, help="time limit (sim s)")
    p.add_argument("--rtf", type=float, default=0.0, help="real-time factor cap, 0: none")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.record < 1:
        p.error("--record needs N >= 1")
    t0 = time.monotonic()
    try:
        s = record(
            a.record,
            a.task,
            a.out,
            seed=a.seed,
            width=a.width,
            height=a.height,
            camera_rate_hz=a.camera_rate,
            episode_time_s=a.episode_time,
            real_time_factor=a.rtf,
            progress=not a.no_progress,
        )
    except SimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"recorded {s['saved']} {a.task} episodes in {a.out} ({s['attempts']} attempts, expert"
        f" success {100 * s['success_rate']:.0f} %) in {time.monotonic() - t0:.0f} s;"
        f" convert with --task {s['instruction']!r}"
    )
    return 0 if s["saved"] >= a.record else 1


if __name__ == "__main__":
    sys.exit(main())
