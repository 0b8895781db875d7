"""Camera frames decoded off the ROS executor thread, newest frame first (pure: no rclpy).

Three 30 Hz JPEG cameras cost ~90 decodes/s of ~4 ms each at 640x480: done in a subscription
callback, that is a third of a core on the thread that also runs the 100 Hz control timer.
``FrameDecoder`` keeps only the newest undecoded message per camera and decodes it in its own
thread (OpenCV releases the GIL while decoding); a frame that a newer one overtakes before it
was decoded is dropped, which is what a policy wants anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core.observation import ObservationError, decode_image

OnFrame = Callable[[str, np.ndarray, float], None]
OnError = Callable[[str, Exception], None]


class FrameDecoder:
    """``submit(camera, transport, msg, t)`` from any thread; ``on_frame(camera, rgb, t)`` or
    ``on_error(camera, exc)`` is called from the decoder thread with the receive time ``t``."""

    def __init__(self, on_frame: OnFrame, on_error: OnError) -> None:
        self._on_frame = on_frame
        self._on_error = on_error
        self._pending: dict[str, tuple[str, Any, float]] = {}
        self._cv = threading.Condition()
        self._stopped = False
        self.decoded = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="frame-decoder", daemon=True)
        self._thread.start()

    def submit(self, camera: str, transport: str, msg: Any, t: float) -> None:
        with self._cv:
            if camera in self._pending:
                self.dropped += 1
            self._pending[camera] = (transport, msg, t)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                batch, self._pending = self._pending, {}
            for camera, (transport, msg, t) in batch.items():
                try:
                    rgb = decode_image(msg, transport)
                except (ObservationError, ValueError) as exc:
                    self.failed += 1
                    self._on_error(camera, exc)
                    continue
                self.decoded += 1
                try:
                    self._on_frame(camera, rgb, t)
                except (ObservationError, ValueError) as exc:
                    self.failed += 1
                    self._on_error(camera, exc)

    def stop(self, timeout: float = 2.0) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout)
