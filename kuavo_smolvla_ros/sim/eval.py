"""``kuavo-smolvla-eval``: closed-loop success rate of a checkpoint in the simulator.

    kuavo-smolvla-eval --checkpoint CKPT --task pick --episodes 50 --seed 0 --out eval/

It starts the simulator (``kuavo-smolvla-sim``) and the policy node (``use_sim_time``, the task's
instruction, started disabled) as child processes on a private ``ROS_DOMAIN_ID`` with discovery
limited to this host, then runs seeded episodes through the handshake: policy disabled ->
``/simulator/reset`` (episode k has seed ``seed + k``) -> policy ``~/reset`` ->
``/simulator/start`` -> policy ``~/enable`` -> until ``/simulator/success`` or the time limit
(sim seconds). Per episode: success, time to success, the node's clamps and holds (from
``/diagnostics``), the largest per-message step of ``/kuavo_arm_traj`` (deg). Writes
``OUT/report.json``, ``OUT/eval.png`` and ``OUT/videos/episode_NNN.mp4`` (three cameras tiled,
commanded vs measured right-arm joints drawn under them), and prints a table with the success
rate and its 95 % Wilson interval. ``--expert`` runs the scripted expert instead of a policy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kuavo_smolvla_ros.sim.tasks import TASKS

PROG = "kuavo-smolvla-eval"
POLICY = "/kuavo_smolvla_policy"
TIME_LIMITS = {"reach": 12.0, "pick": 20.0, "place": 30.0}
VIDEO_FPS = 10.0


class EvalError(RuntimeError):
    """The evaluation cannot run; the message says why."""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k/n (sound at 0/n and n/n, unlike k/n±)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    time_to_success_s: float | None
    duration_s: float
    clamped: int
    holds: int
    max_step_deg: float
    commands: int
    wall_s: float = 0.0  # wall time of the episode, handshake included
    video: str | None = None


@dataclass
class _Episode:
    """What the harness hears during one episode (sim-time stamped)."""

    t0: float = 0.0
    measured: list[tuple[float, np.ndarray]] = field(default_factory=list)
    commanded: list[tuple[float, np.ndarray]] = field(default_factory=list)
    frames: list[tuple[float, dict[str, np.ndarray]]] = field(default_factory=list)


class _Harness:
    """The evaluation's ROS side: service clients and recorders, spun in a background thread."""

    def __init__(self, ctx, cameras: dict[str, str], video: bool) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (
            DurabilityPolicy,
            QoSProfile,
            ReliabilityPolicy,
            qos_profile_sensor_data,
        )
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, JointState
        from std_msgs.msg import Bool, String
        from std_srvs.srv import SetBool, Trigger

        self.node = rclpy.create_node("kuavo_smolvla_eval", context=ctx)
        n = self.node
        self.lock = threading.Lock()
        self.sim_time = 0.0
        self.success = False
        self.scene: dict | None = None
        self.diag: dict[str, str] = {}
        self.diag_stamp = -1.0
        self.episode: _Episode | None = None
        self.video = video
        self._latest: dict[str, np.ndarray] = {}
        self._next_frame = 0.0
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        n.create_subscription(Clock, "/clock", self._on_clock, 10)
        n.create_subscription(Bool, "/simulator/success", self._on_success, 10)
        n.create_subscription(String, "/simulator/scene", self._on_scene, latched)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        n.create_subscription(JointState, "/joint_states", self._on_joints, qos_profile_sensor_data)
        n.create_subscription(JointState, "/kuavo_arm_traj", self._on_command, 50)
        for name, topic in cameras.items():
            n.create_subscription(
                CompressedImage, topic, self._camera_cb(name), qos_profile_sensor_data
            )
        self.sim_reset = n.create_client(Trigger, "/simulator/reset")
        self.sim_start = n.create_client(Trigger, "/simulator/start")
        self.pol_enable = n.create_client(SetBool, f"{POLICY}/enable")
        self.pol_reset = n.create_client(Trigger, f"{POLICY}/reset")
        self.SetBool, self.Trigger = SetBool, Trigger
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    # -- callbacks ---------------------------------------------------------------------------
    def _on_clock(self, msg) -> None:
        self.sim_time = msg.clock.sec + 1e-9 * msg.clock.nanosec

    def _on_success(self, msg) -> None:
        self.success = self.success or bool(msg.data)

    def _on_scene(self, msg) -> None:
        self.scene = json.loads(msg.data)

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name.endswith(": policy"):
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in st.values}
                    self.diag_stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec

    def _on_joints(self, msg) -> None:
        ep = self.episode
        if ep is not None:
            t = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            ep.measured.append((t, np.asarray(msg.position, float)))

    def _on_command(self, msg) -> None:
        ep = self.episode
        if ep is not None and len(msg.position) == 14:
            ep.commanded.append((self.sim_time, np.radians(np.asarray(msg.position, float))))

    def _camera_cb(self, name: str):
        def cb(msg) -> None:
            ep = self.episode
            if ep is None or not self.video:
                return
            import cv2

            t = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            img = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                return
            self._latest[name] = img
            if name == "head_cam_h" and t >= self._next_frame:
                self._next_frame = t + 1.0 / VIDEO_FPS
                ep.frames.append((t, dict(self._latest)))

        return cb

    # -- calls -------------------------------------------------------------------------------
    def call(self, client, request, timeout: float = 60.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise EvalError(f"{client.srv_name} is not available")
        fut = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not fut.done():
            if time.monotonic() > deadline:
                raise EvalError(f"{client.srv_name} did not answer within {timeout:.0f} s")
            time.sleep(0.005)
        return fut.result()

    def counters(self) -> tuple[int, int]:
        with self.lock:
            return int(self.diag.get("clamped", 0)), int(self.diag.get("holds", 0))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


def _tile(frames: dict[str, np.ndarray], names: list[str], w: int, h: int) -> np.ndarray:
    import cv2

    tiles = []
    for n in names:
        img = frames.get(n)
        tiles.append(np.zeros((h, w, 3), np.uint8) if img is None else cv2.resize(img, (w, h)))
    return np.concatenate(tiles, axis=1)


def _strip(ep: _Episode, t_now: float, width: int, height: int, span: float) -> np.ndarray:
    """Right-arm joints r1..r7 over the episode: commanded (thin, light) vs measured (thick)."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
              (140, 86, 75), (227, 119, 194)]  # fmt: skip
    lo, hi = -3.2, 1.6

    def px(t: float, v: float) -> tuple[int, int]:
        x = int((t - ep.t0) / span * (width - 1))
        y = int((hi - v) / (hi - lo) * (height - 1))
        return x, y

    for data, thick in ((ep.commanded, 1), (ep.measured, 2)):
        pts = [(t, q) for t, q in data if ep.t0 <= t <= t_now]
        if len(pts) < 2:
            continue
        for j in range(7):
            line = np.array([px(t, q[7 + j]) for t, q in pts], np.int32)
            c = colors[j] if thick == 2 else tuple(int(0.5 * v + 127) for v in colors[j])
            cv2.polylines(img, [line], False, c, thick)
    cv2.putText(img, "right arm: measured (thick) vs commanded (thin)", (4, 12),
                cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)  # fmt: skip
    return img


def write_video(ep: _Episode, path: Path, cameras: list[str], t_end: float) -> str | None:
    """Three cameras tiled over a strip of commanded vs measured joints; mp4 via OpenCV."""
    import cv2

    if not ep.frames:
        return None
    w, h = 160, 120
    width = w * len(cameras)
    strip_h = 100
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (width, h + strip_h)
    )
    if not vw.isOpened():
        return None
    span = max(t_end - ep.t0, 1e-3)
    for t, frames in ep.frames:
        top = _tile(frames, cameras, w, h)
        vw.write(np.concatenate([top, _strip(ep, t, width, strip_h, span)], axis=0))
    vw.release()
    return str(path)


def _max_step_deg(ep: _Episode) -> float:
    if len(ep.commanded) < 2:
        return 0.0
    q = np.array([c for _, c in ep.commanded])
    return float(np.degrees(np.abs(np.diff(q, axis=0)).max()))


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=False
    )


def _tail(log: Path, n: int = 5) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _policy_params(checkpoint: str, task: str, device: str, config: str | None, path: Path):
    import dataclasses

    import yaml

    from kuavo_smolvla_ros.core.config import NODE_NAME, default_config_path, load_config, to_dict

    cfg = load_config(config or default_config_path())
    policy = dataclasses.replace(cfg.policy, checkpoint=str(checkpoint), task=task, device=device)
    cfg = dataclasses.replace(cfg, policy=policy, start_enabled=False, dry_run=False)
    params = to_dict(cfg)
    params["use_sim_time"] = True
    path.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": params}}, sort_keys=False))
    return cfg


def evaluate(
    checkpoint: str | None,
    task: str,
    episodes: int,
    seed: int,
    out: Path,
    *,
    time_limit_s: float | None = None,
    width: int = 128,
    height: int = 96,
    camera_rate_hz: float = 10.0,
    real_time_factor: float = 1.0,
    device: str = "cpu",
    config: str | None = None,
    video: bool = True,
    expert: bool = False,
    progress: bool = True,
    startup_timeout_s: float = 300.0,
) -> dict:
    """Run the closed-loop evaluation; returns the report (also written to ``out``)."""
    import rclpy

    from kuavo_smolvla_ros.replay.isolation import choose_domain_id, private_ros_env, scoped_env
    from kuavo_smolvla_ros.ros.child import stop_node
    from kuavo_smolvla_ros.sim.node import CAMERA_TOPICS

    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    if not expert and not checkpoint:
        raise EvalError("give --checkpoint (or --expert)")
    limit = time_limit_s or TIME_LIMITS[task]
    instruction = TASKS[task].instruction
    out.mkdir(parents=True, exist_ok=True)
    domain = choose_domain_id()
    env = private_ros_env(domain)
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    sim_cmd = [sys.executable, "-m", "kuavo_smolvla_ros.sim.cli", "--ros-args"]
    for k, v in {
        "task": task,
        "seed": seed,
        "image_width": width,
        "image_height": height,
        "camera_rate_hz": float(camera_rate_hz),
        "real_time_factor": float(real_time_factor),
    }.items():
        sim_cmd += ["-p", f"{k}:={v}"]
    cameras = list(CAMERA_TOPICS)
    results: list[EpisodeResult] = []
    ctx = None
    harness = None
    expert_exec = None
    expert_node = None
    t_wall = time.monotonic()
    try:
        procs.append(("simulator", _start(sim_cmd, out / "sim.log", env), out / "sim.log"))
        if not expert:
            params = out / "policy_params.yaml"
            _policy_params(checkpoint, instruction, device, config, params)
            cmd = [sys.executable, "-m", "kuavo_smolvla_ros.ros.node", "--ros-args"]
            cmd += ["--params-file", str(params)]
            procs.append(("policy node", _start(cmd, out / "node.log", env), out / "node.log"))
        with scoped_env(env):
            ctx = rclpy.Context()
            rclpy.init(args=[], context=ctx)
            harness = _Harness(ctx, CAMERA_TOPICS, video)
            if expert:
                from rclpy.executors import SingleThreadedExecutor

                from kuavo_smolvla_ros.sim.expert_node import ExpertNode

                expert_node = ExpertNode(context=ctx)
                expert_exec = SingleThreadedExecutor(context=ctx)
                expert_exec.add_node(expert_node)
                threading.Thread(target=expert_exec.spin, daemon=True).start()
        _wait_up(harness, procs, expert, startup_timeout_s)
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"eval {task}", unit="ep", disable=not progress,
                   file=sys.stderr)  # fmt: skip
        for k in range(episodes):
            results.append(_episode(harness, procs, k, seed + k, limit, expert_node, out, cameras))
            bar.update(1)
            bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
        bar.close()
    finally:
        for name, proc, log in reversed(procs):
            rc = stop_node(proc, timeout=15.0)
            if rc not in (0, -2, 130, 2) and not results:
                print(f"{PROG}: the {name} exited with code {rc}: {_tail(log)}", file=sys.stderr)
        if expert_exec is not None:
            expert_exec.shutdown(timeout_sec=2.0)
        if harness is not None:
            harness.close()
        if ctx is not None:
            rclpy.shutdown(context=ctx)
    report = _report(results, checkpoint, task, instruction, seed, limit, domain, expert)
    report["wall_s"] = time.monotonic() - t_wall
    report["image_size"] = [height, width]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "eval.png")
    return report


def _check_alive(procs) -> None:
    for name, proc, log in procs:
        if proc.poll() is not None:
            raise EvalError(f"the {name} exited (code {proc.returncode}): {_tail(log)}")


def _wait_up(h: _Harness, procs, expert: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    clients = [h.sim_reset, h.sim_start] + ([] if expert else [h.pol_enable, h.pol_reset])
    while not all(c.service_is_ready() for c in clients):
        _check_alive(procs)
        if time.monotonic() > deadline:
            raise EvalError(f"simulator / policy node not up within {timeout:.0f} s")
        time.sleep(0.1)
    if not expert:  # the node's first diagnostics: it runs and its clock ticks
        while not h.diag:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise EvalError("no diagnostics from the policy node")
            time.sleep(0.1)


def _wait_sim(h: _Harness, procs, t: float, wall_timeout: float = 120.0) -> None:
    deadline = time.monotonic() + wall_timeout
    while h.sim_time < t:
        _check_alive(procs)
        if time.monotonic() > deadline:
            raise EvalError("the simulator clock stopped")
        time.sleep(0.01)


def _episode(h: _Harness, procs, k: int, seed: int, limit: float, expert_node, out: Path,
             cameras: list[str]) -> EpisodeResult:  # fmt: skip
    expert = expert_node is not None
    wall0 = time.monotonic()
    if not expert:
        h.call(h.pol_enable, h.SetBool.Request(data=False))
    resp = h.call(h.sim_reset, h.Trigger.Request())
    if not resp.success:
        raise EvalError(f"/simulator/reset refused: {resp.message}")
    while h.scene is None or h.scene.get("episode") != k or h.scene.get("phase") != "ready":
        _check_alive(procs)
        time.sleep(0.01)
    if not expert:
        h.call(h.pol_reset, h.Trigger.Request())
    else:  # the expert plans (IK) when the scene is placed; start once it has its plan
        deadline = time.monotonic() + 120.0
        while expert_node.planned_episode != k:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise EvalError("the expert did not plan the episode within 120 s")
            time.sleep(0.01)
    _wait_sim(h, procs, h.sim_time + 0.3)  # fresh state and images of the new scene
    clamped0, holds0 = h.counters()
    h.success = False
    ep = _Episode()
    resp = h.call(h.sim_start, h.Trigger.Request())
    if not resp.success:
        raise EvalError(f"/simulator/start refused: {resp.message}")
    ep.t0 = h.sim_time
    h._next_frame = 0.0
    h.episode = ep
    if not expert:
        h.call(h.pol_enable, h.SetBool.Request(data=True))
    t_success = None
    while h.sim_time - ep.t0 < limit:
        _check_alive(procs)
        if h.success:
            t_success = h.sim_time - ep.t0
            break
        time.sleep(0.01)
    t_end = h.sim_time
    if not expert:
        h.call(h.pol_enable, h.SetBool.Request(data=False))
        # the counters of this episode: wait for diagnostics stamped after its end
        deadline = time.monotonic() + 10.0
        while h.diag_stamp < t_end and time.monotonic() < deadline:
            _check_alive(procs)
            time.sleep(0.02)
    h.episode = None
    clamped1, holds1 = h.counters()
    vid = None
    if h.video:
        vid = write_video(ep, out / "videos" / f"episode_{k:03d}.mp4", cameras, t_end)
    return EpisodeResult(
        episode=k,
        seed=seed,
        success=t_success is not None,
        time_to_success_s=t_success,
        duration_s=t_end - ep.t0,
        clamped=max(clamped1 - clamped0, 0),
        holds=max(holds1 - holds0, 0),
        max_step_deg=_max_step_deg(ep),
        commands=len(ep.commanded),
        wall_s=time.monotonic() - wall0,
        video=vid,
    )


def _report(results, checkpoint, task, instruction, seed, limit, domain, expert) -> dict:
    n = len(results)
    k = sum(r.success for r in results)
    lo, hi = wilson(k, n)
    times = [r.time_to_success_s for r in results if r.success]
    return {
        "checkpoint": None if expert else str(checkpoint),
        "driver": "expert" if expert else "policy",
        "task": task,
        "instruction": instruction,
        "seeds": [seed, seed + n - 1] if n else [],
        "time_limit_s": limit,
        "ros_domain_id": domain,
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "wilson95": [lo, hi],
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "clamped": sum(r.clamped for r in results),
        "holds": sum(r.holds for r in results),
        "max_step_deg": max((r.max_step_deg for r in results), default=0.0),
        "per_episode": [asdict(r) for r in results],
    }


def format_table(report: dict) -> str:
    rows = [f"{'ep':>3} {'seed':>5} {'success':>7} {'t (s)':>6} {'clamps':>6} {'holds':>5}"
            f" {'max step (deg)':>14}"]  # fmt: skip
    for r in report["per_episode"]:
        t = "-" if r["time_to_success_s"] is None else f"{r['time_to_success_s']:.1f}"
        rows.append(
            f"{r['episode']:>3} {r['seed']:>5} {'yes' if r['success'] else 'no':>7} {t:>6}"
            f" {r['clamped']:>6} {r['holds']:>5} {r['max_step_deg']:>14.2f}"
        )
    lo, hi = report["wilson95"]
    rows.append(
        f"{report['task']} ({report['driver']}): {report['successes']}/{report['episodes']}"
        f" = {100 * report['success_rate']:.0f} % success, 95 % Wilson interval"
        f" [{100 * lo:.0f}, {100 * hi:.0f}] %"
    )
    return "\n".join(rows)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = report["per_episode"]
    fig, ax = plt.subplots(figsize=(7, 3))
    for r in eps:
        if r["success"]:
            ax.bar(r["episode"], r["time_to_success_s"], color="tab:green")
        else:
            ax.bar(r["episode"], r["duration_s"], color="tab:red", alpha=0.4)
    ax.axhline(report["time_limit_s"], color="k", ls="--", lw=0.8, label="time limit")
    lo, hi = report["wilson95"]
    ax.set_title(
        f"{report['task']}: {report['successes']}/{report['episodes']} success"
        f" (95 % CI {100 * lo:.0f}-{100 * hi:.0f} %); green: time to success, red: failed"
    , fontsize=8)  # fmt: skip
    ax.set_xlabel("episode")
    ax.set_ylabel("sim time (s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="SmolVLA checkpoint directory or hub id")
    p.add_argument("--expert", action="store_true", help="evaluate the scripted expert instead")
    p.add_argument("--task", default="reach", choices=sorted(TASKS))
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="episode k uses seed + k")
    p.add_argument("--out", type=Path, default=Path("eval"))
    p.add_argument("--time-limit", type=float, default=None, help="sim s (default per task)")
    p.add_argument("--width", type=int, default=128, help="camera width (px)")
    p.add_argument("--height", type=int, default=96, help="camera height (px)")
    p.add_argument("--camera-rate", type=float, default=10.0, help="Hz (sim time)")
    p.add_argument("--rtf", type=float, default=1.0, help="real-time factor cap (0: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", help="package YAML for the policy node")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        report = evaluate(
            a.checkpoint,
            a.task,
            a.episodes,
            a.seed,
            a.out,
            time_limit_s=a.time_limit,
            width=a.width,
            height=a.height,
            camera_rate_hz=a.camera_rate,
            real_time_factor=a.rtf,
            device=a.device,
            config=a.config,
            video=not a.no_video,
            expert=a.expert,
            progress=not a.no_progress,
        )
    except EvalError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"report: {a.out / 'report.json'}, plot: {a.out / 'eval.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
