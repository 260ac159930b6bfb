"""Measure the ``portrait`` renderer (docs/portrait.md): speed, preparation, neutral fidelity and
how faithfully its frames carry the driving parameters.

Usage: python docs/portrait_eval.py [--shared PATH] [--part speed|fidelity|sheet|all] [--json OUT]
                                    [--stride N]

Portraits: ``rumi.jpg`` and two frames of ``user.mp4`` (253 and 53: mouth closed, eyes open).
Fidelity: the rig is driven by (a) a sweep of each parameter alone (11 values over the range
that must move) and (b) the parameters FaceParamsExtractor tracks on ``user.mp4`` (every
`--stride`-th frame); FaceParamsExtractor (static-image mode, no filter) re-reads the rendered
frames, and the report gives per parameter the Pearson correlation (PCC) between driving and
re-read values and the slope of re-read on driving. Speed: per-frame wall and CPU time at 512x512
with ``cv2.setNumThreads(1)`` (pin the process to one core with ``taskset -c 1``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from avatarforcing.engine.embedded.portrait_rig import PortraitRig, RigConfig, contact_sheet
from avatarforcing.integrations.face_params import FaceParamsExtractor
from avatarforcing.integrations.media import iter_video_frames
from avatarforcing.integrations.portrait_analysis import analyse_portrait, frame_portrait
from avatarforcing.schemas.motion_space import MOTION_SPACE

SIZE = 512
USER_FRAMES = (253, 53)
# the range each parameter must move over (docs: yaw +-25, pitch +-15, roll +-20; shifts as in the schema)
SWEEPS = {
    "yaw": (-25.0, 25.0),
    "pitch": (-15.0, 15.0),
    "roll": (-20.0, 20.0),
    "shift_x": (-0.2, 0.2),
    "shift_y": (-0.2, 0.2),
    "jaw_open": (0.0, 1.0),
    "smile": (0.0, 1.0),
    "pucker": (0.0, 1.0),
    "blink_left": (0.0, 1.0),
    "blink_right": (0.0, 1.0),
    "brow_raise": (-1.0, 1.0),
    "gaze_x": (-1.0, 1.0),
    "gaze_y": (-1.0, 1.0),
}
GOALS = {"gaze_x": 0.8, "gaze_y": 0.8, "pucker": 0.8}  # others 0.9; shifts have no goal


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series (nan when one is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def slope(driving: np.ndarray, read: np.ndarray) -> float:
    """Least-squares slope of re-read values on driving values."""
    d = np.asarray(driving, np.float64) - np.mean(driving)
    return float(d @ (np.asarray(read, np.float64) - np.mean(read)) / max(d @ d, 1e-12))


def portraits(shared: Path) -> dict[str, np.ndarray]:
    """``{name: RGB uint8 image}``: rumi.jpg and the chosen user.mp4 frames."""
    samples = shared / "reference" / "samples"
    rumi = cv2.cvtColor(cv2.imread(str(samples / "rumi.jpg")), cv2.COLOR_BGR2RGB)
    out = {"rumi": rumi}
    for index, _, frame in iter_video_frames(samples / "user.mp4"):
        if index in USER_FRAMES:
            out[f"user{index}"] = frame
        if index > max(USER_FRAMES):
            break
    return out


def prepare(image: np.ndarray, background: str = "original") -> tuple[PortraitRig, dict]:
    """Analyse + build a rig at SIZE; returns the rig and its timings/analysis summary."""
    start = time.perf_counter()
    analysis = analyse_portrait(image)
    analysed = time.perf_counter()
    framed, landmarks, matte = frame_portrait(analysis, (SIZE, SIZE))
    rig = PortraitRig(framed, landmarks, matte, RigConfig(background=background))
    done = time.perf_counter()
    x0, y0, x1, y1 = analysis.face_box
    neutral = rig.render(np.zeros(MOTION_SPACE.dim, np.float32))
    err = (neutral[y0:y1, x0:x1, :3].astype(np.float64) - framed[y0:y1, x0:x1]) ** 2
    psnr = float("inf") if err.mean() == 0 else float(10 * np.log10(255.0**2 / err.mean()))
    info = {
        "analysis_s": round(analysed - start, 3),
        "rig_s": round(done - analysed, 3),
        "neutral_psnr_face_db": psnr,
        "photo_params": {k: round(v, 3) for k, v in MOTION_SPACE.to_dict(analysis.params).items()},
    }
    return rig, info


def read_back(frames: list[np.ndarray], tracking: bool) -> tuple[np.ndarray, np.ndarray]:
    """FaceParamsExtractor (no filter) on rendered frames: ``(params [N, 13], found [N])``."""
    with FaceParamsExtractor(filter=False, static_images=not tracking) as extractor:
        return extractor.extract_many(frames)


def sweep_fidelity(rig: PortraitRig) -> dict[str, dict[str, float]]:
    """Each parameter swept alone over its range; PCC and slope of the re-read parameter."""
    out = {}
    for name, (low, high) in SWEEPS.items():
        k = MOTION_SPACE.index(name)
        values = np.linspace(low, high, 11)
        frames = []
        for value in values:
            params = np.zeros(MOTION_SPACE.dim, np.float32)
            params[k] = value
            frames.append(rig.render(params))
        read, found = read_back(frames, tracking=False)
        out[name] = {
            "pcc": pcc(values[found], read[found, k]),
            "slope": slope(values[found], read[found, k]),
            "found": int(found.sum()),
        }
    return out


def tracked_fidelity(rig: PortraitRig, driving: np.ndarray) -> dict[str, dict[str, float]]:
    """The rig driven by parameters tracked on user.mp4; PCC and slope per parameter, and for the
    gaze also over the frames where both eyes are open (driving blinks below 0.3: a closed eye
    has no gaze, and FaceMesh's reading of it is noise on both sides)."""
    frames = [rig.render(row) for row in driving]
    read, found = read_back(frames, tracking=True)
    blinks = [MOTION_SPACE.index("blink_left"), MOTION_SPACE.index("blink_right")]
    open_eyes = found & (driving[:, blinks].max(axis=1) < 0.3)
    out = {}
    for k, name in enumerate(MOTION_SPACE.names):
        out[name] = {
            "pcc": pcc(driving[found, k], read[found, k]),
            "slope": slope(driving[found, k], read[found, k]),
            "found": int(found.sum()),
        }
        if name.startswith("gaze"):
            out[name]["pcc_open_eyes"] = pcc(driving[open_eyes, k], read[open_eyes, k])
            out[name]["open_frames"] = int(open_eyes.sum())
    return out


def tracked_parameters(shared: Path, stride: int) -> np.ndarray:
    """Filtered FaceParamsExtractor parameters of user.mp4 (the default engine's kind of input),
    every `stride`-th frame."""
    frames = [f for i, _, f in iter_video_frames(shared / "reference" / "samples" / "user.mp4")]
    with FaceParamsExtractor() as extractor:
        params, found = extractor.extract_many(frames)
    return params[found][::stride]


def speed(rig: PortraitRig, driving: np.ndarray, frames: int = 400) -> dict[str, float]:
    """Per-frame wall and CPU (thread) time in ms at one OpenCV thread."""
    cv2.setNumThreads(1)
    wall, cpu = [], []
    for i in range(frames + 20):
        t, c = time.perf_counter(), time.thread_time()
        rig.render(driving[i % len(driving)])
        cpu.append((time.thread_time() - c) * 1000.0)
        wall.append((time.perf_counter() - t) * 1000.0)
    w, c = np.array(wall[20:]), np.array(cpu[20:])
    return {
        "wall_p50_ms": round(float(np.percentile(w, 50)), 2),
        "wall_p95_ms": round(float(np.percentile(w, 95)), 2),
        "cpu_p50_ms": round(float(np.percentile(c, 50)), 2),
        "cpu_p95_ms": round(float(np.percentile(c, 95)), 2),
    }


def table(results: dict) -> str:
    """Markdown table of PCC (slope) per parameter and portrait, with the tracked series' spread."""
    names = list(results["fidelity"])
    header = "| parameter | goal | " + " | ".join(f"{n} sweep" for n in names) + " | "
    header += " | ".join(f"{n} tracked" for n in names) + " | tracked std |"
    lines = [header, "|" + "---|" * (3 + 2 * len(names))]
    for k, param in enumerate(MOTION_SPACE.names):
        goal = "" if param.startswith("shift") else f"{GOALS.get(param, 0.9):.1f}"
        cells = []
        for kind in ("sweep", "tracked"):
            for n in names:
                r = results["fidelity"][n][kind][param]
                cell = "n/a" if np.isnan(r["pcc"]) else f"{r['pcc']:.2f} ({r['slope']:.2f})"
                if "pcc_open_eyes" in r:
                    cell += f"; open eyes {r['pcc_open_eyes']:.2f} ({r['open_frames']})"
                cells.append(cell)
        cells.append(f"{results['driving_std'][k]:.3g}")
        lines.append(f"| {param} | {goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cold_prepare(shared: Path) -> dict[str, float]:
    """Preparation in a fresh process (mediapipe graphs built from scratch): import time and
    analysis + rig time for rumi.jpg at SIZE."""
    import subprocess
    import sys

    code = (
        "import time; t0 = time.perf_counter()\n"
        "from avatarforcing.integrations.portrait_analysis import analyse_portrait, frame_portrait\n"
        "from avatarforcing.engine.embedded.portrait_rig import PortraitRig\n"
        "t1 = time.perf_counter()\n"
        f"a = analyse_portrait({str(shared / 'reference' / 'samples' / 'rumi.jpg')!r})\n"
        f"r = PortraitRig(*frame_portrait(a, ({SIZE}, {SIZE})))\n"
        "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imports, prepare_s = map(float, done.stdout.split()[-2:])
    return {"import_s": round(imports, 3), "prepare_s": round(prepare_s, 3)}


def write_sheet(rigs: dict[str, PortraitRig], path: Path) -> int:
    """The contact sheet (rumi at every pose, then a row of the first user.mp4 frame) as a
    palette PNG small enough for the docs; returns its size in bytes."""
    from PIL import Image

    from avatarforcing.engine.embedded.portrait_rig import SHEET_POSES

    parts = [contact_sheet(rigs["rumi"], tile=200)]
    user = next((rig for name, rig in rigs.items() if name.startswith("user")), None)
    if user is not None:
        chosen = ("photo", "yaw +25", "jaw 1", "smile", "blinks", "talk")
        parts.append(contact_sheet(user, poses=tuple(p for p in SHEET_POSES if p[0] in chosen), tile=200))
    sheet = Image.fromarray(np.vstack(parts))
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        path, optimize=True
    )
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--part", choices=("speed", "fidelity", "sheet", "all"), default="all")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--stride", type=int, default=2, help="use every N-th tracked frame (2)")
    args = parser.parse_args()
    images = portraits(args.shared)
    results: dict = {"portraits": {}, "fidelity": {}}
    if args.part in ("speed", "all"):
        results["cold"] = cold_prepare(args.shared)
        print("cold", json.dumps(results["cold"]), flush=True)
    driving = tracked_parameters(args.shared, args.stride)
    results["driving_std"] = driving.std(axis=0).tolist()
    rigs = {}
    for name, image in images.items():
        rig, info = prepare(image)
        rigs[name] = rig
        results["portraits"][name] = info
        if args.part in ("speed", "all"):
            info["speed"] = speed(rig, driving)
            transparent, _ = prepare(image, "transparent")
            info["speed_transparent"] = speed(transparent, driving)
        if args.part in ("fidelity", "all"):
            results["fidelity"][name] = {"sweep": sweep_fidelity(rig), "tracked": tracked_fidelity(rig, driving)}
        print(name, json.dumps(info), flush=True)
    if args.part in ("sheet", "all"):
        results["sheet_bytes"] = write_sheet(rigs, Path(__file__).with_name("portrait_sheet.png"))
        print("sheet bytes", results["sheet_bytes"])
    if results["fidelity"]:
        print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
