"""FrameDecoder: camera frames decoded on their own thread, newest first, errors reported.

Real JPEG and raw ``sensor_msgs`` messages. The decoder thread is held inside an ``on_frame``
callback to make "a newer frame overtakes an undecoded one" happen on purpose; every wait has
a generous deadline and no test measures time.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from kuavo_smolvla_ros.core.frames import FrameDecoder
from kuavo_smolvla_ros.core.observation import ObservationError

DEADLINE_S = 30.0  # liveness only: a loaded machine may be slow, never this slow


def jpeg(value: int, w: int = 32, h: int = 24) -> CompressedImage:
    """A JPEG frame whose every pixel is ``value`` (so a decoded frame says which it was)."""
    bgr = np.full((h, w, 3), value, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    return CompressedImage(format="jpeg", data=buf.tobytes())


def raw_rgb8(value: int, w: int = 8, h: int = 6) -> Image:
    return Image(height=h, width=w, encoding="rgb8", step=3 * w, data=bytes([value]) * (3 * w * h))


class Recorder:
    """Collects callbacks; ``hold`` blocks the decoder thread inside ``on_frame``."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, float]] = []  # camera, pixel value, t
        self.errors: list[tuple[str, Exception]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.changed = threading.Condition()

    def on_frame(self, camera: str, rgb: np.ndarray, t: float) -> None:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        self.entered.set()
        assert self.hold.wait(DEADLINE_S)
        with self.changed:
            self.frames.append((camera, round(float(rgb.mean())), t))
            self.changed.notify_all()

    def on_error(self, camera: str, exc: Exception) -> None:
        with self.changed:
            self.errors.append((camera, exc))
            self.changed.notify_all()

    def wait_for(self, frames: int = 0, errors: int = 0) -> None:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: len(self.frames) >= frames and len(self.errors) >= errors, DEADLINE_S
            )
        assert ok, (self.frames, self.errors)


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def decoder(rec):
    before = set(threading.enumerate())
    dec = FrameDecoder(rec.on_frame, rec.on_error)
    (dec.thread_for_test,) = set(threading.enumerate()) - before
    yield dec
    rec.hold.set()
    dec.stop()


def test_a_frame_is_decoded_to_rgb_with_its_receive_time(decoder, rec):
    decoder.submit("head", "compressed", jpeg(200), 12.5)
    decoder.submit("wrist", "raw", raw_rgb8(7), 12.6)
    rec.wait_for(frames=2)
    assert sorted(rec.frames) == [("head", 200, 12.5), ("wrist", 7, 12.6)]
    assert (decoder.decoded, decoder.dropped, decoder.failed) == (2, 0, 0)


def test_the_newest_frame_wins_and_overtaken_frames_are_counted_as_dropped(decoder, rec):
    rec.hold.clear()
    decoder.submit("head", "compressed", jpeg(10), 1.0)
    assert rec.entered.wait(DEADLINE_S)  # the thread is inside on_frame for frame 1
    for k, value in enumerate((60, 110, 160), start=2):  # none of these is decoded yet
        decoder.submit("head", "compressed", jpeg(value), float(k))
    decoder.submit("wrist", "compressed", jpeg(90), 3.5)  # another camera is not overtaken
    rec.hold.set()
    rec.wait_for(frames=3)
    assert rec.frames[0] == ("head", 10, 1.0)
    assert sorted(rec.frames[1:]) == [("head", 160, 4.0), ("wrist", 90, 3.5)]
    assert (decoder.decoded, decoder.dropped, decoder.failed) == (3, 2, 0)


def test_an_undecodable_frame_is_reported_through_on_error_and_counted(decoder, rec):
    decoder.submit("head", "compressed", CompressedImage(format="jpeg", data=b"not a jpeg"), 1.0)
    rec.wait_for(errors=1)
    camera, exc = rec.errors[0]
    assert camera == "head" and isinstance(exc, ObservationError)
    decoder.submit("head", "raw", Image(height=2, width=2, encoding="weird", data=b"x"), 2.0)
    rec.wait_for(errors=2)
    assert "weird" in str(rec.errors[1][1])
    # The thread lives on: the next good frame comes through.
    decoder.submit("head", "compressed", jpeg(50), 3.0)
    rec.wait_for(frames=1)
    assert rec.frames == [("head", 50, 3.0)]
    assert (decoder.decoded, decoder.dropped, decoder.failed) == (1, 0, 2)


def test_a_frame_the_consumer_refuses_is_reported_and_counted_as_failed(rec):
    refused: list[tuple[str, Exception]] = []

    def on_frame(camera: str, rgb: np.ndarray, t: float) -> None:
        if t < 2.0:
            raise ObservationError(f"{camera}: frame of the wrong size")
        rec.on_frame(camera, rgb, t)

    reported = threading.Event()

    def on_error(camera: str, exc: Exception) -> None:
        refused.append((camera, exc))
        reported.set()

    dec = FrameDecoder(on_frame, on_error)
    try:
        dec.submit("head", "compressed", jpeg(30), 1.0)
        assert reported.wait(DEADLINE_S)
        dec.submit("head", "compressed", jpeg(40), 2.0)
        rec.wait_for(frames=1)
    finally:
        dec.stop()
    assert [(c, str(e)) for c, e in refused] == [("head", "head: frame of the wrong size")]
    assert rec.frames == [("head", 40, 2.0)]
    assert (dec.decoded, dec.failed) == (2, 1)


def test_stop_joins_an_idle_decoder_thread(decoder):
    assert decoder.thread_for_test.is_alive()
    decoder.stop()
    assert not decoder.thread_for_test.is_alive()
    decoder.stop()  # twice is harmless


def test_stop_during_a_decode_finishes_that_frame_and_drops_the_pending_ones(decoder, rec):
    rec.hold.clear()
    decoder.submit("head", "compressed", jpeg(10), 1.0)
    assert rec.entered.wait(DEADLINE_S)
    decoder.submit("head", "compressed", jpeg(250), 2.0)
    decoder.stop(timeout=0.0)  # the thread is held: stop cannot join yet
    assert decoder.thread_for_test.is_alive()
    rec.hold.set()
    decoder.thread_for_test.join(DEADLINE_S)
    assert not decoder.thread_for_test.is_alive()
    assert rec.frames == [("head", 10, 1.0)]  # the frame submitted before stop is not decoded
    assert decoder.decoded == 1
