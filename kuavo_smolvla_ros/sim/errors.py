"""The simulator's one error type and its GL hint, below both the model and the robot."""

from __future__ import annotations

GL_HELP = (
    "no OpenGL for MuJoCo's offscreen rendering (MUJOCO_GL={gl}: {err}); install Mesa's EGL"
    " (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1 libgbm1) and run with"
    " MUJOCO_GL=egl, or OSMesa (apt-get install libosmesa6) with MUJOCO_GL=osmesa"
)


class SimError(RuntimeError):
    """A clear one-line reason the simulator cannot do what was asked."""
