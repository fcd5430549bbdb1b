"""A decoded frame -> the image the model or a viewer gets: turned upright by its display rotation, BGR, and
RTMO's top-left letterbox (aspect kept, pad 114). Batch decoding (`extract/video.py`), stream mode and the RTMO
wrapper all letterbox here, so the model sees the same pixels whichever mode ran it (moved out of video.py)."""
from __future__ import annotations

import numpy as np


def quarter_turns(frame) -> int:
    """np.rot90's k for a decoded frame: its display matrix's counter-clockwise rotation (PyAV's
    `frame.rotation`: a phone's portrait video reads -90, stored landscape, shown turned clockwise)."""
    return int(round(float(getattr(frame, "rotation", 0) or 0) / 90)) % 4


def frame_bgr(frame) -> np.ndarray:
    """A decoded frame as the upright BGR image a player shows."""
    image = frame.to_ndarray(format="bgr24")
    k = quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def letterbox_params(height: int, width: int, input_size: tuple[int, int]) -> tuple[float, int, int]:
    """(ratio, resized_h, resized_w) of RTMO's top-left letterbox (aspect kept), as rtmlib computes it."""
    ratio = min(input_size[0] / height, input_size[1] / width)
    return ratio, int(height * ratio), int(width * ratio)


def pad_letterbox(resized: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    out = np.full((input_size[0], input_size[1], 3), 114, dtype=np.uint8)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out


def letterbox(image_bgr: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Letterbox one BGR uint8 image (bilinear resize by libswscale, pad 114, top-left). -> (image, ratio)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr), "bgr24")
    padded, ratio, _ = letterbox_frame(frame, input_size)
    return padded, ratio


def letterbox_frame(frame, input_size: tuple[int, int],
                    upright_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """A decoded av.VideoFrame -> (RTMO's letterboxed input, ratio, upright (H, W)): BGR and resized by one
    libswscale call, then turned upright (as turning first, but cheaper). Batch and stream mode both use it, so
    the model sees the same pixels: `letterbox` of a full-size BGR copy is about one grey level off.
    `upright_hw`: letterbox as if the frame had that upright size (batch decoding keeps a video's first frame's
    geometry for all its frames, whose poses are mapped back with one ratio)."""
    k = quarter_turns(frame)
    h, w = upright_hw or ((frame.width, frame.height) if k % 2 else (frame.height, frame.width))
    ratio, nh, nw = letterbox_params(h, w, input_size)
    resized = frame.reformat(width=nh if k % 2 else nw, height=nw if k % 2 else nh, format="bgr24",
                             interpolation="BILINEAR").to_ndarray()
    return pad_letterbox(np.rot90(resized, k) if k else resized, input_size), ratio, (h, w)
