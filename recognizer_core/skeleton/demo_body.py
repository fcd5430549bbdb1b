"""Stick-figure body model and motion primitives for the SYNTHETIC demo data (see demo_data.py).

A person is a dict of per-frame arrays (T,): pelvis x, ground line, scale (body height in pixels), yaw psi,
whole-body pitch, trunk bend and limb angles in radians (0 = limb straight down, positive = forward).
Motion programs add to these arrays; `render_people` turns them into COCO-17 pixel coordinates.
"""
from __future__ import annotations

import numpy as np

FPS = 30.0
POSE_KEYS = ("torso", "pitch", "arm_l", "arm_r", "abd_l", "abd_r", "elb_l", "elb_r", "leg_l", "leg_r",
             "knee_l", "knee_r")


# ------------------------------------------------------------------------------------------- body model

def _down(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, up) unit vector of a limb at angle phi from straight down, positive = forward."""
    return np.sin(phi), -np.cos(phi)


def _body_points(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint (forward, up, left) coordinates in body heights relative to the pelvis, each (T, 17)."""
    tau = p["torso"]
    ud, uh = np.sin(tau), np.cos(tau)  # trunk axis
    fd, fh = np.cos(tau), -np.sin(tau)  # chest forward
    T = tau.shape[0]
    d, h, l = (np.zeros((T, 17)) for _ in range(3))
    nd, nh = 0.30 * ud, 0.30 * uh  # neck
    for j, (a, b, lat) in zip(range(5), ((0.10, 0.045, 0), (0.125, 0.03, 0.03), (0.125, 0.03, -0.03),
                                         (0.11, -0.01, 0.065), (0.11, -0.01, -0.065))):
        d[:, j], h[:, j], l[:, j] = nd + a * ud + b * fd, nh + a * uh + b * fh, lat
    for side, sgn, sh, el, wr, hp, kn, an in (("l", 1, 5, 7, 9, 11, 13, 15), ("r", -1, 6, 8, 10, 12, 14, 16)):
        abd = p["abd_" + side]
        d[:, sh], h[:, sh], l[:, sh] = nd, nh, sgn * 0.11
        ad, ah = _down(p["arm_" + side] + tau)
        d[:, el], h[:, el] = nd + 0.17 * np.cos(abd) * ad, nh + 0.17 * np.cos(abd) * ah
        l[:, el] = sgn * (0.11 + 0.17 * np.sin(abd))
        fd2, fh2 = _down(p["arm_" + side] + tau + p["elb_" + side])
        d[:, wr], h[:, wr] = d[:, el] + 0.15 * np.cos(abd) * fd2, h[:, el] + 0.15 * np.cos(abd) * fh2
        l[:, wr] = l[:, el] + sgn * 0.05 * np.sin(abd)
        l[:, hp] = l[:, kn] = l[:, an] = sgn * 0.07
        td, th = _down(p["leg_" + side])
        d[:, kn], h[:, kn] = 0.245 * td, 0.245 * th
        sd, sh2 = _down(p["leg_" + side] - p["knee_" + side])
        d[:, an], h[:, an] = d[:, kn] + 0.245 * sd, h[:, kn] + 0.245 * sh2
    beta = p["pitch"][:, None]  # whole-body pitch about the pelvis (falls, lying)
    d2 = d * np.cos(beta) + h * np.sin(beta)
    h2 = h * np.cos(beta) - d * np.sin(beta)
    return d2, h2, l


def render_people(people: list[dict]) -> np.ndarray:
    """(M, T, 17, 2) pixels for all people at once (one pass of array ops per clip, not per person).

    Yaw psi turns the body (0: facing image right, pi/2: back to the camera); the lowest joint stands on
    the person's ground line, so feet stay down while sitting, bending or falling."""
    M, T = len(people), len(people[0]["x"])
    p = {k: np.concatenate([q[k] for q in people]) for k in people[0]}
    d, h, l = _body_points(p)
    psi, s = p["psi"][:, None], p["scale"][:, None]
    x = p["x"][:, None] + s * (d * np.cos(psi) - l * np.sin(psi))
    y_pelvis = p["ground"] - p["scale"] * (-h.min(axis=1) + 0.03 * np.abs(np.sin(p["pitch"]))) + p["bob"]
    y = y_pelvis[:, None] - s * h
    return np.stack([x, y], axis=-1).reshape(M, T, 17, 2)


def new_person(T: int, x: float, ground: float, scale: float, psi: float) -> dict:
    p = {k: np.zeros(T) for k in POSE_KEYS}
    p.update(x=np.full(T, x), ground=np.full(T, ground), scale=np.full(T, scale), psi=np.full(T, psi),
             bob=np.zeros(T), elb_l=np.full(T, 0.15), elb_r=np.full(T, 0.15), abd_l=np.full(T, 0.08),
             abd_r=np.full(T, 0.08))
    return p


