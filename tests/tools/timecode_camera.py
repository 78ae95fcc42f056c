#!/usr/bin/python3
"""An RTSP camera on 127.0.0.1 whose every frame shows when it was made, as a barcode.

H.264 (openh264enc) over RTSP from GStreamer's RTSP server, through the system Python's `gi`
(Debian: gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad). Each
640x360 frame is mid-gray with two rows of 24 black-or-white 24x24 blocks at (16, 16): bits 0-39
are the Unix time in milliseconds (mod 2^40) when the frame was pushed, bits 40-47 that value mod
251, most significant bit first. SIGUSR1 stalls the camera for --stall-s seconds without closing
its clients' sessions (no frame is pushed); --mute answers RTSP and never sends a frame. The camera
bridge's tests read the time back from the server's annotated frames.

    timecode_camera.py --port 8554 --fps 10   ->   ready rtsp://127.0.0.1:8554/live
"""

import argparse
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

WIDTH, HEIGHT = 640, 360
BLOCK, ORIGIN, PER_ROW = 24, 16, 24


def frame(unix_ms: int) -> bytes:
    value = unix_ms % (1 << 40)
    bits = [(value >> (39 - i)) & 1 for i in range(40)] + [((value % 251) >> (7 - i)) & 1 for i in range(8)]
    pixels = bytearray([128]) * (WIDTH * HEIGHT)
    for i, bit in enumerate(bits):
        x0 = ORIGIN + (i % PER_ROW) * BLOCK
        y0 = ORIGIN + (i // PER_ROW) * BLOCK
        shade = bytes([255 if bit else 0]) * BLOCK
        for y in range(y0, y0 + BLOCK):
            pixels[y * WIDTH + x0 : y * WIDTH + x0 + BLOCK] = shade
    return bytes(pixels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--stall-s", type=float, default=8.0)
    parser.add_argument("--mute", action="store_true", help="answer RTSP but never send a frame")
    parser.add_argument("--path", default="/live")
    args = parser.parse_args()

    Gst.init(None)
    stalled_until = [float("inf") if args.mute else 0.0]
    sources = []

    def push() -> bool:
        if time.monotonic() >= stalled_until[0]:
            data = frame(int(time.time() * 1000))
            for source in sources:
                source.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        return True

    def configured(_factory, media) -> None:
        source = media.get_element().get_child_by_name("timecode")
        sources.append(source)
        media.connect("unprepared", lambda *_: sources.remove(source) if source in sources else None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_shared(True)
    # No added latency: the sink would otherwise hold each frame for rtpbin's default 200 ms.
    factory.set_latency(0)
    factory.set_launch(
        f"( appsrc name=timecode is-live=true do-timestamp=true format=time "
        f'caps="video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate={args.fps}/1" ! '
        f"videoconvert ! video/x-raw,format=I420 ! openh264enc gop-size={args.fps} complexity=low ! "
        "h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.connect("media-configure", configured)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    def stall() -> bool:
        stalled_until[0] = time.monotonic() + args.stall_s
        return True

    loop = GLib.MainLoop()
    GLib.timeout_add(max(1, 1000 // args.fps), push)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, stall)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"ready rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
