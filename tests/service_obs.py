"""A private OBS Studio (29, with obs-websocket 5) for tests, under a private Xvfb.

`ObsService(workdir, display)` writes an unattended configuration into ``workdir/config``
(its own ``XDG_CONFIG_HOME``: no first-run wizard, websocket server enabled with a password,
a 640x360 canvas, one empty scene), starts ``obs`` on the given X display and waits until the
websocket port accepts connections. `kill()` is a crash (SIGKILL + wait); `start()` again is a
restart with a freshly written configuration (OBS rewrites its files, so every start begins
from the same state). See /work/shared/notes/real-components-audio-obs.md.

Skips the calling test when ``obs`` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PASSWORD = "af-test-obs-password"
PROFILE = COLLECTION = "CI"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ObsService:
    """OBS on X display `display` (e.g. ``":3"``), websocket on `port` with `password`."""

    def __init__(self, workdir: Path, display: str, port: int | None = None, password: str = PASSWORD) -> None:
        self.workdir = Path(workdir)
        self.display = display
        self.port = port or free_port()
        self.password = password
        self.config_home = self.workdir / "config"
        self.log = self.workdir / "obs.log"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> None:
        root = self.config_home / "obs-studio"
        if root.exists():
            shutil.rmtree(root)
        (root / "basic" / "profiles" / PROFILE).mkdir(parents=True)
        (root / "basic" / "scenes").mkdir(parents=True)
        (root / "global.ini").write_text(
            "[General]\nFirstRun=true\nLastVersion=486539266\nEnableAutoUpdates=false\n"
            "[BasicWindow]\nSysTrayEnabled=false\nSysTrayWhenStarted=false\n"
            f"[Basic]\nProfile={PROFILE}\nProfileDir={PROFILE}\nSceneCollection={COLLECTION}\n"
            f"SceneCollectionFile={COLLECTION}\nConfigOnNewProfile=false\n"
            f"[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\nServerPort={self.port}\nAlertsEnabled=false\n"
            f"AuthRequired=true\nServerPassword={self.password}\nDebugEnabled=false\n"
        )
        (root / "basic" / "profiles" / PROFILE / "basic.ini").write_text(
            f"[General]\nName={PROFILE}\n"
            "[Video]\nBaseCX=640\nBaseCY=360\nOutputCX=640\nOutputCY=360\nFPSType=0\nFPSCommon=30\n"
            "ScaleType=bicubic\nColorFormat=NV12\nColorSpace=709\nColorRange=Partial\n"
            "[Audio]\nSampleRate=48000\nChannelSetup=Stereo\n"
            f"[Output]\nMode=Simple\n[SimpleOutput]\nFilePath={self.workdir}\nRecFormat=mkv\n"
        )
        scene = {
            "id": "scene",
            "versioned_id": "scene",
            "name": "Scene",
            "enabled": True,
            "settings": {"id_counter": 0, "custom_size": False, "items": []},
            "mixers": 0,
            "volume": 1.0,
            "muted": False,
            "flags": 0,
        }
        (root / "basic" / "scenes" / f"{COLLECTION}.json").write_text(
            json.dumps(
                {
                    "name": COLLECTION,
                    "current_scene": "Scene",
                    "current_program_scene": "Scene",
                    "scene_order": [{"name": "Scene"}],
                    "sources": [scene],
                    "groups": [],
                    "transitions": [],
                    "current_transition": "Fade",
                    "transition_duration": 300,
                    "quick_transitions": [],
                    "saved_projectors": [],
                    "preview_locked": False,
                    "scaling_enabled": False,
                    "modules": {},
                }
            )
        )

    def start(self, timeout: float = 60.0) -> ObsService:
        if shutil.which("obs") is None:
            pytest.skip("OBS Studio is not installed (apt-get install obs-studio obs-plugins)")
        self.write_config()
        # cv2 points QT_QPA_PLATFORM_PLUGIN_PATH at its own Qt plugins when imported: not for OBS
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "PULSE_"))}
        env = {
            **inherited,
            "DISPLAY": self.display,
            "XDG_CONFIG_HOME": str(self.config_home),
            "LIBGL_ALWAYS_SOFTWARE": "1",
            "QT_QPA_PLATFORM": "xcb",
            "HOME": str(self.workdir),
        }
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    "obs",
                    "--multi",
                    "--disable-missing-files-check",
                    "--collection",
                    COLLECTION,
                    "--profile",
                    PROFILE,
                    "--scene",
                    "Scene",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while not self.listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.kill()
                raise RuntimeError(f"OBS did not open its websocket on port {self.port}; log tail:\n{tail}")
            time.sleep(0.1)
        return self

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL OBS and wait for it: a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
        self.process = None

    stop = kill  # OBS 29 does not shut down gracefully on SIGTERM either

    def __enter__(self) -> ObsService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