# ------------------------------------------------------------------------------------------- motion pieces

def pulses(T: int, starts, rise, hold, fall) -> np.ndarray:
    """(E, T) smooth 0->1->0 pulses (cosine ramps up, hold, down); arguments per event, in frames."""
    t = np.arange(T)[None, :].astype(float)
    s, r, hd, f = (np.broadcast_to(np.asarray(v, float), np.shape(starts)).reshape(-1, 1)
                   for v in (starts, rise, hold, fall))
    up = 0.5 - 0.5 * np.cos(np.pi * np.clip((t - s) / r, 0, 1))
    down = 0.5 + 0.5 * np.cos(np.pi * np.clip((t - s - r - hd) / f, 0, 1))
    return up * down


def bumps(T: int, starts, rise, hold, fall, amp=1.0) -> np.ndarray:
    """Sum of amplitude-weighted pulses, overlapping pulses capped at the largest amplitude."""
    if np.size(starts) == 0:
        return np.zeros(T)
    amp = np.broadcast_to(np.asarray(amp, float), np.shape(starts)).reshape(-1, 1)
    return np.minimum((amp * pulses(T, starts, rise, hold, fall)).sum(axis=0), amp.max())


def ramp(T: int, start: float, dur: float) -> np.ndarray:
    """Smooth step 0 -> 1 over [start, start + dur]."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip((np.arange(T) - start) / max(dur, 1e-6), 0, 1))


def drift(rng: np.random.Generator, T: int, sigma: float, smooth: float) -> np.ndarray:
    """Slowly varying noise: random knots every `smooth` frames, linearly interpolated (cheap: np.interp)."""
    n = int(T / smooth) + 2
    return np.interp(np.arange(T), np.arange(n) * smooth, rng.normal(0, sigma, n))


def stand(rng, p, gestures: float = 0.3) -> None:
    T = len(p["x"])
    p["x"] += drift(rng, T, 0.01 * p["scale"][0], 20)
    p["torso"] += 0.05 + drift(rng, T, 0.03, 25)
    for side in "lr":
        n = rng.poisson(gestures * T / 60)
        events = (rng.uniform(-10, T, n), rng.uniform(8, 25, n), rng.uniform(0, 30, n), rng.uniform(8, 25, n))
        p["arm_" + side] += bumps(T, *events, amp=rng.uniform(0.3, 1.1, n))
        p["elb_" + side] += bumps(T, *events, amp=rng.uniform(0.5, 1.5, n)) + drift(rng, T, 0.05, 20)
        p["leg_" + side] += drift(rng, T, 0.03, 30)


def walk(rng, p, speed: float | None = None) -> None:
    T = len(p["x"])
    speed = rng.uniform(0.6, 1.0) if speed is None else speed  # body heights per second
    direction = np.sign(np.cos(p["psi"][0])) or 1.0
    p["x"] += direction * abs(np.cos(p["psi"][0])) * speed * p["scale"][0] / FPS * np.arange(T)
    phase = 2 * np.pi * rng.uniform(0.85, 1.05) / FPS * np.arange(T) + rng.uniform(0, 2 * np.pi)
    for side, sgn in (("l", 1), ("r", -1)):
        swing = sgn * np.sin(phase)
        p["leg_" + side] += 0.35 * swing
        p["knee_" + side] += 0.55 * np.clip(-sgn * np.sin(phase - 0.6), 0, None) + 0.05
        p["arm_" + side] += -0.3 * swing
        p["elb_" + side] += 0.2 + 0.1 * np.clip(-swing, 0, None)
    p["bob"] += 0.012 * p["scale"] * np.cos(2 * phase)
    p["torso"] += 0.07


def talk(rng, p) -> None:
    stand(rng, p, gestures=1.5)
    T = len(p["x"])
    if rng.random() < 0.5:  # arms folded / hands raised: static look of a fighting guard
        p["arm_l"] += 0.5 + drift(rng, T, 0.05, 20)
        p["arm_r"] += 0.5 + drift(rng, T, 0.05, 20)
        p["elb_l"] += 1.6
        p["elb_r"] += 1.6


def face_each_other(rng, a: dict, b: dict, center: float, dist: np.ndarray) -> None:
    a["x"] += center - dist / 2 - a["x"][0]
    b["x"] += center + dist / 2 - b["x"][0]
    yaw = rng.uniform(-0.9, 0.9)
    a["psi"][:] = yaw
    b["psi"][:] = np.pi - yaw + rng.uniform(-0.3, 0.3)


def blend(p: dict, target: dict, w: np.ndarray) -> None:
    for k, v in target.items():
        p[k] = p[k] * (1 - w) + v * w
