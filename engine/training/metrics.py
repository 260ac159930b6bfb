"""Paper-style motion metrics on held-out conversations (numpy, motion arrays [T, D]).

- reactiveness rPCC (per group): |PCC(user, generated) - PCC(user, ground truth)|, PCC = mean over
  the group's dims of the Pearson correlation over time of user and avatar motion (lower = better);
- richness: variance (mean over dims of the temporal variance) and SID diversity: entropy in bits
  of the histogram of k-means cluster assignments of the frames (clusters fitted on ground truth);
- lip sync (spaces with a jaw parameter): PCC of jaw opening and the avatar's audio energy;
- jitter: mean absolute acceleration |x[t+1] - 2 x[t] + x[t-1]|;
- smile mirroring (spaces with a smile parameter): PCC of the user's and the avatar's smile;
- nod response (spaces with a head-pitch parameter, conversations with voicing): how much the
  avatar's head pitch moves in the second after the user pauses while the avatar stays silent,
  relative to how much it moves on average (1 = no more than anywhere; the listener nods of the
  synthetic conversations give about 4.5). rPCC cannot see nods: it correlates the user's
  *motion* with the avatar's, and a nod answers the user's *voice*;
- pause-locked pitch (same spaces and conversations): the RMS of the avatar's mean head-pitch
  trajectory in the nod window after the user's listener pauses (each relative to its 5 frames
  before), against the same at as many random moments with the avatar silent (chance; mean of
  20 draws). Only motion that answers the pauses at a consistent time survives the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MotionGroups:
    """Which dims are pose / expression, the jaw-opening dim (None: no lip-sync metric) and the
    smile dim (None: no smile-mirroring metric)."""

    pose: tuple[int, ...]
    expression: tuple[int, ...]
    jaw: int | None = None
    smile: int | None = None
    nod: int | None = None  # head pitch: the nod-response metric

    @classmethod
    def all_dims(cls, dim_w: int) -> MotionGroups:
        """A space without groups (the official latent): every metric over all dims."""
        dims = tuple(range(dim_w))
        return cls(dims, dims, None)


def groups_for_space(space: str, dim_w: int) -> MotionGroups:
    """The groups of a dataset's motion space ("default" reads the default motion space)."""
    if space == "default":
        from avatarforcing.schemas.motion_space import MOTION_SPACE

        return MotionGroups(
            tuple(MOTION_SPACE.pose_indices),
            tuple(MOTION_SPACE.expression_indices),
            int(MOTION_SPACE.jaw_index),
            MOTION_SPACE.names.index("smile"),
            MOTION_SPACE.names.index("pitch"),
        )
    return MotionGroups.all_dims(dim_w)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D series (0 when either is constant)."""
    x, y = np.asarray(x, np.float64) - np.mean(x), np.asarray(y, np.float64) - np.mean(y)
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 1e-12 else 0.0


def group_pcc(user: np.ndarray, avatar: np.ndarray, dims: tuple[int, ...]) -> float:
    """Mean over `dims` of PCC(user[:, d], avatar[:, d])."""
    return float(np.mean([pearson(user[:, d], avatar[:, d]) for d in dims]))


def reactiveness(user: np.ndarray, generated: np.ndarray, truth: np.ndarray, dims: tuple[int, ...]) -> float:
    """rPCC = |PCC(user, generated) - PCC(user, truth)| over `dims`."""
    return abs(group_pcc(user, generated, dims) - group_pcc(user, truth, dims))


def variance(motion: np.ndarray, dims: tuple[int, ...]) -> float:
    return float(np.var(motion[:, list(dims)], axis=0).mean())


def jitter(motion: np.ndarray, dims: tuple[int, ...]) -> float:
    if motion.shape[0] < 3:
        return 0.0
    x = motion[:, list(dims)]
    return float(np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean())


def lip_sync(motion: np.ndarray, energy: np.ndarray, jaw: int) -> float:
    return pearson(motion[:, jaw], energy)


# nod response: a pause is the end of >= 0.5 s of the user's speech (within the last second)
# followed by >= 0.24 s of silence; the avatar's pitch motion is read 0.08-1.08 s after it
PAUSE_TALK_FRAMES, PAUSE_SILENT_FRAMES = 12, 6
NOD_WINDOW = (2, 27)
HIGHPASS_FRAMES = 15  # pitch minus its 0.6-s moving average: nods (1.5-2.5 Hz), not slow sway


def listener_pauses(
    user_voiced: np.ndarray, avatar_voiced: np.ndarray, window: tuple[int, int] = NOD_WINDOW
) -> list[int]:
    """Frames [T] bool -> frames at which the user pauses and the avatar stays silent for `window`."""
    v, a = np.asarray(user_voiced, bool), np.asarray(avatar_voiced, bool)
    onsets = []
    for t in range(25, len(v) - max(PAUSE_SILENT_FRAMES, window[1]) + 1):
        if (
            v[t - 1]
            and not v[t : t + PAUSE_SILENT_FRAMES].any()
            and v[t - 25 : t].sum() >= PAUSE_TALK_FRAMES
            and not a[t : t + window[1]].any()
        ):
            onsets.append(t)
    return onsets


def nod_response(pitch: np.ndarray, pauses: list[int], window: tuple[int, int] = NOD_WINDOW) -> float | None:
    """Mean squared high-passed pitch [T] in `window` frames after each pause over its mean over
    the whole track (None: no pause or a still head)."""
    x = np.asarray(pitch, np.float64)
    if not pauses or len(x) < HIGHPASS_FRAMES:
        return None
    padded = np.pad(x, (HIGHPASS_FRAMES // 2, HIGHPASS_FRAMES // 2), mode="edge")
    power = (x - np.convolve(padded, np.ones(HIGHPASS_FRAMES) / HIGHPASS_FRAMES, "valid")) ** 2
    if power.mean() < 1e-12:
        return None
    return float(np.mean([power[t + window[0] : t + window[1]].mean() for t in pauses]) / power.mean())


PAUSE_LOCK_BEFORE = 5  # frames before the pause that a trajectory is measured from
PAUSE_LOCK_DRAWS = 20  # draws of random silent moments for the chance level


def pause_locked_trajectory(
    pitches: list[np.ndarray], moments: list[list[int]], window: tuple[int, int] = NOD_WINDOW
) -> np.ndarray:
    """Mean over every moment t of pitch[t : t + window[1]] minus the mean of the
    `PAUSE_LOCK_BEFORE` frames before t; pitches [T] per conversation, moments per conversation
    (frames with room on both sides). Returns [window[1]] (empty when there is no moment)."""
    segments = [
        np.asarray(x[t : t + window[1]], np.float64) - np.mean(x[t - PAUSE_LOCK_BEFORE : t])
        for x, ts in zip(pitches, moments)
        for t in ts
    ]
    return np.mean(segments, axis=0) if segments else np.zeros(0)


def silent_moments(avatar_voiced: np.ndarray, window: tuple[int, int] = NOD_WINDOW) -> list[int]:
    """Frames after the first second with the avatar silent through `window`: where a listener
    pause could be."""
    a = np.asarray(avatar_voiced, bool)
    return [t for t in range(25, len(a) - window[1] + 1) if not a[t : t + window[1]].any()]


def pause_lock(
    pitches: list[np.ndarray], pauses: list[list[int]], silent: list[list[int]], seed: int = 0
) -> tuple[float, float] | None:
    """(RMS of the pause-locked trajectory, its chance level): the same RMS at as many random
    silent moments per conversation as it has pauses, averaged over `PAUSE_LOCK_DRAWS` draws
    (fixed seed, so a generated track and the truth are compared at the same moments).
    None: no pause."""
    if not any(pauses):
        return None
    locked = pause_locked_trajectory(pitches, pauses)
    rng, chance = np.random.default_rng(seed), []
    for _ in range(PAUSE_LOCK_DRAWS):
        drawn = [
            list(rng.choice(s, min(len(p), len(s)), replace=False)) if p and s else [] for p, s in zip(pauses, silent)
        ]
        chance.append(float(np.sqrt(np.mean(pause_locked_trajectory(pitches, drawn) ** 2))))
    return float(np.sqrt(np.mean(locked**2))), float(np.mean(chance))


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Cluster centres [k', D] (k' = min(k, distinct points)) by Lloyd's algorithm, k-means++ start."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, np.float64)
    k = min(k, len(np.unique(points, axis=0)))
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = ((points[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        centres.append(
            points[rng.choice(len(points), p=d2 / d2.sum())] if d2.sum() > 0 else points[rng.integers(len(points))]
        )
    centres = np.array(centres)
    for _ in range(iterations):
        labels = assign(points, centres)
        new = np.array([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def assign(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((np.asarray(points, np.float64)[:, None] - centres[None]) ** 2).sum(-1).argmin(1)


def diversity(motion: np.ndarray, centres: np.ndarray, dims: tuple[int, ...]) -> float:
    """SID: entropy (bits) of the cluster histogram of `motion[:, dims]` frames."""
    labels = assign(motion[:, list(dims)], centres)
    p = np.bincount(labels, minlength=len(centres)) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@dataclass
class ConversationMotion:
    """One held-out conversation side: generated and true avatar motion, user motion [T, D],
    avatar audio energy [T] or None, and which frames [T] bool each party speaks in (None: unknown)."""

    generated: np.ndarray
    truth: np.ndarray
    user: np.ndarray
    energy: np.ndarray | None = None
    user_voiced: np.ndarray | None = None
    avatar_voiced: np.ndarray | None = None


def evaluate(
    conversations: list[ConversationMotion], groups: MotionGroups, clusters: int = 16
) -> dict[str, dict[str, float]]:
    """Metric table: {metric: {"generated": x, "ground_truth": y}} (means over conversations;
    ground-truth columns give the reference level; rPCC has no ground-truth value)."""
    if not conversations:
        raise ValueError("no conversations to evaluate")
    table: dict[str, dict[str, float]] = {}

    def add(name: str, gen_values: list[float], gt_values: list[float] | None) -> None:
        table[name] = {"generated": float(np.mean(gen_values))}
        if gt_values is not None:
            table[name]["ground_truth"] = float(np.mean(gt_values))

    for label, dims in (("expression", groups.expression), ("pose", groups.pose)):
        add(f"rPCC_{label}", [reactiveness(c.user, c.generated, c.truth, dims) for c in conversations], None)
        add(
            f"variance_{label}",
            [variance(c.generated, dims) for c in conversations],
            [variance(c.truth, dims) for c in conversations],
        )
        centres = kmeans(np.concatenate([c.truth[:, list(dims)] for c in conversations]), clusters)
        add(
            f"SID_{label}",
            [diversity(c.generated, centres, dims) for c in conversations],
            [diversity(c.truth, centres, dims) for c in conversations],
        )
        add(
            f"jitter_{label}",
            [jitter(c.generated, dims) for c in conversations],
            [jitter(c.truth, dims) for c in conversations],
        )
    with_energy = [c for c in conversations if c.energy is not None]
    if groups.jaw is not None and with_energy:
        add(
            "lip_sync_pcc",
            [lip_sync(c.generated, c.energy, groups.jaw) for c in with_energy],
            [lip_sync(c.truth, c.energy, groups.jaw) for c in with_energy],
        )
    if groups.smile is not None:
        k = groups.smile
        add(
            "smile_pcc_user",
            [pearson(c.user[:, k], c.generated[:, k]) for c in conversations],
            [pearson(c.user[:, k], c.truth[:, k]) for c in conversations],
        )
    with_voicing = [c for c in conversations if c.user_voiced is not None and c.avatar_voiced is not None]
    if groups.nod is not None and with_voicing:
        pairs, count = [], 0
        for c in with_voicing:
            pauses = listener_pauses(c.user_voiced, c.avatar_voiced)
            count += len(pauses)
            gen, gt = nod_response(c.generated[:, groups.nod], pauses), nod_response(c.truth[:, groups.nod], pauses)
            if gen is not None and gt is not None:
                pairs.append((gen, gt))
        if pairs:
            add("nod_response", [p[0] for p in pairs], [p[1] for p in pairs])
            table["listener_pauses"] = {"generated": float(count)}
        pauses = [listener_pauses(c.user_voiced, c.avatar_voiced) for c in with_voicing]
        silent = [silent_moments(c.avatar_voiced) for c in with_voicing]
        generated = pause_lock([c.generated[:, groups.nod] for c in with_voicing], pauses, silent)
        truth = pause_lock([c.truth[:, groups.nod] for c in with_voicing], pauses, silent)
        if generated is not None and truth is not None:
            table["pause_locked_pitch"] = {"generated": generated[0], "ground_truth": truth[0]}
            table["pause_locked_pitch_chance"] = {"generated": generated[1], "ground_truth": truth[1]}
    return table


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | generated | ground truth |", "|---|---|---|"]
    for name, values in table.items():
        gt = values.get("ground_truth")
        lines.append(f"| {name} | {values['generated']:.4f} | {'' if gt is None else f'{gt:.4f}'} |")
    return "\n".join(lines) + "\n"
