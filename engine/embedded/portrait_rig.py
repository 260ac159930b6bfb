"""Animate one portrait photo with the default motion space's 13 parameters, on the CPU.

`PortraitRig(image, landmarks, matte)` prepares a photo once (about 0.2 s at 512x512);
`rig.render(params)` then draws a frame (about 10 ms at 512x512 on one core, docs/portrait.md). Pure numpy + OpenCV: the
landmarks (mediapipe FaceMesh, 478 points with irises) and the person matte come from the caller
(`avatarforcing.integrations.portrait_analysis` finds them).

The photo is the rest pose: all-zero parameters reproduce it, and every parameter moves the face
away from how it is in the photo (a head already turned 5 degrees turns to 5 + yaw). Blinks are
absolute closures (1 = the lid fully closed whatever the photo shows).

How a frame is made:

1. **Control points.** The 468 face landmarks (pixels; z is FaceMesh's depth, scaled like x),
   two rings around the face (hair, ears, neck), the image border, a row at the shoulders and a
   frame outside the image. Expressions move face landmarks by blend shapes built once in face
   units (jaw, smile, pucker, each eyelid, brows up and down). The head pose then moves them in
   3D about a pivot at the depth of the face's outline and projects them: features slide by
   their depth (the nose more than the cheeks) and the outline stays put, as a turning head's
   does. The other points follow the head rigidly above the jaw, fading to still at the
   shoulders.
2. **Exact inverse map.** The points' triangulation (fixed topology, built once by Delaunay) is
   drawn back to front into a triangle-index image of the output; each pixel's source position
   is its triangle's affine map from target to source. Squeezed areas vanish instead of
   smearing, and the nose hides the far cheek on a turned head.
3. **Layers.** The eye openings are holes in the skin mesh; behind each one an eye layer (its own
   triangles, moving with the head only) carries the eyeball, its iris shifted for the gaze and
   clipped by the photo's lids, so a closing lid covers the eye instead of squashing it. Photo and
   matte are remapped together; the mouth cavity (dark gradient, a band of upper teeth, a hint of
   tongue) is painted into the inner-lip polygon; the person is laid over a background plate
   filled in behind them (`background_plate`), over a solid colour, or returned as RGBA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

NUM_LANDMARKS = 478
NUM_FACE_POINTS = 468  # the mesh without the 10 iris points
NUM_PARAMS = 13

# FaceMesh landmark indices ("right"/"left" are the person's own: the right eye is on the image left).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
LIP_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LIP_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
MOUTH_CORNERS = (61, 291, 78, 308)
# eyelids from the outer corner to the inner one
EYE_RIGHT_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
EYE_RIGHT_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
EYE_LEFT_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
EYE_LEFT_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
BROW_RIGHT = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
BROW_LEFT = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
IRIS_RIGHT = (468, 469, 470, 471, 472)  # centre, then the ring
IRIS_LEFT = (473, 474, 475, 476, 477)
FOREHEAD, CHIN, CHEEK_RIGHT, CHEEK_LEFT = 10, 152, 234, 454

# motion-space parameter positions (avatarforcing.schemas.motion_space; not imported: engine code
# stays free of the schema's helpers it does not need, and the order is part of the contract)
YAW, PITCH, ROLL, SHIFT_X, SHIFT_Y, JAW, SMILE, PUCKER, BLINK_LEFT, BLINK_RIGHT, BROW, GAZE_X, GAZE_Y = range(13)
PARAM_LOWS = np.array([-35, -25, -20, -0.2, -0.2, 0, 0, 0, 0, 0, -1, -1, -1], np.float64)
PARAM_HIGHS = np.array([35, 25, 20, 0.2, 0.2, 1, 1, 1, 1, 1, 1, 1, 1], np.float64)

BACKGROUND_ORIGINAL = "original"
BACKGROUND_TRANSPARENT = "transparent"

LID_EDGE_SKIP = (0.8, 1.5)  # pixels of the upper and lower lid edge left behind by a closed lid
MAX_SQUEEZE = 4.0  # most photo pixels one output pixel may span (bounds folds and slivers)
# layers of the triangle draw order: behind everything, the eyeballs, then the skin back to front
_LAYER_BACK, _LAYER_EYE, _LAYER_FACE = 0, 1, 2


class PortraitRigError(ValueError):
    """The inputs cannot make a rig (wrong shapes or types, degenerate landmarks)."""


@dataclass(frozen=True)
class ExpressionGains:
    """How far each expression moves the face at parameter 1, in face units.

    W is the face width (cheek to cheek, landmarks 234-454), H the face height (forehead to chin,
    10-152), both in pixels of the photo. The mouth's width follows the motion space's own
    definition (``docs/motion_space.md``: a full smile is a mouth 0.50 face widths wide, a full
    pucker 0.26): each photo's corners move from where they are towards that width, within the
    given bounds. Other amounts were calibrated so that FaceMesh reads the rendered face close to
    the driving values (``docs/portrait.md``).
    """

    jaw_drop: float = 0.17  # lower inner lip travel, H
    chin_lever: float = 1.3  # the chin travels this many times the lower lip (it is farther from the hinge)
    smile_width: float = 0.50  # mouth width (corner to corner) at a full smile, W (the motion space's)
    smile_out: tuple[float, float] = (0.03, 0.075)  # least and most each corner moves out, W
    smile_up: float = 0.035  # each mouth corner upwards, H
    cheek_lift: float = 0.025  # cheeks upwards, H
    pucker_width: float = 0.26  # mouth width at a full pucker, W (the motion space's)
    pucker_in: tuple[float, float] = (0.02, 0.06)  # least and most each corner moves in, W
    pucker_round: float = 0.012  # lips outwards (taller mouth), H
    brow_up: float = 0.05  # brows upwards, H
    brow_down: float = 0.05  # brows downwards on a frown, H
    brow_squeeze: float = 0.03  # inner brow ends towards the midline on a frown, W
    lid_meet: float = 0.25  # closed lids meet this fraction of the opening above the lower lid
    gaze_x: float = 0.22  # iris travel sideways, eye widths
    gaze_y: float = 0.16  # iris travel up/down, eye widths
    lid_follow: float = 0.3  # the upper lids close this much of the way when looking fully down


@dataclass(frozen=True)
class RigConfig:
    """Look and geometry settings of a `PortraitRig`.

    `background`: ``"original"`` (the photo's background filled in behind the person, RGB
    frames), ``"transparent"`` (RGBA frames, alpha = the person matte) or an ``(r, g, b)`` colour.
    `depth_scale`: fraction of FaceMesh's depth used for the parallax of head turns (1 = as
    measured; lower = flatter, gentler turns). `foreshorten`: fraction of the cosine shrink applied
    across the face on turns and nods (0 = none, 1 = a rigid rotation's). `gains`: expression
    amounts.
    """

    background: str | tuple[int, int, int] = BACKGROUND_ORIGINAL
    depth_scale: float = 1.0
    foreshorten: float = 0.5
    gains: ExpressionGains = field(default_factory=ExpressionGains)

    def __post_init__(self) -> None:
        if isinstance(self.background, str):
            if self.background not in (BACKGROUND_ORIGINAL, BACKGROUND_TRANSPARENT):
                raise ValueError(f"background must be 'original', 'transparent' or (r, g, b), got {self.background!r}")
        elif len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise ValueError(f"background colour must be three values in 0..255, got {self.background!r}")
        if not 0.0 <= self.depth_scale <= 2.0 or not 0.0 <= self.foreshorten <= 1.0:
            raise ValueError("depth_scale must be in [0, 2] and foreshorten in [0, 1]")


# --------------------------------------------------------------------------------------------
# Face frame and small helpers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceFrame:
    """The face's own axes in the photo: `centre` ``[2]`` px (mean of forehead, chin and cheeks),
    `x_axis` ``[2]`` unit vector from the image-left eye to the image-right one, `y_axis` ``[2]``
    unit vector down the face, `width` (cheek to cheek) and `height` (forehead to chin) in px."""

    centre: np.ndarray
    x_axis: np.ndarray
    y_axis: np.ndarray
    width: float
    height: float

    @classmethod
    def from_landmarks(cls, xy: np.ndarray) -> FaceFrame:
        """Frame of FaceMesh landmarks ``[>=468, 2]`` in pixels."""
        x_axis = (xy[263] - xy[33]) + (xy[CHEEK_LEFT] - xy[CHEEK_RIGHT])
        x_axis = x_axis / max(float(np.linalg.norm(x_axis)), 1e-9)
        y_axis = np.array([-x_axis[1], x_axis[0]])
        centre = (xy[FOREHEAD] + xy[CHIN] + xy[CHEEK_RIGHT] + xy[CHEEK_LEFT]) / 4.0
        width = float(np.linalg.norm(xy[CHEEK_LEFT] - xy[CHEEK_RIGHT]))
        height = float(np.linalg.norm(xy[CHIN] - xy[FOREHEAD]))
        return cls(centre, x_axis, y_axis, width, height)

    def uv(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face coordinates of pixel points ``[n, 2]``: ``u`` in face widths (image right +),
        ``v`` in face heights (down +), both 0 at the centre."""
        d = np.asarray(xy, np.float64) - self.centre
        return d @ self.x_axis / self.width, d @ self.y_axis / self.height


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _chain_interp(u: np.ndarray, chain_u: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values along a landmark chain (sorted by ``u`` here) at positions `u`; flat beyond the ends."""
    order = np.argsort(chain_u)
    return np.interp(u, chain_u[order], values[order])


def _span_falloff(u: np.ndarray, low: float, high: float, width: float) -> np.ndarray:
    """1 inside ``[low, high]``, fading linearly to 0 over `width` outside it."""
    outside = np.maximum(low - u, 0.0) + np.maximum(u - high, 0.0)
    return np.clip(1.0 - outside / width, 0.0, 1.0)


def _eye_loop(upper: tuple[int, ...], lower: tuple[int, ...]) -> list[int]:
    """The eye opening as a closed polygon: the upper lid, then the lower lid back."""
    return [*upper, *lower[-2:0:-1]]


def refine_eye_corners(image: np.ndarray, landmarks: np.ndarray, max_reach: float = 0.15) -> np.ndarray:
    """Landmarks ``[478, 3]`` with each eye's outer corner moved out along the eye's axis to
    where the white of the eye really ends: FaceMesh's eye contour can stop short of a long
    (made-up, drawn) eye's outer corner, and white left outside the contour would stay visible
    through a closed lid. Real eyes are left as they are.

    Eye-white pixels are bright (luminance at least 80 % of the opening's bright end) and pale
    (saturation within 10 of the opening's whites); those outside the contour, connected to the
    whites inside it, ahead of the corner within `max_reach` eye widths and within 8 % of an eye
    width of the eye's axis pull the corner out to the farthest of them.
    """
    out = np.array(landmarks, np.float64, copy=True)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    height, width = gray.shape
    eyes = ((EYE_RIGHT_UPPER, EYE_RIGHT_LOWER, IRIS_RIGHT), (EYE_LEFT_UPPER, EYE_LEFT_LOWER, IRIS_LEFT))
    for upper, lower, iris in eyes:
        polygon = out[_eye_loop(upper, lower), :2]
        outer, inner = out[upper[0], :2], out[upper[-1], :2]
        eye_width = float(np.linalg.norm(outer - inner))
        reach = max_reach * eye_width
        x0, y0 = np.floor(polygon.min(axis=0) - reach - 2).astype(int)
        x1, y1 = np.ceil(polygon.max(axis=0) + reach + 3).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 - x0 < 4 or y1 - y0 < 4 or eye_width < 4:
            continue
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(inside, [np.round(polygon - (x0, y0)).astype(np.int32)], 1)
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        radius = np.mean(np.linalg.norm(out[list(iris[1:]), :2] - out[iris[0], :2], axis=1))
        lum, sat = gray[y0:y1, x0:x1], saturation[y0:y1, x0:x1]
        sclera = (inside > 0) & (np.hypot(gx - out[iris[0], 0], gy - out[iris[0], 1]) > radius + 1.0)
        if np.count_nonzero(sclera) < 6:
            continue
        bright = 0.8 * float(np.percentile(lum[sclera], 80))
        whites = sclera & (lum >= bright)
        if not whites.any():
            continue
        white = ((lum >= bright) & (sat <= float(np.median(sat[whites])) + 10.0)).astype(np.uint8)
        _, labels = cv2.connectedComponents(white, connectivity=8)
        touching = np.unique(labels[(white > 0) & (inside > 0)])
        outside = np.isin(labels, touching[touching > 0]) & (inside == 0)
        axis = (outer - inner) / eye_width
        ahead = (gx - outer[0]) * axis[0] + (gy - outer[1]) * axis[1]
        across = np.abs(-(gx - outer[0]) * axis[1] + (gy - outer[1]) * axis[0])
        candidates = outside & (ahead > 0) & (ahead <= reach) & (across <= 0.08 * eye_width)
        if candidates.any():
            out[upper[0], :2] = outer + (float(ahead[candidates].max()) + 0.5) * axis
    return out


# --------------------------------------------------------------------------------------------
# Expression blend shapes (face landmarks only)
# --------------------------------------------------------------------------------------------
BASIS_NAMES = ("jaw", "smile", "pucker", "blink_left", "blink_right", "brow_up", "brow_down")


def _jaw_basis(xy: np.ndarray, frame: FaceFrame, gains: ExpressionGains) -> np.ndarray:
    """Mouth opening at jaw 1: the lower jaw (lower lip, chin, jaw line) drops, more the farther
    below the hinge; the upper lip stays; the cheeks beside the mouth stretch."""
    u, v = frame.uv(xy)
    upper_inner = np.array(LIP_UPPER_INNER)
    line_v = _chain_interp(u, u[upper_inner], v[upper_inner])  # where the lips part, flat beyond the corners
    lower_outer = np.array(LIP_LOWER_OUTER)
    below_lip_v = _chain_interp(u, u[lower_outer], v[lower_outer])
    lo, hi = u[[61, 291]].min(), u[[61, 291]].max()
    within = _span_falloff(u, lo, hi, 0.08)
    q = np.clip((u - 0.5 * (lo + hi)) / max(0.5 * (hi - lo), 1e-6), -1.0, 1.0)
    # under the mouth the jaw starts right below the upper lip, and the opening is lens-shaped
    # (full in the middle, little at the corners) down to the lower lip, full below it
    lens = 0.2 + 0.8 * np.sqrt(1.0 - q * q)
    lens += (1.0 - lens) * _smoothstep((v - below_lip_v) / 0.08)
    under = lens * (v > line_v + 0.5 / frame.height)
    # on the cheeks beside the mouth the change is gentle
    beside = _smoothstep((v - line_v) / 0.12 + 0.5)
    member = within * under + (1.0 - within) * beside
    lower = list(LIP_LOWER_INNER + LIP_LOWER_OUTER)
    member[lower] = lens[lower]  # the lower lip, even where the photo's lips overlap the upper one
    member[list(LIP_UPPER_INNER + LIP_UPPER_OUTER)] = 0.0
    member[list(MOUTH_CORNERS)] = 0.15
    hinge_v = 0.5 * (v[CHEEK_RIGHT] + v[CHEEK_LEFT])
    lower_lip_v = v[14]
    lever = np.clip((v - hinge_v) / max(lower_lip_v - hinge_v, 1e-3), 0.0, gains.chin_lever)
    drop = gains.jaw_drop * frame.height * member * lever
    return drop[:, None] * frame.y_axis


def _mouth_profile(xy: np.ndarray, frame: FaceFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q, outside, dv)`` for mouth-centred fields: ``q`` the signed position across the mouth
    (-1 at the image-left corner, +1 at the other, beyond outside), ``outside`` a 1 -> 0 decay
    past the corners, ``dv`` the vertical distance to the lips' middle in face heights."""
    u, v = frame.uv(xy)
    corner_r, corner_l = u[61], u[291]
    mouth_u = 0.5 * (corner_r + corner_l)
    half = max(0.5 * (corner_l - corner_r), 1e-3)
    q = (u - mouth_u) / half
    beyond = np.maximum(np.abs(q) - 1.0, 0.0) * half  # in face widths past the corner
    outside = np.exp(-((beyond / 0.1) ** 2))
    return q, outside, v - 0.5 * (v[13] + v[14])


def _mouth_width(xy: np.ndarray, frame: FaceFrame) -> float:
    """The photo's mouth width (corner to corner) in face widths."""
    return float(np.linalg.norm(xy[291] - xy[61])) / frame.width


def _smile_basis(xy: np.ndarray, frame: FaceFrame, gains: ExpressionGains) -> np.ndarray:
    """Full smile: the mouth corners go out and up (the lips stretch, their middle stays), the
    cheeks and lower lids lift."""
    u, v = frame.uv(xy)
    q, outside, dv = _mouth_profile(xy, frame)
    near = np.exp(-((dv / 0.1) ** 2))
    across = np.where(np.abs(q) <= 1.0, q, np.sign(q) * outside)
    lift = np.where(np.abs(q) <= 1.0, q * q, outside)
    each = float(np.clip(0.5 * (gains.smile_width - _mouth_width(xy, frame)), *gains.smile_out))
    out = each * frame.width * across * near
    up = gains.smile_up * frame.height * lift * near
    cheeks = np.zeros_like(u)
    for side in (-1.0, 1.0):
        cheeks += np.exp(-(((u - side * 0.23) / 0.12) ** 2 + ((v - 0.02) / 0.1) ** 2))
    up += gains.cheek_lift * frame.height * np.minimum(cheeks, 1.0)
    return out[:, None] * frame.x_axis - up[:, None] * frame.y_axis


def _pucker_basis(xy: np.ndarray, frame: FaceFrame, gains: ExpressionGains) -> np.ndarray:
    """Full pucker ("oo"): the mouth narrows towards its middle and the lips push out, which
    makes the mouth a little taller."""
    _, v = frame.uv(xy)
    q, outside, dv = _mouth_profile(xy, frame)
    near = np.exp(-((dv / 0.08) ** 2))
    across = np.where(np.abs(q) <= 1.0, q, np.sign(q) * outside)
    each = float(np.clip(0.5 * (_mouth_width(xy, frame) - gains.pucker_width), *gains.pucker_in))
    inward = -each * frame.width * across * near
    rounder = np.zeros_like(v)
    body = np.clip(1.0 - q * q, 0.0, 1.0)
    rounder[list(LIP_UPPER_OUTER)] = -1.0
    rounder[list(LIP_LOWER_OUTER)] = 1.0
    rounder[list(LIP_UPPER_INNER)] = -0.4
    rounder[list(LIP_LOWER_INNER)] = 0.4
    taller = gains.pucker_round * frame.height * rounder * body
    return inward[:, None] * frame.x_axis + taller[:, None] * frame.y_axis


def _blink_basis(
    xy: np.ndarray,
    frame: FaceFrame,
    gains: ExpressionGains,
    upper: tuple[int, ...],
    lower: tuple[int, ...],
    brow: tuple[int, ...],
) -> np.ndarray:
    """One eye closed: both lids meet on a line `lid_meet` of the opening above the lower lid
    (each passes it by half a pixel, so that no sliver of the eye shows between them); the lid
    skin up to the brow and a little below the eye follows, less the farther it is."""
    u, v = frame.uv(xy)
    up_idx, low_idx = np.array(upper), np.array(lower)
    v_up_at = _chain_interp(u, u[up_idx], v[up_idx])
    v_low_at = _chain_interp(u, u[low_idx], v[low_idx])
    meet = v_low_at + gains.lid_meet * (v_up_at - v_low_at)
    shift = np.zeros_like(v)  # along y, face heights
    inner_up, inner_low = up_idx[1:-1], low_idx[1:-1]
    overlap = 0.5 / frame.height
    shift[inner_up] = meet[inner_up] + overlap - v[inner_up]
    shift[inner_low] = meet[inner_low] - overlap - v[inner_low]
    # skin above the upper lid, up to the brow, and below the lower lid: follows with a falloff
    eye_u = u[up_idx]
    span = _span_falloff(u, eye_u.min(), eye_u.max(), 0.04)
    brow_idx = np.array(brow)
    v_brow_at = _chain_interp(u, u[brow_idx], v[brow_idx])
    lid_travel_up = meet - v_up_at
    lid_travel_low = meet - v_low_at
    lids = np.zeros(len(v), bool)
    lids[up_idx] = lids[low_idx] = True
    above = (~lids) & (v < v_up_at) & (v > v_brow_at)
    weight_above = ((v - v_brow_at) / np.maximum(v_up_at - v_brow_at, 1e-3)) ** 2
    shift[above] = (0.85 * weight_above * lid_travel_up * span)[above]
    below = (~lids) & (v > v_low_at) & (v < v_low_at + 0.06)
    weight_below = 1.0 - (v - v_low_at) / 0.06
    shift[below] = (0.5 * weight_below * lid_travel_low * span)[below]
    shift[[upper[0], upper[-1]]] = 0.0  # the corners stay
    return (shift * frame.height)[:, None] * frame.y_axis


def _brow_bases(xy: np.ndarray, frame: FaceFrame, gains: ExpressionGains) -> tuple[np.ndarray, np.ndarray]:
    """Brows fully raised, and a full frown (brows down, inner ends drawn together). The
    forehead above follows with a falloff; the lid skin between brow and lid follows partly;
    the lids themselves stay."""
    u, v = frame.uv(xy)
    weight = np.zeros_like(u)
    lids = np.array(EYE_RIGHT_UPPER + EYE_RIGHT_LOWER + EYE_LEFT_UPPER + EYE_LEFT_LOWER)
    for brow, upper in ((BROW_RIGHT, EYE_RIGHT_UPPER), (BROW_LEFT, EYE_LEFT_UPPER)):
        b, up = np.array(brow), np.array(upper)
        v_brow = _chain_interp(u, u[b], v[b])
        v_lid = _chain_interp(u, u[up], v[up])
        span = _span_falloff(u, u[b].min(), u[b].max(), 0.1)
        side = u * np.sign(u[b].mean()) > -0.05  # this brow's half of the face
        above = np.exp(-((np.maximum(v_brow - v, 0.0) / 0.18) ** 2))
        between = np.clip((v_lid - v) / np.maximum(v_lid - v_brow, 1e-3), 0.0, 1.0) ** 1.5
        w = np.where(v <= v_brow, above, between) * span * side
        weight = np.maximum(weight, w)
        weight[b] = 1.0
    weight[lids] = 0.0
    raise_shift = -gains.brow_up * frame.height * weight
    frown_shift = gains.brow_down * frame.height * weight
    inner = np.clip(1.0 - (np.abs(u) - 0.04) / 0.25, 0.0, 1.0)
    squeeze = -np.sign(u) * gains.brow_squeeze * frame.width * weight * inner
    up = raise_shift[:, None] * frame.y_axis
    down = frown_shift[:, None] * frame.y_axis + squeeze[:, None] * frame.x_axis
    return up, down


def expression_bases(xy: np.ndarray, frame: FaceFrame, gains: ExpressionGains) -> np.ndarray:
    """Blend shapes ``float64 [7, 468, 2]`` (pixels, in `BASIS_NAMES` order) of face landmarks
    ``xy [>=468, 2]``: displacement of each landmark at expression value 1."""
    face = np.asarray(xy, np.float64)[:NUM_FACE_POINTS]
    brow_up, brow_down = _brow_bases(face, frame, gains)
    return np.stack(
        [
            _jaw_basis(face, frame, gains),
            _smile_basis(face, frame, gains),
            _pucker_basis(face, frame, gains),
            _blink_basis(face, frame, gains, EYE_LEFT_UPPER, EYE_LEFT_LOWER, BROW_LEFT),
            _blink_basis(face, frame, gains, EYE_RIGHT_UPPER, EYE_RIGHT_LOWER, BROW_RIGHT),
            brow_up,
            brow_down,
        ]
    )


def expression_weights(params: np.ndarray, lid_follow: float = 0.0) -> np.ndarray:
    """The 13 parameters -> weights ``float64 [7]`` of `expression_bases`; the upper lids close
    `lid_follow` of the way when the eyes look fully down (as real lids follow the eyes)."""
    brow = float(params[BROW])
    down = lid_follow * max(float(params[GAZE_Y]), 0.0)
    blink_left = min(1.0, float(params[BLINK_LEFT]) + down)
    blink_right = min(1.0, float(params[BLINK_RIGHT]) + down)
    return np.array(
        [params[JAW], params[SMILE], params[PUCKER], blink_left, blink_right, max(brow, 0.0), max(-brow, 0.0)],
        np.float64,
    )


# --------------------------------------------------------------------------------------------
# Control points and their triangulation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RigMesh:
    """The rig's control points and fixed topology.

    `source` ``float64 [N, 2]``: rest positions in photo pixels; `depth` ``[N]``: depth in
    pixels relative to the face outline's (negative = nearer the camera; see `parallax_depth`);
    `follow` ``[N]``: how much each point follows the head (1 for the face, fading to 0 at the
    shoulders and the outside frame); `duplicates` ``[N]``: for eye-layer points, the face
    landmark they copy (-1 otherwise); `anchor`, `anchor_weight` ``[N]``: ring points take this
    share of their outline landmark's expression motion (the neck follows the dropping chin);
    `triangles` ``int32 [M, 3]``; `layer` ``[M]``: 0 behind, 1 eye layer, 2 skin (sorted by
    depth each frame).
    """

    source: np.ndarray
    depth: np.ndarray
    follow: np.ndarray
    duplicates: np.ndarray
    anchor: np.ndarray
    anchor_weight: np.ndarray
    triangles: np.ndarray
    layer: np.ndarray


def _extra_points(
    xy: np.ndarray, depth: np.ndarray, frame: FaceFrame, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points around the face: ``(xy [K, 2], depth [K], follow [K], anchor [K], anchor_weight
    [K])`` (see `RigMesh`).

    Two rings through the hair, ears and neck (the face outline pushed out 1.2x and 1.7x from
    the face centre; their depth halfway/mostly towards the outline plane so that hair follows
    a nod), the image border, a row at the shoulders and a frame well outside the image. Points
    follow the head fully above the jaw and not at all 0.35 face heights below the chin.
    """
    height, width = size
    oval = xy[list(FACE_OVAL)]
    rings = [frame.centre + scale * (oval - frame.centre) for scale in (1.2, 1.7)]
    ring_depth = [depth[list(FACE_OVAL)] * keep for keep in (0.5, 0.2)]
    n = 9
    xs, ys = np.linspace(0, width - 1, n), np.linspace(0, height - 1, n)
    border = np.array(
        [(x, 0.0) for x in xs] + [(x, height - 1.0) for x in xs] + [(0.0, y) for y in ys[1:-1]]
        + [(width - 1.0, y) for y in ys[1:-1]]
    )  # fmt: skip
    shoulder_y = xy[CHIN, 1] + 0.45 * frame.height
    shoulders = np.array([(x, shoulder_y) for x in xs]) if shoulder_y < height - 2 else np.zeros((0, 2))
    pad = 0.5 * max(height, width)
    lo_x, hi_x, lo_y, hi_y = -pad, width - 1 + pad, -pad, height - 1 + pad
    outside = np.array(
        [(lo_x, lo_y), (0.5 * width, lo_y), (hi_x, lo_y), (lo_x, 0.5 * height), (hi_x, 0.5 * height),
         (lo_x, hi_y), (0.5 * width, hi_y), (hi_x, hi_y)]
    )  # fmt: skip
    points = np.concatenate([*rings, border, shoulders, outside])
    point_depth = np.concatenate([*ring_depth, np.zeros(len(border) + len(shoulders) + len(outside))])
    _, v = frame.uv(points)
    chin_v = frame.uv(xy[[CHIN]])[1][0]
    follow = np.clip(1.0 - (v - (chin_v - 0.05)) / 0.35, 0.0, 1.0)
    follow[len(points) - len(shoulders) - len(outside) :] = 0.0
    anchor = np.full(len(points), -1)
    anchor[: 2 * len(oval)] = np.tile(np.array(FACE_OVAL), 2)
    anchor_weight = np.zeros(len(points))
    anchor_weight[: 2 * len(oval)] = np.repeat([0.8, 0.3], len(oval))
    return points, point_depth, follow, anchor, anchor_weight


def _delaunay(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles ``int32 [M, 3]`` of distinct points ``[n, 2]`` (OpenCV's Subdiv2D)."""
    lo = points.min(axis=0) - 10.0
    hi = points.max(axis=0) + 10.0
    subdiv = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    key = {}
    for index, (x, y) in enumerate(points.astype(np.float32)):
        subdiv.insert((float(x), float(y)))
        key[(float(x), float(y))] = index
    triangles = []
    for t in subdiv.getTriangleList():
        corners = [key.get((float(np.float32(t[2 * k])), float(np.float32(t[2 * k + 1])))) for k in range(3)]
        if None not in corners:  # triangles touching Subdiv2D's own outer vertices are dropped
            triangles.append(corners)
    return np.array(triangles, np.int32)


def _triangles_by_side(points: np.ndarray, outline: np.ndarray, inside: bool) -> np.ndarray:
    """Delaunay triangles of `points` whose centroids lie inside (or outside) the polygon
    `outline` ``[k, 2]``."""
    triangles = _delaunay(points)
    polygon = outline.astype(np.float32)
    centroids = points[triangles].mean(axis=1)
    side = np.array([cv2.pointPolygonTest(polygon, (float(x), float(y)), False) for x, y in centroids])
    return triangles[side > 0] if inside else triangles[side < 0]


def _separate(points: np.ndarray, min_distance: float = 0.05) -> np.ndarray:
    """Nudge points that (nearly) coincide, such as the two inner lips of a closed mouth, so
    that each one is its own mesh vertex. Deterministic: later points move down by a hair."""
    out = points.copy()
    rounded = np.round(out / min_distance).astype(np.int64)
    _, counts = np.unique(rounded, axis=0, return_counts=True)
    if np.all(counts == 1):
        return out
    seen: dict[tuple[int, int], int] = {}
    for index, cell in enumerate(map(tuple, rounded)):
        repeat = seen.get(cell, 0)
        seen[cell] = repeat + 1
        out[index, 1] += 2.0 * min_distance * repeat
    return out


def parallax_depth(landmarks: np.ndarray, frame: FaceFrame) -> np.ndarray:
    """Depth ``float64 [468]`` (pixels, relative to the outline at the cheeks; - = nearer) of the
    face landmarks for the parallax of head turns.

    FaceMesh's depth drops steeply in the last few pixels before the outline (the side of the
    face is foreshortened in the photo); used as is, a turn would stretch that thin strip of
    the photo several times over. So the depth is a paraboloid from the outline's own depth
    (interpolated around it) to the face's middle, plus FaceMesh's relief above that paraboloid
    (nose, lips, eye sockets) fading out towards the outline.
    """
    xy = landmarks[:NUM_FACE_POINTS, :2].astype(np.float64)
    z = landmarks[:NUM_FACE_POINTS, 2].astype(np.float64)
    oval = np.array(FACE_OVAL)
    d = xy - frame.centre
    angle, dist = np.arctan2(d[:, 1], d[:, 0]), np.hypot(d[:, 0], d[:, 1])
    order = np.argsort(angle[oval])
    oval_angle, oval_dist, oval_z = angle[oval][order], dist[oval][order], z[oval][order]
    reach = np.interp(angle, oval_angle, oval_dist, period=2 * np.pi)
    outline_z = np.interp(angle, oval_angle, oval_z, period=2 * np.pi)
    r2 = np.clip(dist / np.maximum(reach, 1e-6), 0.0, 1.0) ** 2
    dome = 1.0 - r2
    inner = r2 < 0.8
    height = float(np.sum((z - outline_z)[inner] * dome[inner]) / max(np.sum(dome[inner] ** 2), 1e-9))
    base = outline_z + height * dome
    relief = (z - base) * (1.0 - _smoothstep((np.sqrt(r2) - 0.55) / 0.4))
    sides = oval[np.abs(frame.uv(xy[oval])[0]) > 0.35]
    return base + relief - float(np.median(z[sides]))


def build_mesh(
    landmarks: np.ndarray, frame: FaceFrame, size: tuple[int, int], mouth_open: np.ndarray | None = None
) -> RigMesh:
    """The rig's control points and triangles for FaceMesh `landmarks` ``[478, 3]`` (pixels) of
    a photo of `size` ``(height, width)``.

    `mouth_open` ``[468, 2]``: a small mouth-opening displacement applied to the face points for
    the triangulation only, so that no triangle bridges the closed lips (with the mouth shut,
    the photo's two inner-lip lines nearly coincide, even cross).
    """
    xy = landmarks[:NUM_FACE_POINTS, :2].astype(np.float64)
    depth = parallax_depth(landmarks, frame)
    layout = xy if mouth_open is None else xy + mouth_open

    loops = [_eye_loop(EYE_RIGHT_UPPER, EYE_RIGHT_LOWER), _eye_loop(EYE_LEFT_UPPER, EYE_LEFT_LOWER)]
    eye_xy, eye_depth, duplicates = [], [], []
    for loop in loops:
        eye_xy += [xy[loop], xy[loop].mean(axis=0, keepdims=True)]
        eye_depth += [depth[loop], [float(depth[loop].mean())]]
        duplicates += [*loop, -1]
    extra_xy, extra_depth, extra_follow, extra_anchor, extra_weight = _extra_points(xy, depth, frame, size)

    source = np.concatenate([xy, *eye_xy, extra_xy])
    all_depth = np.concatenate([depth, np.concatenate(eye_depth), extra_depth])
    n_eye = len(duplicates)
    follow = np.concatenate([np.ones(NUM_FACE_POINTS + n_eye), extra_follow])
    dup = np.concatenate([np.full(NUM_FACE_POINTS, -1), duplicates, np.full(len(extra_xy), -1)]).astype(np.int64)
    anchor = np.concatenate([np.full(NUM_FACE_POINTS + n_eye, -1), extra_anchor]).astype(np.int64)
    anchor_weight = np.concatenate([np.zeros(NUM_FACE_POINTS + n_eye), extra_weight])

    # the skin inside the face outline (with holes at the eyes) and the surroundings outside it are
    # triangulated apart, so that the two layers meet exactly along the outline
    outline = layout[list(FACE_OVAL)]
    face_triangles = _triangles_by_side(_separate(layout), outline, inside=True)
    keep = np.ones(len(face_triangles), bool)
    centroids = layout[face_triangles].mean(axis=1)
    for loop in loops:  # holes where the eyes open
        polygon = layout[loop].astype(np.float32)
        for k, (cx, cy) in enumerate(centroids):
            if keep[k] and np.isin(face_triangles[k], loop).all():
                keep[k] = cv2.pointPolygonTest(polygon, (float(cx), float(cy)), False) < 0
    face_triangles = face_triangles[keep]
    outer_ids = np.concatenate([np.array(FACE_OVAL), NUM_FACE_POINTS + n_eye + np.arange(len(extra_xy))])
    outer_layout = np.concatenate([outline, extra_xy])
    outer_triangles = outer_ids[_triangles_by_side(_separate(outer_layout), outline, inside=False)]
    triangles = np.concatenate([outer_triangles, face_triangles])
    layer = np.concatenate([np.full(len(outer_triangles), _LAYER_BACK), np.full(len(face_triangles), _LAYER_FACE)])

    # eye layers: a fan from each opening's centre
    eye_triangles = []
    start = NUM_FACE_POINTS
    for loop in loops:
        ring = start + np.arange(len(loop))
        centre = start + len(loop)
        eye_triangles += [(centre, ring[k], ring[(k + 1) % len(loop)]) for k in range(len(loop))]
        start = centre + 1
    triangles = np.concatenate([triangles, np.array(eye_triangles)]).astype(np.int32)
    layer = np.concatenate([layer, np.full(len(eye_triangles), _LAYER_EYE)])
    return RigMesh(source, all_depth, follow, dup, anchor, anchor_weight, triangles, layer)


# --------------------------------------------------------------------------------------------
# Head pose
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadPose:
    """A head pose applied to points: angles in radians, `shift` ``[2]`` in pixels, `pivot`
    ``[2]`` (turns and nods) and `roll_pivot` ``[2]`` in pixels, `axes` ``(x_axis, y_axis)`` of
    the face frame, `depth_scale` and `foreshorten` as in `RigConfig`."""

    yaw: float
    pitch: float
    roll: float
    shift: np.ndarray
    pivot: np.ndarray
    roll_pivot: np.ndarray
    axes: tuple[np.ndarray, np.ndarray]
    depth_scale: float
    foreshorten: float

    def apply(self, xy: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move points ``xy [n, 2]`` with relative depths ``[n]``: turn (yaw) and nod (pitch)
        about the pivot at the outline's depth (features slide by their depth; a partial cosine
        shrink), roll in the image plane about the neck, then shift. Returns ``(xy [n, 2],
        depth [n])`` (the new depth orders triangles)."""
        x_axis, y_axis = self.axes
        d = xy - self.pivot
        a, b = d @ x_axis, d @ y_axis
        z = depth * self.depth_scale
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        k = self.foreshorten
        a1 = a * (1.0 - k * (1.0 - cy)) - z * sy
        z1 = a * sy + z * cy
        b1 = b * (1.0 - k * (1.0 - cp)) - z1 * sp
        z2 = b * sp + z1 * cp
        turned = self.pivot + a1[:, None] * x_axis + b1[:, None] * y_axis
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        r = turned - self.roll_pivot
        rolled = self.roll_pivot + np.stack([cr * r[:, 0] - sr * r[:, 1], sr * r[:, 0] + cr * r[:, 1]], axis=1)
        return rolled + self.shift, z2


# --------------------------------------------------------------------------------------------
# Inverse map by rasterising the target mesh
# --------------------------------------------------------------------------------------------
class _InverseMapper:
    """Turns target positions of the mesh into ``cv2.remap`` maps (output pixel -> photo pixel).

    Each frame the triangles are filled, back to front, with their index (OpenCV's polygon fill,
    1/16-pixel vertex precision, into an int16 map whose second channel stays 0); a pixel's
    source position is then its triangle's target-to-source affine map at that pixel: the
    coefficients are looked up with nearest-neighbour ``remap`` from per-triangle tables and
    combined with the pixel's own position by ``cv2.multiply`` and ``cv2.add`` (all in C, on
    contiguous single-channel images). Pixels no triangle covers map to themselves.
    """

    def __init__(self, size: tuple[int, int], mesh: RigMesh) -> None:
        height, width = size
        self.triangles = mesh.triangles
        self.source = mesh.source.astype(np.float64)
        self.back = np.flatnonzero(mesh.layer == _LAYER_BACK)
        self.eyes = np.flatnonzero(mesh.layer == _LAYER_EYE)
        self.face = np.flatnonzero(mesh.layer == _LAYER_FACE)
        if len(self.triangles) + 1 > np.iinfo(np.int16).max:
            raise PortraitRigError(f"too many triangles for the int16 index map: {len(self.triangles)}")
        self.ids = np.zeros((height, width, 2), np.int16)
        self.grid_x, self.grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        # per-triangle tables, one row each: ax, ay, bx, by, cx, cy, moving; the last column is
        # for pixels no triangle covers (identity, not moving)
        self._tables = np.zeros((7, 1, len(self.triangles) + 1), np.float32)
        self._tables[[0, 3], 0, -1] = 1.0

    def _affines(self, target: np.ndarray, source: np.ndarray) -> np.ndarray:
        """Per triangle ``[M, 6]``: ``(ax, ay, bx, by, cx, cy)`` with source ``x = ax*X + bx*Y +
        cx`` and ``y = ay*X + by*Y + cy`` at output pixel ``(X, Y)``.

        The linear part is limited to a gain of `MAX_SQUEEZE` about the triangle's centroid: the
        rasteriser also gives a triangle the pixels its edges touch, and a squeezed (thin,
        folding) triangle would otherwise extrapolate those far into the photo.
        """
        tri_t = target[self.triangles]  # [M, 3, 2]
        tri_s = source[self.triangles]
        centre_t, centre_s = tri_t.mean(axis=1), tri_s.mean(axis=1)
        # edge matrices (columns = the two edges from the first corner), target T and source S
        t11, t21 = tri_t[:, 1, 0] - tri_t[:, 0, 0], tri_t[:, 1, 1] - tri_t[:, 0, 1]
        t12, t22 = tri_t[:, 2, 0] - tri_t[:, 0, 0], tri_t[:, 2, 1] - tri_t[:, 0, 1]
        s11, s21 = tri_s[:, 1, 0] - tri_s[:, 0, 0], tri_s[:, 1, 1] - tri_s[:, 0, 1]
        s12, s22 = tri_s[:, 2, 0] - tri_s[:, 0, 0], tri_s[:, 2, 1] - tri_s[:, 0, 1]
        det = t11 * t22 - t12 * t21
        inv = np.where(np.abs(det) > 1e-6, 1.0 / np.where(det == 0.0, 1.0, det), 0.0)  # collapsed: constant
        # linear part L = S T^-1 (source = L (x - centre_t) + centre_s)
        l11 = (s11 * t22 - s12 * t21) * inv
        l12 = (s12 * t11 - s11 * t12) * inv
        l21 = (s21 * t22 - s22 * t21) * inv
        l22 = (s22 * t11 - s21 * t12) * inv
        squares = l11 * l11 + l12 * l12 + l21 * l21 + l22 * l22
        det_l = l11 * l22 - l12 * l21
        gain = np.sqrt(0.5 * (squares + np.sqrt(np.maximum(squares * squares - 4.0 * det_l * det_l, 0.0))))
        limit = np.minimum(1.0, MAX_SQUEEZE / np.maximum(gain, 1e-9))
        l11, l12, l21, l22 = l11 * limit, l12 * limit, l21 * limit, l22 * limit
        cx = centre_s[:, 0] - l11 * centre_t[:, 0] - l12 * centre_t[:, 1]
        cy = centre_s[:, 1] - l21 * centre_t[:, 0] - l22 * centre_t[:, 1]
        return np.stack([l11, l21, l12, l22, cx, cy], axis=1)

    def maps(
        self, target: np.ndarray, depth: np.ndarray, source: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(map_x, map_y, moving)`` ``float32 [H, W]`` for target positions ``[N, 2]`` and depths
        ``[N]``: the photo position of each output pixel (for ``cv2.remap``) and `moving`, 0 where
        the pixel's triangle has not moved (no corner more than 0.05 px) rising to 1 at 1 px.
        `source` ``[N, 2]`` replaces the mesh's rest positions for this frame."""
        tables = self._tables
        tables[:6, 0, :-1] = self._affines(target, self.source if source is None else source).T
        moved = np.linalg.norm(target - self.source, axis=1)[self.triangles].max(axis=1)
        tables[6, 0, :-1] = np.clip(moved - 0.05, 0.0, 1.0)
        face_depth = depth[self.triangles[self.face]].mean(axis=1)
        order = np.concatenate([self.back, self.eyes, self.face[np.argsort(-face_depth, kind="stable")]])
        corners = np.round(target[self.triangles[order]] * 16.0).astype(np.int32)
        ids = self.ids
        ids[..., 0] = len(self.triangles)
        for t, triangle in zip(order.tolist(), corners):
            cv2.fillConvexPoly(ids, triangle, (t, 0), cv2.LINE_8, 4)
        ax, ay, bx, by, map_x, map_y, moving = (cv2.remap(table, ids, None, cv2.INTER_NEAREST) for table in tables)
        for map_, a, b in ((map_x, ax, bx), (map_y, ay, by)):  # map += a * X + b * Y, fused
            cv2.accumulateProduct(a, self.grid_x, map_)
            cv2.accumulateProduct(b, self.grid_y, map_)
        return map_x, map_y, moving


# --------------------------------------------------------------------------------------------
# Eyes: the eyeball behind each opening, with the iris moved for the gaze
# --------------------------------------------------------------------------------------------
@dataclass
class _EyeSprite:
    """One eye's patch of the photo: `box` ``(x0, y0, x1, y1)``, the `original` pixels, the
    eyeball with the iris painted out (`sclera`), the iris with its surroundings and a disk
    alpha (`iris`, ``float32 [h, w, 4]``; iris parts hidden under the lids in the photo filled
    by mirroring), and the opening's anti-aliased mask (`opening`, ``float32 [h, w, 1]``).
    A zero gaze gives back the photo but for the few lid-edge pixels over the iris."""

    box: tuple[int, int, int, int]
    original: np.ndarray
    sclera: np.ndarray
    iris: np.ndarray
    opening: np.ndarray
    eye_width: float

    @classmethod
    def build(cls, image: np.ndarray, landmarks: np.ndarray, loop: list[int], iris: tuple[int, ...]) -> _EyeSprite:
        xy = landmarks[:, :2]
        eye_width = float(np.linalg.norm(xy[loop[0]] - xy[loop[len(loop) // 2]]))
        centre = xy[iris[0]]
        radius = float(np.mean(np.linalg.norm(xy[list(iris[1:])] - centre, axis=1)))
        radius = float(np.clip(radius, 0.12 * eye_width, 0.3 * eye_width))
        polygon = xy[loop]
        margin = radius + 4.0
        lo = np.floor(np.minimum(polygon.min(axis=0), centre - margin)).astype(int) - 2
        hi = np.ceil(np.maximum(polygon.max(axis=0), centre + margin)).astype(int) + 3
        height, width = image.shape[:2]
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]), width), min(int(hi[1]), height)
        original = image[y0:y1, x0:x1].copy()
        mask = np.zeros(original.shape[:2], np.uint8)
        local = np.round((polygon - (x0, y0)) * 16.0).astype(np.int32)
        cv2.fillPoly(mask, [local], 255, cv2.LINE_AA, 4)
        opening = (mask.astype(np.float32) / 255.0)[..., None]
        gx, gy = np.meshgrid(np.arange(x1 - x0, dtype=np.float32), np.arange(y1 - y0, dtype=np.float32))
        cx, cy = float(centre[0] - x0), float(centre[1] - y0)
        dist = np.hypot(gx - cx, gy - cy)
        alpha = np.clip(radius + 2.0 - dist, 0.0, 1.0)
        # iris hidden under a lid in the photo: mirror it from the other side of the centre
        iris_rgb = original.astype(np.float32)
        # (pixels the lid edge half covers count as hidden: else the lashes would move with the iris)
        hidden = (opening[..., 0] < 0.75) & (dist <= radius + 2.0)
        visible_iris = (opening[..., 0] > 0.99) & (dist <= radius)
        mean_iris = iris_rgb[visible_iris].mean(axis=0) if visible_iris.any() else iris_rgb.reshape(-1, 3).mean(axis=0)
        hy, hx = np.nonzero(hidden)
        my = np.clip(np.round(2.0 * cy - hy).astype(int), 0, original.shape[0] - 1)
        mirrored_ok = opening[my, hx, 0] > 0.99
        iris_rgb[hy, hx] = np.where(mirrored_ok[:, None], iris_rgb[my, hx], mean_iris)
        iris_layer = np.dstack([iris_rgb, alpha]).astype(np.float32)
        # the eyeball without its iris: inpaint the iris where the opening shows it
        paint = ((dist <= radius + 1.0) & (opening[..., 0] > 0.0)).astype(np.uint8)
        sclera = cv2.inpaint(original, paint, 3, cv2.INPAINT_TELEA) if paint.any() else original.copy()
        return cls((x0, y0, x1, y1), original, sclera, iris_layer, opening, eye_width)

    def compose(self, shift: np.ndarray) -> np.ndarray:
        """The patch ``uint8 [h, w, 3]`` with the iris moved by `shift` ``[2]`` pixels, clipped by
        the photo's lids."""
        h, w = self.original.shape[:2]
        move = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], np.float32)
        moved = cv2.warpAffine(self.iris, move, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        alpha = moved[..., 3:4]
        inside = self.sclera.astype(np.float32) * (1.0 - alpha) + moved[..., :3] * alpha
        out = self.original.astype(np.float32) * (1.0 - self.opening) + inside * self.opening
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Mouth: the cavity painted into the opened lips
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _MouthLook:
    """Colours ``float32 [3]`` (RGB) of the painted mouth, read off the photo: `cavity` (dark,
    from the lips' colour), `teeth` (off-white at the face's brightness), `tongue`."""

    cavity: np.ndarray
    teeth: np.ndarray
    tongue: np.ndarray

    @classmethod
    def from_photo(cls, image: np.ndarray, landmarks: np.ndarray) -> _MouthLook:
        xy = landmarks[:, :2]
        samples = []
        for outer, inner in ((LIP_UPPER_OUTER, LIP_UPPER_INNER), (LIP_LOWER_OUTER, LIP_LOWER_INNER)):
            mid = 0.5 * (xy[list(outer[2:-2])] + xy[list(inner[2:-2])])
            ix = np.clip(np.round(mid).astype(int), 0, [image.shape[1] - 1, image.shape[0] - 1])
            samples.append(image[ix[:, 1], ix[:, 0]].astype(np.float32))
        lips = np.median(np.concatenate(samples), axis=0)
        cheeks = xy[[50, 280, 101, 330]]
        ix = np.clip(np.round(cheeks).astype(int), 0, [image.shape[1] - 1, image.shape[0] - 1])
        skin = image[ix[:, 1], ix[:, 0]].astype(np.float32).mean(axis=0)
        light = float(np.clip(skin.mean() / 170.0, 0.7, 1.05))
        teeth = np.array([222.0, 214.0, 198.0], np.float32) * light
        return cls(cavity=lips * 0.22 + 4.0, teeth=teeth, tongue=lips * 0.55)


def paint_mouth(
    rgb: np.ndarray, upper: np.ndarray, lower: np.ndarray, opening: float, look: _MouthLook, face_height: float
) -> None:
    """Paint the mouth cavity in place into `rgb` ``uint8 [H, W, 3 or 4]`` (colour channels only).

    `upper`, `lower` ``[11, 2]``: target inner-lip chains from corner to corner (pixels);
    `opening` in [0, 1]: opacity (0 keeps the photo's own mouth). Inside the inner-lip polygon
    (anti-aliased): a dark gradient, deepest in the middle, a band of upper teeth under the upper
    lip (thicker as the mouth opens, thinning towards the corners, shaded by the lip) and a hint
    of tongue at the bottom.
    """
    if opening <= 0.0:
        return
    polygon = np.concatenate([upper, lower[-2:0:-1]])
    lo = np.floor(polygon.min(axis=0)).astype(int) - 2
    hi = np.ceil(polygon.max(axis=0)).astype(int) + 3
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(hi[0]), rgb.shape[1]), min(int(hi[1]), rgb.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round((polygon - (x0, y0)) * 16.0).astype(np.int32)], 255, cv2.LINE_AA, 4)
    if not mask.any():
        return
    # mouth-local coordinates: s along the corner-to-corner line, t across it (down +)
    axis = upper[-1] - upper[0]
    axis = axis / max(float(np.linalg.norm(axis)), 1e-6)
    normal = np.array([-axis[1], axis[0]])
    origin = 0.5 * (upper[0] + upper[-1])
    gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
    s = (gx - origin[0]) * axis[0] + (gy - origin[1]) * axis[1]
    t = (gx - origin[0]) * normal[0] + (gy - origin[1]) * normal[1]
    su, tu = (upper - origin) @ axis, (upper - origin) @ normal
    sl, tl = (lower - origin) @ axis, (lower - origin) @ normal
    top = np.interp(s, su[np.argsort(su)], tu[np.argsort(su)])
    bottom = np.interp(s, sl[np.argsort(sl)], tl[np.argsort(sl)])
    gap = np.maximum(bottom - top, 0.5)
    depth_v = np.clip((t - top) / gap, 0.0, 1.0)
    half = max(0.5 * (su.max() - su.min()), 1.0)
    across = np.clip(1.0 - ((s - 0.5 * (su.max() + su.min())) / half) ** 2, 0.0, 1.0)  # 1 mid, 0 corners
    deep = across * (1.0 - np.abs(2.0 * depth_v - 1.0))
    colour = look.cavity[None, None, :] * (1.0 - 0.55 * deep)[..., None]
    # tongue: a soft hint at the bottom of a well-opened mouth
    tongue = np.clip((depth_v - 0.62) / 0.3, 0.0, 1.0) * across * np.clip((gap - 6.0) / 10.0, 0.0, 0.6)
    colour = colour * (1.0 - tongue[..., None]) + look.tongue * tongue[..., None]
    # upper teeth under the upper lip: shaded by the lip above, darker towards the corners,
    # with faint gaps beside the two front teeth (0 and 0.045 face heights from the middle)
    teeth_h = np.minimum(0.3 * gap, 0.05 * face_height) * np.sqrt(across)
    below_lip = t - top
    teeth = np.clip(teeth_h - below_lip + 0.5, 0.0, 1.0) * np.clip((gap - 2.0) / 4.0, 0.0, 1.0) * 0.92
    shade = (0.6 + 0.4 * np.clip(below_lip / np.maximum(0.5 * teeth_h, 0.5), 0.0, 1.0)) * (0.55 + 0.45 * across)
    from_middle = np.abs(s - 0.5 * (su.max() + su.min()))
    gaps = sum(np.exp(-(((from_middle - e * face_height) / 0.6) ** 2)) for e in (0.0, 0.045))
    shade = shade * (1.0 - 0.1 * np.minimum(gaps, 1.0))
    colour = colour * (1.0 - teeth[..., None]) + (look.teeth * shade[..., None]) * teeth[..., None]
    alpha = (mask.astype(np.float32) / 255.0 * opening)[..., None]
    patch = rgb[y0:y1, x0:x1, :3].astype(np.float32)
    rgb[y0:y1, x0:x1, :3] = np.clip(patch * (1.0 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Background
# --------------------------------------------------------------------------------------------
def fill_background(image: np.ndarray, matte: np.ndarray, work_side: int = 160) -> np.ndarray:
    """The photo's background with the person removed: ``uint8 [H, W, 3]``.

    Where the (dilated) matte covers the person, the background is inpainted (OpenCV Telea) on a
    copy downscaled to `work_side` pixels on its long side, smoothed and upscaled, then feathered
    into the untouched background. Blurry by design: it only shows in the slivers a moving head
    uncovers.
    """
    height, width = matte.shape
    grow = max(3, int(round(0.025 * max(height, width))))
    person = (matte > 0.05).astype(np.uint8)
    person = cv2.dilate(person, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    scale = min(1.0, work_side / max(height, width))
    small_size = (max(int(round(width * scale)), 8), max(int(round(height * scale)), 8))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    small_mask = (cv2.resize(person.astype(np.float32), small_size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    if small_mask.all():  # nothing to learn the background from: a neutral grey
        filled = np.full_like(small, 128)
    else:
        filled = cv2.inpaint(small, small_mask, 5, cv2.INPAINT_TELEA)
        filled = cv2.GaussianBlur(filled, (0, 0), 1.5)
    filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
    feather = cv2.GaussianBlur(person.astype(np.float32), (0, 0), max(1.0, grow / 2.0))
    feather = np.maximum(feather, person.astype(np.float32))[..., None]
    out = image.astype(np.float32) * (1.0 - feather) + filled.astype(np.float32) * feather
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def background_plate(image: np.ndarray, matte: np.ndarray, band: float = 0.06) -> np.ndarray:
    """What shows behind the moving person: ``uint8 [H, W, 3]``.

    The photo where it shows background; `fill_background` behind the person, all along the
    matte's soft edge (which holds some hair colour), and in a band of `band` x the image size
    around the person wherever the photo differs clearly from the fill (wisps of hair, earrings
    the segmentation left out: they would stay behind, floating, when the head moves).
    """
    height, width = matte.shape
    fill = fill_background(image, matte)
    person = (matte > 0.02).astype(np.uint8)
    edge = cv2.dilate(person, np.ones((5, 5), np.uint8)).astype(np.float32)
    reach = max(3, int(round(band * max(height, width))))
    near = cv2.dilate(person, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
    differs = np.abs(image.astype(np.float32) - fill.astype(np.float32)).max(axis=2)
    stray = np.clip((differs - 15.0) / 30.0, 0.0, 1.0) * near
    weight = cv2.GaussianBlur(np.maximum(edge, cv2.dilate(stray, np.ones((3, 3), np.uint8))), (0, 0), 1.0)
    weight = weight[..., None]
    return np.clip(image * (1.0 - weight) + fill * weight + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The rig
# --------------------------------------------------------------------------------------------
def _check_inputs(image: np.ndarray, landmarks: np.ndarray, matte: np.ndarray) -> tuple[np.ndarray, ...]:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise PortraitRigError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if min(height, width) < 32:
        raise PortraitRigError(f"image is too small to animate: {width}x{height}")
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (NUM_LANDMARKS, 3) or not np.isfinite(landmarks).all():
        raise PortraitRigError(f"landmarks must be finite FaceMesh points [478, 3] in pixels, got {landmarks.shape}")
    matte = np.asarray(matte, np.float32)
    if matte.shape != (height, width):
        raise PortraitRigError(f"matte must be float [H, W] = {(height, width)}, got {matte.shape}")
    frame = FaceFrame.from_landmarks(landmarks[:, :2])
    if frame.width < 8 or frame.height < 8:
        raise PortraitRigError(f"face is degenerate: {frame.width:.1f} x {frame.height:.1f} px")
    return np.ascontiguousarray(image), landmarks, np.clip(np.nan_to_num(matte), 0.0, 1.0)


class PortraitRig:
    """One portrait photo, ready to animate with the 13 motion parameters (module docs).

    Built from `image` RGB ``uint8 [H, W, 3]``, FaceMesh `landmarks` ``float [478, 3]`` in
    pixels of that image (x, y, and z scaled like x, as
    `avatarforcing.integrations.face_params.FaceParamsExtractor.landmarks` returns them) and the
    person `matte` ``float [H, W]`` in [0, 1] (1 = person). Raises `PortraitRigError` for wrong
    inputs. Not thread-safe (one working copy of the photo); `render` is deterministic.
    """

    def __init__(
        self, image: np.ndarray, landmarks: np.ndarray, matte: np.ndarray, config: RigConfig | None = None
    ) -> None:
        image, landmarks, matte = _check_inputs(image, landmarks, matte)
        landmarks = refine_eye_corners(image, landmarks)
        self.config = config or RigConfig()
        self.size: tuple[int, int] = (image.shape[0], image.shape[1])
        self.landmarks = landmarks
        self.frame = FaceFrame.from_landmarks(landmarks[:, :2])
        self.bases = expression_bases(landmarks[:, :2], self.frame, self.config.gains)
        self.mesh = build_mesh(landmarks, self.frame, self.size, mouth_open=0.15 * self.bases[0])
        self._mapper = _InverseMapper(self.size, self.mesh)
        self._eyes = [
            _EyeSprite.build(image, landmarks, _eye_loop(EYE_RIGHT_UPPER, EYE_RIGHT_LOWER), IRIS_RIGHT),
            _EyeSprite.build(image, landmarks, _eye_loop(EYE_LEFT_UPPER, EYE_LEFT_LOWER), IRIS_LEFT),
        ]
        self._eye_shift: tuple[float, float] = (0.0, 0.0)
        self._mouth_look = _MouthLook.from_photo(image, landmarks)
        alpha = np.round(matte * 255.0).astype(np.uint8)
        alpha[alpha < 3] = 0  # the background is fully transparent, not almost
        self._source = np.ascontiguousarray(np.dstack([image, alpha]))  # eye patches are rewritten per frame
        self.matte = matte
        background = self.config.background
        if background == BACKGROUND_TRANSPARENT:
            self.plate: np.ndarray | None = None
        elif background == BACKGROUND_ORIGINAL:
            self.plate = background_plate(image, matte)
        else:
            self.plate = np.empty_like(image)
            self.plate[:] = np.array(background, np.uint8)
        y_axis = self.frame.y_axis
        self._pivot = self.frame.centre + 0.1 * self.frame.height * y_axis
        self._roll_pivot = landmarks[CHIN, :2] + 0.1 * self.frame.height * y_axis

    # -- geometry ---------------------------------------------------------------------------
    @staticmethod
    def clip_params(params: np.ndarray) -> np.ndarray:
        """``float64 [13]`` parameters clipped to the motion space's ranges (NaN -> 0)."""
        array = np.asarray(params, np.float64).reshape(-1)
        if array.shape != (NUM_PARAMS,):
            raise ValueError(f"params must be the {NUM_PARAMS} motion-space parameters, got shape {np.shape(params)}")
        return np.clip(np.nan_to_num(array), PARAM_LOWS, PARAM_HIGHS)

    def head_pose(self, params: np.ndarray) -> HeadPose:
        """The head pose of (clipped) parameters; angles follow the motion space's signs."""
        shift = np.array([params[SHIFT_X], params[SHIFT_Y]]) * self.frame.width
        return HeadPose(
            yaw=math.radians(params[YAW]),
            pitch=math.radians(params[PITCH]),
            roll=math.radians(params[ROLL]),
            shift=shift,
            pivot=self._pivot,
            roll_pivot=self._roll_pivot,
            axes=(self.frame.x_axis, self.frame.y_axis),
            depth_scale=self.config.depth_scale,
            foreshorten=self.config.foreshorten,
        )

    def gaze_shift(self, params: np.ndarray) -> np.ndarray:
        """Iris displacement ``[2]`` in photo pixels for (clipped) parameters."""
        gains = self.config.gains
        eye_width = 0.5 * (self._eyes[0].eye_width + self._eyes[1].eye_width)
        return eye_width * (
            params[GAZE_X] * gains.gaze_x * self.frame.x_axis + params[GAZE_Y] * gains.gaze_y * self.frame.y_axis
        )

    def targets(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target positions ``float64 [N, 2]`` (output pixels) and depths ``[N]`` of every mesh
        point for parameters ``[13]`` (denormalized)."""
        p = self.clip_params(params)
        pose = self.head_pose(p)
        mesh = self.mesh
        source, depth = mesh.source, mesh.depth
        out = np.empty_like(source)
        out_depth = np.empty_like(depth)
        face = slice(0, NUM_FACE_POINTS)
        motion = np.tensordot(expression_weights(p, self.config.gains.lid_follow), self.bases, axes=1)
        out[face], out_depth[face] = pose.apply(source[face] + motion, depth[face])
        rest = slice(NUM_FACE_POINTS, len(source))  # eye layers (head only) and the surroundings
        anchor = mesh.anchor[rest]
        expressed = source[rest] + mesh.anchor_weight[rest, None] * motion[np.maximum(anchor, 0)]
        moved, out_depth[rest] = pose.apply(expressed, depth[rest])
        out[rest] = expressed + mesh.follow[rest, None] * (moved - expressed)
        return out, out_depth

    def landmark_targets(self, params: np.ndarray) -> np.ndarray:
        """Where the 478 FaceMesh landmarks land in the output ``float64 [478, 2]`` (irises moved
        with the gaze); for checks and overlays."""
        p = self.clip_params(params)
        target, _ = self.targets(p)
        pose = self.head_pose(p)
        iris = list(IRIS_RIGHT + IRIS_LEFT)
        moved, _ = pose.apply(self.landmarks[iris, :2] + self.gaze_shift(p), self.mesh.depth[[33] * 5 + [263] * 5])
        return np.concatenate([target[:NUM_FACE_POINTS], moved])

    # -- drawing ----------------------------------------------------------------------------
    def _lid_source(self, params: np.ndarray) -> np.ndarray | None:
        """Rest positions for this frame: as a lid closes, its edge samples the photo from a
        little outside the opening, so that the edge's eye-coloured pixels are not carried over
        the closed eye (the lower lid's edge is often lit by the white of the eye)."""
        weights = expression_weights(params, self.config.gains.lid_follow)
        blink_left, blink_right = weights[BASIS_NAMES.index("blink_left")], weights[BASIS_NAMES.index("blink_right")]
        if blink_left <= 0.0 and blink_right <= 0.0:
            return None
        source = self.mesh.source.copy()
        y_axis = self.frame.y_axis
        for blink, upper, lower in (
            (blink_left, EYE_LEFT_UPPER, EYE_LEFT_LOWER),
            (blink_right, EYE_RIGHT_UPPER, EYE_RIGHT_LOWER),
        ):
            source[list(upper[1:-1])] -= blink * LID_EDGE_SKIP[0] * y_axis
            source[list(lower[1:-1])] += blink * LID_EDGE_SKIP[1] * y_axis
        return source

    def _update_eyes(self, params: np.ndarray) -> None:
        shift = self.gaze_shift(params)
        key = (round(float(shift[0]), 4), round(float(shift[1]), 4))
        if key == self._eye_shift:
            return
        for eye in self._eyes:
            x0, y0, x1, y1 = eye.box
            self._source[y0:y1, x0:x1, :3] = eye.compose(np.array(key))
        self._eye_shift = key

    def render(self, params: np.ndarray) -> np.ndarray:
        """One frame for parameters ``[13]`` (denormalized motion space; clipped to the ranges):
        RGB ``uint8 [H, W, 3]``, or RGBA ``uint8 [H, W, 4]`` with ``background="transparent"``
        (alpha = the moved person matte, 0 on the background). Same size as the photo."""
        p = self.clip_params(params)
        target, depth = self.targets(p)
        map_x, map_y, moving = self._mapper.maps(target, depth, self._lid_source(p))
        self._update_eyes(p)
        warped = cv2.remap(self._source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        opening = float(np.clip(p[JAW] * self.config.gains.jaw_drop * self.frame.height / 2.0, 0.0, 1.0))
        paint_mouth(
            warped, target[list(LIP_UPPER_INNER)], target[list(LIP_LOWER_INNER)], opening, self._mouth_look,
            self.frame.height,
        )  # fmt: skip
        if self.plate is None:
            return warped
        # the person over the background; over the photo's own background, where nothing moved
        # the photo itself (exact at rest, and the soft edge of a still body keeps its background)
        transparency = cv2.bitwise_not(cv2.extractChannel(warped, 3))  # 255 - alpha
        if self.config.background != BACKGROUND_ORIGINAL:
            moving.fill(1.0)
        behind = cv2.multiply(transparency, moving, scale=1.0 / 255.0, dtype=cv2.CV_32F)
        front = cv2.subtract(1.0, behind, dst=moving)
        return cv2.blendLinear(cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB), self.plate, front, behind)


# --------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------
SHEET_POSES: tuple[tuple[str, dict[int, float]], ...] = (
    ("photo", {}),
    ("yaw -25", {YAW: -25.0}),
    ("yaw +25", {YAW: 25.0}),
    ("pitch -15", {PITCH: -15.0}),
    ("pitch +15", {PITCH: 15.0}),
    ("roll +20", {ROLL: 20.0}),
    ("shift", {SHIFT_X: 0.2, SHIFT_Y: -0.15}),
    ("jaw 0.5", {JAW: 0.5}),
    ("jaw 1", {JAW: 1.0}),
    ("smile", {SMILE: 1.0}),
    ("pucker", {PUCKER: 1.0}),
    ("blink left", {BLINK_LEFT: 1.0}),
    ("blinks", {BLINK_LEFT: 1.0, BLINK_RIGHT: 1.0}),
    ("brows up", {BROW: 1.0}),
    ("frown", {BROW: -1.0}),
    ("gaze right", {GAZE_X: 1.0}),
    ("gaze up", {GAZE_Y: -1.0}),
    ("talk", {YAW: 12.0, PITCH: -6.0, ROLL: -5.0, JAW: 0.6, SMILE: 0.7, GAZE_X: -0.5}),
)
"""The contact sheet's poses: ``(label, {parameter index: value})``, others neutral."""


def sheet_params(values: dict[int, float]) -> np.ndarray:
    """``float32 [13]`` parameters: neutral but for `values` (``{index: value}``)."""
    params = np.zeros(NUM_PARAMS, np.float32)
    for index, value in values.items():
        params[index] = value
    return params


def contact_sheet(
    rig: PortraitRig,
    poses: tuple[tuple[str, dict[int, float]], ...] = SHEET_POSES,
    tile: int = 256,
    columns: int = 6,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The rig at each of `poses`, labelled, as one RGB ``uint8`` image of `columns` tiles of
    `tile` pixels across. `crop` ``(x0, y0, x1, y1)`` cuts each frame first (e.g. around the
    head); RGBA frames are shown over a grey checkerboard."""
    tiles = []
    for label, values in poses:
        frame = rig.render(sheet_params(values))
        if frame.shape[2] == 4:
            height, width = frame.shape[:2]
            checks = ((np.indices((height, width)).sum(axis=0) // 16) % 2).astype(np.float32)
            board = (150.0 + 60.0 * checks)[..., None]
            alpha = frame[..., 3:4].astype(np.float32) / 255.0
            frame = np.clip(frame[..., :3] * alpha + board * (1.0 - alpha), 0, 255).astype(np.uint8)
        if crop is not None:
            x0, y0, x1, y1 = crop
            frame = frame[y0:y1, x0:x1]
        height, width = frame.shape[:2]
        scale = tile / max(height, width)
        size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
        image = np.zeros((tile, tile, 3), np.uint8)
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        image[: size[1], : size[0]] = small
        cv2.putText(image, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(image)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


__all__ = [
    "BACKGROUND_ORIGINAL",
    "BACKGROUND_TRANSPARENT",
    "BASIS_NAMES",
    "SHEET_POSES",
    "ExpressionGains",
    "FaceFrame",
    "HeadPose",
    "PortraitRig",
    "PortraitRigError",
    "RigConfig",
    "RigMesh",
    "background_plate",
    "build_mesh",
    "contact_sheet",
    "expression_bases",
    "expression_weights",
    "fill_background",
    "paint_mouth",
    "refine_eye_corners",
    "sheet_params",
]
