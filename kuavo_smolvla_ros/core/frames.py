"""Camera frames decoded off the ROS executor thread, newest frame first (pure: no rclpy).

Three 30 Hz JPEG cameras cost ~90 decodes/s of ~4 ms each at 640x480: done in a subscription
callback, that is a third of a core on the thread that also runs the 100 Hz control timer.
``FrameDecoder`` keeps only the newest undecoded message per camera and decodes it in its own
thread (OpenCV releases the GIL while decoding); a frame that a newer one overtakes before it
was decoded is dropped, which is what a policy wants anyway.

Bad input never kills the thread: an undecodable or oversized frame (``max_bytes``,
``max_side``: refused from its header, before decoding) goes to ``on_error``; any other
exception (a bug, a codec crash) goes to ``on_crash``, which the node turns into a fault, and
the thread keeps serving. libjpeg prints warnings for corrupt-but-decodable JPEGs straight to
file descriptor 2, one line per frame (90 lines in 3 s from a bad camera); with
``quiet_codec`` those lines are captured during the decode and counted (``codec_warnings``)
instead, and anything else written to stderr meanwhile is passed through.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core.observation import ObservationError, decode_image

OnFrame = Callable[[str, np.ndarray, float], None]
OnError = Callable[[str, Exception], None]
OnCrash = Callable[[Exception], None]
CODEC_PREFIXES = (b"Corrupt JPEG data", b"Premature end of JPEG", b"Invalid SOS", b"libpng ")


class _CodecCapture:
    """Redirects fd 2 into a pipe around a decode; counts codec lines, forwards the rest."""

    def __init__(self) -> None:
        self._saved = os.dup(2)
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.warnings = 0
        self.last_warning = ""

    @contextlib.contextmanager
    def capture(self):
        os.dup2(self._w, 2)
        try:
            yield
        finally:
            os.dup2(self._saved, 2)
            self._drain()

    def _drain(self) -> None:
        chunks = []
        while True:
            try:
                data = os.read(self._r, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        if not chunks:
            return
        other = []
        for line in b"".join(chunks).splitlines(keepends=True):
            if line.startswith(CODEC_PREFIXES):
                self.warnings += 1
                self.last_warning = line.decode(errors="replace").strip()
            else:
                other.append(line)
        if other:
            with contextlib.suppress(OSError):
                os.write(self._saved, b"".join(other))

    def close(self) -> None:
        for fd in (self._r, self._w, self._saved):
            with contextlib.suppress(OSError):
                os.close(fd)


class FrameDecoder:
    """``submit(camera, transport, msg, t)`` from any thread; ``on_frame(camera, rgb, t)`` or
    ``on_error(camera, exc)`` is called from the decoder thread with the receive time ``t``;
    ``on_crash(exc)`` for an unexpected exception (the thread carries on)."""

    def __init__(
        self,
        on_frame: OnFrame,
        on_error: OnError,
        *,
        on_crash: OnCrash | None = None,
        max_bytes: int | None = None,
        max_side: int | None = None,
        quiet_codec: bool = False,
    ) -> None:
        self._on_frame = on_frame
        self._on_error = on_error
        self._on_crash = on_crash
        self._limits = {"max_bytes": max_bytes, "max_side": max_side}
        self._codec = _CodecCapture() if quiet_codec else None
        self._pending: dict[str, tuple[str, Any, float]] = {}
        self._cv = threading.Condition()
        self._stopped = False
        self.decoded = 0
        self.dropped = 0
        self.failed = 0
        self.crashes = 0
        self._thread = threading.Thread(target=self._run, name="frame-decoder", daemon=True)
        self._thread.start()

    @property
    def codec_warnings(self) -> int:
        """Codec warning lines captured (``quiet_codec``): corrupt but decodable frames."""
        return 0 if self._codec is None else self._codec.warnings

    def submit(self, camera: str, transport: str, msg: Any, t: float) -> None:
        with self._cv:
            if camera in self._pending:
                self.dropped += 1
            self._pending[camera] = (transport, msg, t)
            self._cv.notify()

    def _decode(self, msg: Any, transport: str) -> np.ndarray:
        if self._codec is None:
            return decode_image(msg, transport, **self._limits)
        with self._codec.capture():
            return decode_image(msg, transport, **self._limits)

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
                    self._handle(camera, transport, msg, t)
                except Exception as exc:  # never a silently dead thread
                    self.crashes += 1
                    if self._on_crash is None:
                        raise
                    with contextlib.suppress(Exception):
                        self._on_crash(exc)

    def _handle(self, camera: str, transport: str, msg: Any, t: float) -> None:
        try:
            rgb = self._decode(msg, transport)
        except (ObservationError, ValueError) as exc:
            self.failed += 1
            self._on_error(camera, exc)
            return
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
        if self._codec is not None and not self._thread.is_alive():
            self._codec.close()
            self._codec = None
