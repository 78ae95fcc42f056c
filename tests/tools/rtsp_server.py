#!/usr/bin/python3
"""An RTSP server on 127.0.0.1 playing a folder of JPEG frames in a loop, as an IP camera would.

GStreamer's RTSP server (Debian: gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good) through
the system Python's `gi`; the camera bridge's tests start, kill and restart it.

    rtsp_server.py --port 8554 --frames DIR --start 100 --fps 30   ->  rtsp://127.0.0.1:8554/live
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", required=True, help="folder of frame_NNNN.jpg files")
    parser.add_argument("--start", type=int, default=0, help="number of the first frame")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--path", default="/live")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    # Every client sees the same live stream, as from a camera, rather than its own replay.
    factory.set_shared(True)
    factory.set_launch(
        f'( multifilesrc location="{args.frames}/frame_%04d.jpg" start-index={args.start} loop=true '
        f'caps="image/jpeg,framerate={args.fps}/1" ! jpegdec ! videoconvert ! '
        "jpegenc quality=85 ! rtpjpegpay name=pay0 pt=96 )"
    )
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"ready rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
