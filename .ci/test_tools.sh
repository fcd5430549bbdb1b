#!/usr/bin/env bash
# System tools some tests use, installed by `make test` where this user may (root with apt-get, as in CI and
# containers); elsewhere those tests skip with a line saying what to install. Bounded: a machine without a
# reachable mirror goes on without them instead of waiting on apt. Quick when already installed.
#   GStreamer's RTSP server (tests/rtsp_server.py): a real RTSP camera for the stream-mode reconnect test.
set -uo pipefail
PACKAGES="gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad python3-gi"
# the server library and the elements tests/rtsp_server.py's pipeline uses (good: qtdemux, rtph264pay; bad: h264parse)
PROBE="import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')
from gi.repository import Gst, GstRtspServer
Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ('qtdemux', 'h264parse', 'rtph264pay'))"
have() { /usr/bin/python3 -c "$PROBE" >/dev/null 2>&1; }
TRIED=${VENV:-.venv}/.test_tools_failed  # one failed try per venv: a machine without a mirror pays it once
have && exit 0
if [ -e "$TRIED" ]; then
    echo "[test tools] GStreamer's RTSP server could not be installed before ($TRIED): the real-RTSP test will skip"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test tools] installing GStreamer's RTSP server (apt-get): $PACKAGES"
    install() { DEBIAN_FRONTEND=noninteractive timeout 240 apt-get install -y -qq $PACKAGES >/dev/null 2>&1; }
    install || { timeout 120 apt-get update -qq >/dev/null 2>&1 && install; } || {
        touch "$TRIED"
        echo "[test tools] could not install GStreamer's RTSP server: the real-RTSP stream test will skip"
    }
else
    echo "[test tools] no GStreamer RTSP server here (needs root and apt-get): the real-RTSP stream test will skip"
fi
exit 0
