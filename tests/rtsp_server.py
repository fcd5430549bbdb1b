"""A real RTSP server for the stream tests: GStreamer's gst-rtsp-server (the library behind many camera
simulators and NVRs) serving one H.264 MP4 file at rtsp://127.0.0.1:PORT/cam in real time, over RTP.

Runs under the system python3 (GStreamer's Python bindings come from Debian packages, not PyPI):
    /usr/bin/python3 tests/rtsp_server.py PORT FILE.mp4
prints "ready" once it listens. `make test` installs GStreamer where it can (.ci/test_tools.sh).
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, path = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # the file's H.264 as it is (no re-encode), parameter sets in-band every second as cameras send them
    factory.set_launch(f"( filesrc location={path} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 "
                       "config-interval=1 )")
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
