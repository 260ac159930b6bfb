"""A procedural, stylised 2D face drawn from the default motion space (pure numpy + OpenCV).

`draw_face(params, size, look)` returns an RGBA ``uint8`` image ``(H, W, 4)``: a head and
shoulders bust on a transparent background (alpha 0 outside the figure, anti-aliased edges).

Geometry, in *face units* (1 = half the head's width, x to the image right, y down, origin at
the head's centre): the head is an ellipse of half-axes ``(1, head_aspect)`` whose lower half
lengthens when the jaw opens. Facial features are points on the front of an ellipsoid; yaw and
pitch rotate them in 3D (orthographic projection, so features slide and foreshorten while the
silhouette stays), roll rotates the head in the image plane about the neck, shift_x/shift_y
translate it (in face widths; 1 face width = 2 face units). Yaw + moves the features to the image
right (the avatar turns to its left), pitch + moves them down (chin down), roll + turns the top
of the head to the image right. ``blink_left`` closes the avatar's left eye, on the image right;
gaze + looks to the image right / down.

Everything is filled polygons and polylines with ``cv2.LINE_AA`` at 1/16-pixel precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatarforcing.schemas.motion_space import MOTION_SPACE

Color = tuple[int, int, int]
HAIR_STYLES = ("short", "long", "none")
_SHIFT = 4  # fixed-point bits for cv2 drawing (1/16 pixel)
_ARC = np.linspace(0.0, math.pi, 25)  # half-circle parameter for lids and lips


@dataclass(frozen=True)
class FaceLook:
    """Colours (RGB tuples) and shape choices of the drawn face.

    `head_aspect`: head height / width (half-axes ``1 : head_aspect``, in [0.9, 1.5]);
    `eye_scale`: eye size factor in [0.6, 1.5]; `hair_style`: ``"short"``, ``"long"`` or
    ``"none"``; `outline_width`: outline thickness in face units; `blush`: cheek colour or
    ``None``; `backdrop`: the look's own background colour (for renderers that composite onto
    an opaque background).
    """

    name: str
    skin: Color
    skin_shade: Color
    outline: Color
    hair: Color
    eye_white: Color
    iris: Color
    pupil: Color
    mouth: Color
    lips: Color
    teeth: Color
    tongue: Color
    brow: Color
    shirt: Color
    backdrop: Color
    blush: Color | None = None
    head_aspect: float = 1.25
    eye_scale: float = 1.0
    hair_style: str = "short"
    outline_width: float = 0.035

    def __post_init__(self) -> None:
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"look {self.name!r}: hair_style must be one of {HAIR_STYLES}, got {self.hair_style!r}")
        if not 0.9 <= self.head_aspect <= 1.5:
            raise ValueError(f"look {self.name!r}: head_aspect must be in [0.9, 1.5], got {self.head_aspect}")
        if not 0.6 <= self.eye_scale <= 1.5:
            raise ValueError(f"look {self.name!r}: eye_scale must be in [0.6, 1.5], got {self.eye_scale}")


LOOKS: dict[str, FaceLook] = {
    look.name: look
    for look in (
        FaceLook(
            name="classic",
            skin=(247, 214, 186),
            skin_shade=(226, 184, 156),
            outline=(92, 58, 44),
            hair=(110, 66, 40),
            eye_white=(255, 255, 255),
            iris=(64, 120, 190),
            pupil=(20, 20, 30),
            mouth=(110, 28, 40),
            lips=(196, 92, 96),
            teeth=(250, 250, 245),
            tongue=(226, 110, 120),
            brow=(88, 52, 32),
            shirt=(70, 130, 180),
            backdrop=(222, 236, 245),
            blush=(244, 184, 172),
        ),
        FaceLook(
            name="night",
            skin=(58, 70, 110),
            skin_shade=(44, 52, 88),
            outline=(120, 240, 255),
            hair=(190, 60, 200),
            eye_white=(230, 250, 255),
            iris=(255, 190, 40),
            pupil=(10, 10, 30),
            mouth=(14, 10, 30),
            lips=(255, 90, 170),
            teeth=(230, 250, 255),
            tongue=(255, 120, 180),
            brow=(120, 240, 255),
            shirt=(24, 28, 52),
            backdrop=(12, 14, 32),
            blush=None,
            head_aspect=1.15,
            eye_scale=1.25,
            hair_style="long",
            outline_width=0.03,
        ),
        FaceLook(
            name="mono",
            skin=(236, 236, 236),
            skin_shade=(200, 200, 200),
            outline=(24, 24, 24),
            hair=(40, 40, 40),
            eye_white=(255, 255, 255),
            iris=(90, 90, 90),
            pupil=(0, 0, 0),
            mouth=(30, 30, 30),
            lips=(60, 60, 60),
            teeth=(255, 255, 255),
            tongue=(150, 150, 150),
            brow=(24, 24, 24),
            shirt=(110, 110, 110),
            backdrop=(255, 255, 255),
            blush=None,
            head_aspect=1.35,
            eye_scale=0.85,
            hair_style="none",
            outline_width=0.045,
        ),
    )
}
"""The named looks: ``classic`` (warm, short hair), ``night`` (dark with neon outlines, long
hair, big eyes), ``mono`` (black on white, bald, thick outlines)."""


def get_look(name: str) -> FaceLook:
    """The look called `name`; `KeyError` listing the known looks."""
    try:
        return LOOKS[name]
    except KeyError:
        raise KeyError(f"unknown face look {name!r}; known: {', '.join(LOOKS)}") from None


class _Projector:
    """Maps face-unit points to pixel coordinates for one parameter vector."""

    def __init__(self, params: np.ndarray, size: tuple[int, int], aspect: float) -> None:
        height, width = size
        p = {name: float(v) for name, v in zip(MOTION_SPACE.names, params)}
        self.p = p
        self.unit = 0.235 * min(height, width)  # pixels per face unit
        self.aspect = aspect
        self.body_x = width / 2.0 + p["shift_x"] * self.unit  # the body follows half the shift
        self.head_x = width / 2.0 + 2.0 * p["shift_x"] * self.unit
        self.head_y = 0.44 * height + 2.0 * p["shift_y"] * self.unit
        yaw, pitch, roll = (math.radians(p[k]) for k in ("yaw", "pitch", "roll"))
        self.cy, self.sy = math.cos(yaw), math.sin(yaw)
        self.cp, self.sp = math.cos(pitch), math.sin(pitch)
        self.cr, self.sr = math.cos(roll), math.sin(roll)
        self.pivot = 1.0 * aspect  # roll about the neck (head centre + this, in face units)

    def _roll(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        y = y - self.pivot
        xr = x * self.cr - y * self.sr
        yr = x * self.sr + y * self.cr + self.pivot
        return np.stack([self.head_x + self.unit * xr, self.head_y + self.unit * yr], axis=-1)

    def flat(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Silhouette points: rolled and shifted, no 3D rotation -> pixels ``[N, 2]``."""
        return self._roll(np.asarray(x, float), np.asarray(y, float))

    def surface(self, x: np.ndarray, y: np.ndarray, bump: float = 0.0) -> np.ndarray:
        """Points on the front of the head (plus `bump` of depth), rotated in 3D -> pixels."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        z = 0.95 * np.sqrt(np.clip(1.0 - x * x - (y / self.aspect) ** 2, 0.05, None)) + bump
        x1 = x * self.cy + z * self.sy
        z1 = -x * self.sy + z * self.cy
        y2 = y * self.cp + z1 * self.sp
        return self._roll(x1, y2)

    def px(self, face_units: float) -> int:
        """A thickness in face units -> whole pixels (at least 1)."""
        return max(1, int(round(face_units * self.unit)))


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _opaque(img: np.ndarray, color):
    """RGB colours become opaque RGBA on 4-channel images."""
    if img.ndim == 3 and img.shape[2] == 4 and not np.isscalar(color) and len(color) == 3:
        return (*color, 255)
    return color


def _fill(img: np.ndarray, points: np.ndarray, color) -> None:
    cv2.fillPoly(img, [_fixed(points)], _opaque(img, color), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, color, thickness: int, closed: bool = False) -> None:
    cv2.polylines(img, [_fixed(points)], closed, _opaque(img, color), thickness, cv2.LINE_AA, _SHIFT)


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return cx + ax * np.cos(t), cy + ay * np.sin(t)


class _Canvas:
    """One RGBA image drawn in a single pass: it starts as the outline colour with alpha 0, and
    every colour is drawn with alpha 255, so anti-aliased silhouette edges get partial alpha
    over the right colour (no dark fringes when composited)."""

    def __init__(self, size: tuple[int, int], look: FaceLook, outline_px: int) -> None:
        packed = np.array([*look.outline, 0], np.uint8).view(np.uint32)[0]
        self.image = np.full(size, packed, np.uint32).view(np.uint8).reshape(size[0], size[1], 4)
        self.look = look
        self.outline_px = outline_px

    def shape(self, points: np.ndarray, color) -> None:
        """A silhouette part: filled with `color`, outlined."""
        _fill(self.image, points, color)
        _line(self.image, points, self.look.outline, self.outline_px, closed=True)

    def clipped(self, clip: np.ndarray, draw) -> None:
        """Run ``draw(layer, offset)`` on a copy of the clip polygon's bounding box and keep
        it only inside the (anti-aliased) polygon."""
        h, w = self.image.shape[:2]
        x0, y0 = np.floor(clip.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(clip.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            return
        offset = np.array([x0, y0], float)
        roi = self.image[y0:y1, x0:x1]
        layer = roi.copy()
        draw(layer, offset)
        mask = np.zeros(roi.shape[:2], np.uint8)
        _fill(mask, clip - offset, 255)
        m = mask[..., None].astype(np.uint16)
        roi[:] = ((layer * m + roi * (255 - m) + 127) // 255).astype(np.uint8)


def _check_params(params: np.ndarray) -> np.ndarray:
    array = np.asarray(params, dtype=np.float32)
    if array.shape != (MOTION_SPACE.dim,):
        raise ValueError(
            f"draw_face takes one denormalized motion vector of shape ({MOTION_SPACE.dim},), got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("draw_face: motion parameters contain NaN or infinity")
    return MOTION_SPACE.clip(array)


def draw_face(params: np.ndarray, size: tuple[int, int] = (512, 512), look: FaceLook | str = "classic") -> np.ndarray:
    """Draw the face for one denormalized motion vector ``[P]`` (clipped to the ranges).

    `size`: ``(height, width)`` in pixels (each at least 16); `look`: a `FaceLook` or the name
    of one in `LOOKS`. Returns ``uint8 (height, width, 4)`` RGBA, alpha 0 outside the figure.
    """
    if isinstance(look, str):
        look = get_look(look)
    height, width = (int(v) for v in size)
    if height < 16 or width < 16:
        raise ValueError(f"draw_face size must be at least 16x16 pixels, got {size}")
    params = _check_params(params)
    pj = _Projector(params, (height, width), look.head_aspect)
    p = pj.p
    canvas = _Canvas((height, width), look, pj.px(look.outline_width))
    _draw_back_hair(canvas, pj)
    _draw_body(canvas, pj)
    _draw_head(canvas, pj)
    _draw_front_hair(canvas, pj)
    for side in (-1, 1):  # -1: image-left eye = the avatar's right eye
        blink = p["blink_left"] if side > 0 else p["blink_right"]
        _draw_eye(canvas, pj, side, blink)
        _draw_brow(canvas, pj, side)
    _draw_nose(canvas, pj)
    _draw_mouth(canvas, pj)
    return canvas.image


def composite(rgba: np.ndarray, background: Color) -> np.ndarray:
    """Blend an RGBA ``uint8 (H, W, 4)`` image over a solid RGB colour -> ``uint8 (H, W, 3)``."""
    a = rgba[..., 3:4].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    return ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------
def _head_outline(pj: _Projector) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2.0 * math.pi, 72, endpoint=False)
    lower = pj.aspect * (1.0 + 0.09 * pj.p["jaw_open"])  # the chin drops as the jaw opens
    ay = np.where(np.sin(t) > 0, lower, pj.aspect)
    return np.cos(t), ay * np.sin(t)


def _draw_back_hair(canvas: _Canvas, pj: _Projector) -> None:
    if canvas.look.hair_style != "long":
        return
    a = pj.aspect
    t = np.linspace(math.pi, 2.0 * math.pi, 30)
    top_x, top_y = 1.12 * np.cos(t), 1.1 * a * np.sin(t) - 0.05
    x = np.concatenate([top_x, [1.25, 1.05, -1.05, -1.25]])
    y = np.concatenate([top_y, [a * 1.25, a * 1.45, a * 1.45, a * 1.25]])
    canvas.shape(pj.flat(x, y), canvas.look.hair)


def _draw_body(canvas: _Canvas, pj: _Projector) -> None:
    a, u = pj.aspect, pj.unit
    bottom = canvas.image.shape[0] + 4.0
    body_top = pj.head_y - 2.0 * pj.p["shift_y"] * u + (a + 0.3) * u
    t = np.linspace(math.pi, 2.0 * math.pi, 40)
    x = pj.body_x + u * 2.2 * np.cos(t)
    y = body_top + u * 0.7 * (1.0 + np.sin(t))
    shoulders = np.concatenate([np.stack([x, y], -1), [[x[-1], bottom], [x[0], bottom]]])
    canvas.shape(shoulders, canvas.look.shirt)
    neck_top = pj.flat(np.array([0.42, -0.42]), np.array([a * 0.7, a * 0.7]))
    neck_bottom = np.array([[pj.body_x - 0.48 * u, body_top + 0.3 * u], [pj.body_x + 0.48 * u, body_top + 0.3 * u]])
    canvas.shape(np.concatenate([neck_top, neck_bottom]), canvas.look.skin_shade)


def _draw_head(canvas: _Canvas, pj: _Projector) -> None:
    look = canvas.look
    canvas.shape(pj.flat(*_head_outline(pj)), look.skin)
    if look.blush is not None:
        lift = 0.07 * pj.p["smile"]
        for side in (-1, 1):
            _fill(canvas.image, pj.surface(*_ellipse(side * 0.58, 0.36 - lift, 0.17, 0.1, 24)), look.blush)


def _draw_front_hair(canvas: _Canvas, pj: _Projector) -> None:
    if canvas.look.hair_style == "none":
        return
    a = pj.aspect
    t = np.linspace(math.pi - 0.12, 2.0 * math.pi + 0.12, 40)
    outline = pj.flat(1.04 * np.cos(t), 1.04 * a * np.sin(t))
    hx = np.linspace(0.98, -0.98, 25)
    hy = a * (-0.5 + 0.42 * hx**2) - 0.08 * np.sin(2.5 * hx)  # a gently swept fringe
    hairline = pj.surface(hx, hy)
    canvas.shape(np.concatenate([outline, hairline]), canvas.look.hair)


def _draw_eye(canvas: _Canvas, pj: _Projector, side: int, blink: float) -> None:
    look = canvas.look
    scale = look.eye_scale
    ex, ey = side * 0.36, -0.04
    w, h = 0.2 * scale, 0.15 * scale
    x = ex - w * np.cos(_ARC)
    openness = 1.0 - blink
    lower = ey + h * (0.55 - 0.35 * pj.p["smile"]) * np.sin(_ARC)  # smiling raises the lower lid
    upper = np.minimum(ey + h * (0.3 - 1.3 * openness) * np.sin(_ARC), lower)
    upper_px = pj.surface(x, upper)
    opening = np.concatenate([upper_px, pj.surface(x[::-1], lower[::-1])])
    r = 0.62 * h
    ix = ex + pj.p["gaze_x"] * 0.5 * w
    iy = ey + 0.1 * h + pj.p["gaze_y"] * 0.35 * h
    iris = pj.surface(*_ellipse(ix, iy, r, r, 32))
    pupil = pj.surface(*_ellipse(ix, iy, 0.45 * r, 0.45 * r, 24))
    glint = pj.surface(*_ellipse(ix + 0.35 * r, iy - 0.35 * r, 0.18 * r, 0.18 * r, 12))

    def draw(layer: np.ndarray, offset: np.ndarray) -> None:
        layer[:] = (*look.eye_white, 255)
        _fill(layer, iris - offset, look.iris)
        _fill(layer, pupil - offset, look.pupil)
        _fill(layer, glint - offset, look.eye_white)

    if openness > 0.02:
        canvas.clipped(opening, draw)
    _line(canvas.image, upper_px, look.outline, pj.px(0.045 * scale))


def _draw_brow(canvas: _Canvas, pj: _Projector, side: int) -> None:
    raise_ = pj.p["brow_raise"]
    base = -0.36 - 0.13 * raise_
    frown = max(0.0, -raise_)
    t = np.linspace(-1.0, 1.0, 12)  # -1: inner end, +1: outer end
    x = side * (0.36 + 0.19 * t)
    arch = (0.05 + 0.05 * max(0.0, raise_)) * (1.0 - t**2)
    y = base - arch + 0.09 * frown * (1.0 - t) / 2.0 - 0.03 * frown * (1.0 + t) / 2.0
    _line(canvas.image, pj.surface(x, y, bump=0.04), canvas.look.brow, pj.px(0.065))


def _draw_nose(canvas: _Canvas, pj: _Projector) -> None:
    x = np.linspace(-0.08, 0.08, 9)
    y = 0.3 + 0.05 * (1.0 - (x / 0.08) ** 2)
    _line(canvas.image, pj.surface(x, y, bump=0.22), canvas.look.outline, pj.px(0.03))


def _draw_mouth(canvas: _Canvas, pj: _Projector) -> None:
    look, p = canvas.look, pj.p
    jaw, smile, pucker = p["jaw_open"], p["smile"], p["pucker"]
    my = 0.52 * pj.aspect + 0.05 * jaw
    half_w = 0.3 * (1.0 + 0.35 * smile) * (1.0 - 0.5 * pucker)
    lift = 0.11 * smile * (1.0 - pucker)
    up_h = 0.015 + 0.06 * jaw + 0.07 * pucker
    low_h = 0.015 + 0.36 * jaw + 0.07 * pucker
    c, s = np.cos(_ARC), np.sin(_ARC)
    x = -half_w * c
    corner = -lift * c**2
    upper = my + corner - up_h * s
    lower = my + corner + low_h * s
    upper_px = pj.surface(x, upper)
    lower_px = pj.surface(x[::-1], lower[::-1])
    opening = np.concatenate([upper_px, lower_px])
    teeth = pj.surface(*_rect(-half_w, my - up_h - 0.05, half_w, my - up_h + 0.07 * min(1.0, jaw * 3)))
    tongue = pj.surface(*_ellipse(0.0, my + low_h * 0.95, 0.6 * half_w, 0.45 * low_h + 0.02, 24))

    def draw(layer: np.ndarray, offset: np.ndarray) -> None:
        layer[:] = (*look.mouth, 255)
        if jaw > 0.08:
            _fill(layer, teeth - offset, look.teeth)
            _fill(layer, tongue - offset, look.tongue)

    canvas.clipped(opening, draw)
    _line(canvas.image, opening, look.lips, pj.px(0.03 + 0.04 * pucker), closed=True)


def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1])


__all__ = ["HAIR_STYLES", "LOOKS", "FaceLook", "composite", "draw_face", "get_look"]
