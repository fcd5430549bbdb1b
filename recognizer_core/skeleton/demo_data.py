"""SYNTHETIC demo skeleton data: labelled COCO-17 clips for the embedded default run and for tests.

Not real footage. A stick-figure body (limb lengths in body heights, joint angles over time, a yaw so people
are seen from the side, the front or the back) is animated by simple motion programs, projected to pixels of
a 640x480 / 1280x720 / 1920x1080 frame and corrupted like pose-detector output: jitter, per-joint scores,
dropped joints (score 0, coordinates 0), people leaving the frame, bystanders appearing for a while.

- fight: two people approach and strike (fast arm extensions toward the other, kicks), the one hit recoils,
  sometimes they grapple (close, arms on the other, shoving) -- vs. NonFight: walking, standing, two people
  talking face to face with gestures, walking together or passing each other.
- falldown: a person walking or standing drops to a lying pose within ~0.2-0.5 s (a fall, or a collapse at
  the knees) -- vs. Normal: walking, standing, sitting down slowly, bending over and back, lying down slowly.
Static poses overlap between classes (guard vs. talking, lying after a fall vs. lying down slowly); the
classes differ in motion, so a model has to use time. Every clip carries extra={'synthetic': True}, source
'synthetic://<task>/<index>', and write_demo_dataset marks the dataset metadata and logs that it is synthetic.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .clip import SkeletonClip
from .demo_body import (FPS, blend, bumps, drift, face_each_other, new_person, pulses, ramp, render_people,
                        stand, talk, walk)
from .store import write_dataset

log = logging.getLogger(__name__)

Task = Literal["fight", "falldown"]
DEMO_LABEL_NAMES: dict[str, list[str]] = {"fight": ["NonFight", "Fight"], "falldown": ["Normal", "Falldown"]}
IMG_SHAPES = ((480, 640), (720, 1280), (1080, 1920))
_FACE = np.arange(5)


def _fight_pair(rng, a: dict, b: dict) -> None:
    """Approach, then strikes (fast arm extensions toward the other, kicks), recoils, maybe grappling."""
    T, S = len(a["x"]), a["scale"][0]
    t_app, dur = rng.uniform(0, 0.45 * T), rng.uniform(8, 30)
    d0, d1 = rng.uniform(0.6, 2.2), rng.uniform(0.4, 0.65)
    dist = d0 + (d1 - d0) * ramp(T, t_app, dur) + drift(rng, T, 0.06, 12)
    grip = np.zeros(T)
    if rng.random() < 0.35:
        grip = bumps(T, [rng.uniform(t_app + dur, max(T - 15, t_app + dur + 1))], 6, rng.uniform(15, 60), 8)
        dist = dist * (1 - grip) + 0.3 * grip
    face_each_other(rng, a, b, a["x"][0], dist * S)
    reach = dist < 0.85
    for me, other, sign in ((a, b, 1.0), (b, a, -1.0)):
        guard = rng.random() < 0.5
        base_arm, base_elb = (0.9, 1.9) if guard else (0.35, 0.9)
        for side, stagger in (("l", 0.15), ("r", -0.15)):
            me["arm_" + side] += base_arm + drift(rng, T, 0.08, 6)
            me["elb_" + side] += base_elb - 0.15 + drift(rng, T, 0.1, 6)
            me["leg_" + side] += stagger + drift(rng, T, 0.05, 8)
            me["knee_" + side] += 0.25 + drift(rng, T, 0.05, 8)
        me["torso"] += 0.15 + drift(rng, T, 0.05, 8)
        me["bob"] += 0.012 * S * np.sin(2 * np.pi * rng.uniform(1.5, 3) / FPS * np.arange(T) + rng.uniform(0, 6))
        n = rng.poisson(T / rng.uniform(8, 20))
        starts = rng.uniform(t_app + 0.5 * dur, T, n)
        rise, hold, fall = rng.uniform(2, 4, n), rng.uniform(0, 2, n), rng.uniform(3, 6, n)
        sides = rng.integers(0, 2, n)
        P = pulses(T, starts, rise, hold, fall)
        for k, side in enumerate("lr"):
            ext = np.minimum(P[sides == k].sum(axis=0), 1.0)
            me["arm_" + side] += (rng.uniform(1.4, 1.7) - base_arm) * ext
            me["elb_" + side] -= me["elb_" + side] * ext * 0.95
            me["abd_" + side] += rng.uniform(0, 0.6) * ext  # hooks swing out a little
        ext_all = np.minimum(P.sum(axis=0), 1.0)
        me["torso"] += 0.15 * ext_all
        me["x"] += sign * 0.05 * S * ext_all
        kicks = rng.poisson(0.4 * T / 50)
        if kicks:
            K = bumps(T, rng.uniform(t_app, T, kicks), rng.uniform(3, 5), rng.uniform(0, 3), rng.uniform(4, 7))
            me["leg_r"] += 1.1 * K
            me["knee_r"] += 0.6 * K * (1 - K) * 4 - 0.2 * K
            me["torso"] -= 0.35 * K
        apex = np.clip((starts + rise).astype(int), 0, T - 1)
        hit = reach[apex] & (rng.random(n) < 0.8)
        react = bumps(T, apex[hit] + 1, 2, 1, rng.uniform(5, 10, hit.sum())) if hit.any() else np.zeros(T)
        other["torso"] -= 0.35 * react
        other["x"] += sign * 0.08 * S * react
        blend(me, {"arm_l": 1.3, "arm_r": 1.2, "abd_l": 0.35, "abd_r": 0.35, "elb_l": 0.9, "elb_r": 1.1}, grip)
        me["torso"] += 0.3 * grip + grip * drift(rng, T, 0.12, 3)
        me["x"] += grip * drift(rng, T, 0.06 * S, 4)


def _exercise(rng, p: dict) -> None:
    """Jogging, or arm exercises (jumping-jack style swings) at 0.8-2 Hz."""
    T = len(p["x"])
    if rng.random() < 0.4:
        walk(rng, p, speed=rng.uniform(1.4, 2.2))
        return
    stand(rng, p, gestures=0)
    cycle = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(0.8, 2.0) / FPS * np.arange(T) + rng.uniform(0, 6))
    on = ramp(T, rng.uniform(0, 0.3 * T), 10)
    lift, spread = rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.4)
    for side in "lr":
        p["arm_" + side] += lift * cycle * on
        p["abd_" + side] += spread * cycle * on
        p["knee_" + side] += 0.25 * cycle * on
    p["bob"] -= 0.03 * p["scale"] * cycle * on * (rng.random() < 0.5)


def _fall(rng, p: dict) -> None:
    """Walking or standing, then a rapid drop to lying (a fall, or a collapse at the knees first)."""
    T = len(p["x"])
    (walk if rng.random() < 0.6 else stand)(rng, p)
    t0, dur = rng.uniform(0.15, 0.7) * T, rng.uniform(6, 15)
    w = ramp(T, t0, dur)
    if rng.random() < 0.35:  # knees buckle, then the body tips over
        knees = bumps(T, [t0 - 0.4 * dur], 0.6 * dur, 0.4 * dur, 10)
        p["knee_l"] += 1.3 * knees
        p["knee_r"] += 1.3 * knees
        p["leg_l"] += 0.9 * knees
        p["leg_r"] += 0.9 * knees
    fling = bumps(T, [t0], 0.6 * dur, rng.uniform(0, 5), rng.uniform(8, 20))
    p["arm_l"] += rng.uniform(0.8, 2.2) * fling
    p["arm_r"] += rng.uniform(0.8, 2.2) * fling
    x_end = p["x"][min(int(t0 + dur), T - 1)]
    lying = {"pitch": rng.choice([-1, 1]) * rng.uniform(1.4, 1.6), "torso": rng.uniform(-0.1, 0.2),
             "leg_l": rng.uniform(-0.2, 0.5), "leg_r": rng.uniform(-0.2, 0.5), "knee_l": rng.uniform(0, 0.8),
             "knee_r": rng.uniform(0, 0.8), "elb_l": rng.uniform(0, 1.5), "elb_r": rng.uniform(0, 1.5), "x": x_end}
    p["arm_l"] += w * drift(rng, T, 0.1, 30)
    blend(p, lying, w)
    p["bob"] *= 1 - w


def _normal(rng, p: dict) -> None:
    """Ordinary motion: walking, standing, sitting down slowly, bending over and back, lying down slowly,
    resting on the floor (and maybe getting up slowly)."""
    T = len(p["x"])
    kind = rng.choice(["walk", "stand", "sit", "bend", "lie", "rest"], p=[0.2, 0.1, 0.2, 0.15, 0.2, 0.15])
    if kind in ("walk", "stand"):
        (walk if kind == "walk" else stand)(rng, p)
        return
    stand(rng, p)
    t0 = rng.uniform(0, 0.4) * T
    if kind == "sit":
        w = ramp(T, t0, rng.uniform(25, 50))
        lean = bumps(T, [t0], 15, 5, 20)
        blend(p, {"leg_l": 1.5, "leg_r": 1.5, "knee_l": 1.5, "knee_r": 1.5, "arm_l": 0.4, "arm_r": 0.4}, w)
        p["torso"] += 0.5 * lean
    elif kind == "bend":
        depth = rng.uniform(1.0, 1.5)
        w = bumps(T, [t0], rng.uniform(20, 40), rng.uniform(10, 40), rng.uniform(20, 40))
        blend(p, {"torso": depth, "arm_l": 0.2 - depth, "arm_r": 0.25 - depth, "knee_l": 0.3, "knee_r": 0.3,
                   "leg_l": 0.2, "leg_r": 0.2}, w)
    elif kind == "rest":
        up = ramp(T, t0, rng.uniform(40, 70)) if rng.random() < 0.5 else np.zeros(T)
        blend(p, {"pitch": rng.choice([-1, 1]) * rng.uniform(1.4, 1.6), "leg_l": rng.uniform(-0.2, 0.5),
                  "leg_r": rng.uniform(-0.2, 0.5), "knee_l": rng.uniform(0, 0.8), "knee_r": rng.uniform(0, 0.8),
                  "arm_l": rng.uniform(0, 2.5), "elb_l": rng.uniform(0, 1.5)}, 1 - up)
        p["arm_r"] += drift(rng, T, 0.3, 25)
    else:  # kneel, then recline over ~2 s
        kneel = ramp(T, t0, rng.uniform(25, 40))
        recline = ramp(T, t0 + rng.uniform(25, 40), rng.uniform(35, 60))
        blend(p, {"leg_l": 0.6, "leg_r": 0.6, "knee_l": 1.7, "knee_r": 1.7, "arm_l": 0.6, "arm_r": 0.6}, kneel)
        blend(p, {"pitch": rng.choice([-1, 1]) * 1.5, "leg_l": 0.1, "leg_r": 0.1, "knee_l": 0.3, "knee_r": 0.3},
               recline)


# ------------------------------------------------------------------------------------------- clips

def _scene(rng, task: str, label: int, T: int, H: int, W: int) -> tuple[list[dict], list[dict]]:
    """(actors, bystanders) person programs for one clip."""
    s0 = rng.uniform(0.35, 0.65)

    def new(x: float | None = None, ground: float | None = None, psi: float | None = None) -> dict:
        g = H * rng.uniform(0.62, 0.97) if ground is None else ground
        scale = s0 * H * (0.35 + 0.65 * g / H) * rng.uniform(0.9, 1.1)
        return new_person(T, rng.uniform(0.15, 0.85) * W if x is None else x, g, scale,
                       rng.uniform(0, 2 * np.pi) if psi is None else psi)

    def walker_or_stander(p: dict) -> dict:
        (walk if rng.random() < 0.55 else stand)(rng, p)
        return p

    actors: list[dict] = []
    if task == "fight" and label == 1:
        a = new(x=rng.uniform(0.3, 0.7) * W)
        b = new(ground=a["ground"][0] * rng.uniform(0.98, 1.02))
        _fight_pair(rng, a, b)
        actors = [a, b]
    elif task == "fight":
        kind = rng.choice(["talk", "together", "pass", "exercise", "scatter"], p=[0.45, 0.1, 0.1, 0.15, 0.2])
        if kind == "exercise":  # fast motion that is not aimed at anyone, maybe watched by someone
            a = new(x=rng.uniform(0.3, 0.7) * W)
            actors = [a]
            if rng.random() < 0.5:
                b = new(ground=a["ground"][0] * rng.uniform(0.97, 1.03))
                face_each_other(rng, a, b, a["x"][0], rng.uniform(0.7, 1.5) * a["scale"])
                stand(rng, b)
                actors.append(b)
            _exercise(rng, a)
        elif kind == "talk":
            a = new(x=rng.uniform(0.3, 0.7) * W)
            b = new(ground=a["ground"][0] * rng.uniform(0.98, 1.02))
            face_each_other(rng, a, b, a["x"][0], (rng.uniform(0.45, 1.1) + drift(rng, T, 0.03, 30)) * a["scale"])
            talk(rng, a)
            talk(rng, b)
            actors = [a, b]
        elif kind in ("together", "pass"):
            psi = rng.choice([0.0, np.pi]) + rng.uniform(-0.6, 0.6)
            a = new(x=rng.uniform(0.2, 0.8) * W, psi=psi)
            b = new(ground=a["ground"][0] * rng.uniform(0.97, 1.03), psi=psi if kind == "together" else np.pi - psi)
            speed = rng.uniform(0.6, 1.0)
            if kind == "together":
                b["x"][:] = a["x"][0] + rng.uniform(0.3, 0.6) * a["scale"][0] * rng.choice([-1, 1])
                walk(rng, a, speed)
                walk(rng, b, speed * rng.uniform(0.95, 1.05))
            else:  # head toward each other and pass
                meet = rng.uniform(0.3, 0.7) * T * speed * a["scale"][0] / FPS
                a["x"][:] = a["x"][0]
                b["x"][:] = a["x"][0] + 2 * meet * np.sign(np.cos(psi)) * abs(np.cos(psi))
                walk(rng, a, speed)
                walk(rng, b, speed)
            actors = [a, b]
        else:
            actors = [walker_or_stander(new()) for _ in range(rng.integers(1, 4))]
    else:
        a = new(x=rng.uniform(0.25, 0.75) * W)
        if label == 1:  # a fall is seen best from the side: keep the body's long axis across the image
            a["psi"][:] = rng.choice([0.0, np.pi]) + rng.uniform(-0.8, 0.8)
            _fall(rng, a)
        else:
            a["psi"][:] = rng.choice([0.0, np.pi]) + rng.uniform(-1.0, 1.0)
            _normal(rng, a)
        actors = [a]
    lo, hi = min(a["x"].min() for a in actors), max(a["x"].max() for a in actors)
    shift = rng.uniform(0.35, 0.65) * W - 0.5 * (lo + hi)  # keep the actors' paths inside the frame
    for a in actors:
        a["x"] += shift
    room = 5 - len(actors)
    n_by = min(room, rng.choice([0, 0, 1, 1, 2, 3]) if task == "fight" else rng.choice([0, 0, 1, 2]))
    return actors, [walker_or_stander(new()) for _ in range(n_by)]


def _make_clip(task: str, index: int, seed: int, label: int, split: str) -> SkeletonClip:
    rng = np.random.default_rng([seed, index, 0x5EED])
    T = int(rng.integers(40, 151))
    H, W = IMG_SHAPES[int(rng.integers(len(IMG_SHAPES)))]
    actors, bystanders = _scene(rng, task, label, T, H, W)
    people = actors + bystanders
    M = len(people)
    kp = render_people(people)  # (M, T, 17, 2)
    scale = np.stack([p["scale"] for p in people])  # (M, T)
    kp += rng.standard_normal(kp.shape, dtype=np.float32) * (0.006 * scale[:, :, None, None])
    # detector-like scores: per person level, per joint noise, faces weaker when turned away
    base = np.concatenate([rng.uniform(0.7, 0.95, len(actors)), rng.uniform(0.45, 0.85, len(bystanders))])
    score = base[:, None, None] + rng.normal(0, 0.07, (M, T, 17))
    away = np.clip(np.sin(np.stack([p["psi"] for p in people])), 0, 1)  # (M, T): 1 = back to the camera
    score[:, :, _FACE] *= (1 - 0.6 * away)[:, :, None]
    score = np.clip(score, 0.05, 1.0)
    present = np.ones((M, T), bool)
    for m in range(len(actors), M):  # bystanders come and go
        if rng.random() < 0.6:
            t_in = int(rng.integers(0, T // 2))
            present[m, :t_in] = False
            present[m, t_in + int(rng.integers(T // 4, T)):] = False
    for m, t in zip(*np.nonzero(rng.random((M, T)) < 0.006)):  # short detection losses (1-4 frames)
        present[m, t:t + rng.integers(1, 5)] = False
    missing = (rng.random((M, T, 17)) < rng.uniform(0, 0.05)) | ~present[:, :, None]
    missing |= (kp[..., 0] < 0) | (kp[..., 0] >= W) | (kp[..., 1] < 0) | (kp[..., 1] >= H)
    kp[missing] = 0.0
    score[missing] = 0.0
    order = np.argsort(-score.sum(axis=(1, 2)), kind="stable")  # like keeping the most confident people first
    return SkeletonClip(
        clip_id=f"synthetic_{task}_{seed}_{index:06d}", label=label, keypoint=kp[order].astype(np.float32),
        keypoint_score=score[order].astype(np.float32), img_shape=(H, W), total_frames=T,
        label_name=DEMO_LABEL_NAMES[task][label], split=split, source_video=f"synthetic://{task}/{index:06d}",
        fps=FPS, track_ids=np.arange(M, dtype=np.int32), extra={"synthetic": True})


def _splits(n: int, seed: int, ratios: Sequence[float]) -> list[str]:
    names = ("train", "val", "test")
    counts = np.floor(np.asarray(ratios, float) / np.sum(ratios) * n).astype(int)
    for k in np.argsort(-np.asarray(ratios))[: n - counts.sum()]:
        counts[k] += 1
    if n >= 3:  # every split with a positive ratio gets at least one clip
        for k in range(3):
            if ratios[k] > 0 and counts[k] == 0:
                counts[k], counts[int(np.argmax(counts))] = 1, counts.max() - 1
    labels = np.repeat(names, counts)
    return list(labels[np.random.default_rng([seed, 0x5B17]).permutation(n)])


def make_demo_clips(task: Task, num_clips: int = 500, seed: int = 0,
                    split_ratios: Sequence[float] = (0.7, 0.15, 0.15)) -> list[SkeletonClip]:
    """`num_clips` SYNTHETIC clips, half per class (label = index % 2), split train/val/test by ratio.
    Deterministic: clip i depends only on (task, seed, i)."""
    if task not in DEMO_LABEL_NAMES:
        raise ValueError(f"task must be one of {sorted(DEMO_LABEL_NAMES)}, got {task!r}")
    if len(split_ratios) != 3 or min(split_ratios) < 0 or sum(split_ratios) <= 0:
        raise ValueError(f"split_ratios must be three non-negative (train, val, test) ratios, got {split_ratios}")
    splits = _splits(num_clips, seed, split_ratios)
    return [_make_clip(task, i, seed, i % 2, splits[i]) for i in range(num_clips)]


def write_demo_dataset(task: Task, out_dir: str | Path, num_clips: int = 500, seed: int = 0,
                       split_ratios: Sequence[float] = (0.7, 0.15, 0.15), rows_per_file: int = 256,
                       overwrite: bool = True, announce: bool = True) -> Path:
    """Write a SYNTHETIC demo dataset (Parquet skeleton store) and return its folder. The dataset metadata
    says {'synthetic': True, 'generator': ...}; regenerating with the same seed gives the same data.
    `announce=False`: no log line here, for a caller that writes to a temporary folder and moves it into place
    (it calls `announce_demo_dataset` with the final folder: the log must name the data a run uses)."""
    clips = make_demo_clips(task, num_clips, seed, split_ratios)
    meta = {"synthetic": True, "generator": "recognizer_core.skeleton.demo_data", "task": task, "seed": seed,
            "note": "synthetic stick-figure motion, not real footage"}
    # rows grouped by split in each file: `_dataset.json` lists each split as one row range per file, so a training
    # start on the demo data reads neither the per-clip index nor a per-clip array, at any num_clips
    path = write_dataset(clips, out_dir, DEMO_LABEL_NAMES[task], rows_per_file=rows_per_file, metadata=meta,
                         overwrite=overwrite, group_by_split=True)
    if announce:
        announce_demo_dataset(path, task, num_clips, seed)
    return path


def announce_demo_dataset(path: str | Path, task: Task, num_clips: int, seed: int) -> None:
    """The log line naming a written demo dataset (often the only line of a run that names its data)."""
    log.warning("wrote SYNTHETIC demo dataset %s: task=%s, %d clips, seed=%d (generated stick figures, "
                "not real data)", path, task, num_clips, seed)
