"""The official weights on disk: where they live, what they should be, and fetching them.

- **Where** (`active_weights_dir`): ``[model] checkpoint_dir`` when set, else
  ``$AVATARFORCING_WEIGHTS``, else a local copy recorded with ``avatarforcing weights path DIR``
  (a small JSON file, `location_file`, in ``<user cache>/avatarforcing/``), else the per-user
  cache ``<user cache>/avatarforcing/weights`` (`avatarforcing.plugin.app.paths`).
- **What** (`Manifest`): one `WeightFile` per file — its path inside the weights directory,
  download URL, size, sha256, licence and origin. `DEFAULT_MANIFEST` lists the official
  checkpoints and the two files of ``facebook/wav2vec2-base-960h`` the engine reads. Sizes and
  hashes that are not known are ``None``: such files are checked only as far as the manifest
  allows, with a warning. A JSON file (``{"files": [{"path": ..., "url": ..., "size": ...,
  "sha256": ..., "license": ..., "origin": ...}]}``) replaces the built-in manifest.
- **Fetching** (`fetch_weights`): every file is downloaded with ``urllib`` (``http(s)://`` and
  ``file://``) into ``NAME.part`` next to its destination, resumed from there after an
  interruption (HTTP ``Range``; servers that ignore it get a fresh download), checked against
  the manifest, then renamed into place — a file at its final name is always complete.
  ``base`` (``--from``) replaces every URL with ``BASE/PATH``; a local directory works as a
  base too.

The official Avatar Forcing checkpoints are licensed CC BY-NC 4.0 (non-commercial);
`LICENSE_NOTICE` is what ``weights fetch`` shows before anything is downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.paths import WEIGHTS_ENV, default_weights_dir, user_cache_dir

LOCATION_FILE_NAME = "weights-location.json"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
USER_AGENT = "avatarforcing-weights/1"

OFFICIAL_LICENSE = "CC BY-NC 4.0"
OFFICIAL_REPOSITORY = "https://github.com/TaekyungKi/AvatarForcing"
OFFICIAL_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1rN52J2QXD8A-r2CZ8nDqFdwvZuPRmMsc"
WAV2VEC2_REPOSITORY = "https://huggingface.co/facebook/wav2vec2-base-960h"

LICENSE_NOTICE = f"""\
The official Avatar Forcing checkpoints (flow_transformer.pth, motion_autoencoder.pth) are
released by their authors ({OFFICIAL_REPOSITORY}) under the Creative Commons
Attribution-NonCommercial 4.0 International licence ({OFFICIAL_LICENSE},
https://creativecommons.org/licenses/by-nc/4.0/): attribution is required and they may NOT be
used for commercial purposes - not in a paid product, not on a monetised stream. Anything that
runs them is non-commercial. wav2vec2-base-960h ({WAV2VEC2_REPOSITORY}) is Apache-2.0."""

FileState = Literal["ok", "unverified", "missing", "size-mismatch", "hash-mismatch"]


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFile:
    """One file of the weights directory.

    `path`: relative POSIX path inside the weights directory (e.g.
    ``"wav2vec2-base-960h/config.json"``); `url`: direct download location, ``None`` when the
    publisher offers none (the file must then come from ``--from`` or be copied by hand);
    `size` in bytes and `sha256` (lower-case hex), ``None`` when unknown; `license`;
    `origin`: where a person finds it.
    """

    path: str
    url: str | None
    size: int | None
    sha256: str | None
    license: str
    origin: str

    def __post_init__(self) -> None:
        parts = Path(self.path).parts
        if not self.path or Path(self.path).is_absolute() or ".." in parts or "\\" in self.path:
            raise ValueError(f"manifest path {self.path!r} must be relative, without '..'")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"manifest entry {self.path!r}: size must be a non-negative integer or null")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)
        ):
            raise ValueError(f"manifest entry {self.path!r}: sha256 must be 64 lower-case hex digits or null")

    @property
    def restricted(self) -> bool:
        """True for files under a non-commercial licence (their notice must be accepted)."""
        return "NC" in self.license.upper().replace("-", " ").split()


@dataclass(frozen=True)
class Manifest:
    """The files of a weights directory; `source` is ``"built-in"`` or the JSON file read."""

    files: tuple[WeightFile, ...]
    source: str = "built-in"

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Manifest:
        if not isinstance(data, Mapping) or not isinstance(data.get("files"), list):
            raise ValueError('expected {"files": [ ... ]}')
        files = []
        for index, raw in enumerate(data["files"]):
            if not isinstance(raw, Mapping) or "path" not in raw:
                raise ValueError(f"files[{index}]: expected an object with at least a path")
            unknown = set(raw) - {"path", "url", "size", "sha256", "license", "origin"}
            if unknown:
                raise ValueError(f"files[{index}]: unknown keys {sorted(unknown)}")
            sha = raw.get("sha256")
            files.append(
                WeightFile(
                    path=str(raw["path"]),
                    url=raw.get("url"),
                    size=raw.get("size"),
                    sha256=sha.lower() if isinstance(sha, str) else sha,
                    license=str(raw.get("license", "")),
                    origin=str(raw.get("origin", "")),
                )
            )
        if not files:
            raise ValueError("the manifest lists no files")
        return cls(tuple(files), source)

    def to_dict(self) -> dict[str, Any]:
        return {"files": [asdict(f) for f in self.files]}


def _hf_file(name: str) -> WeightFile:
    return WeightFile(
        path=f"wav2vec2-base-960h/{name}",
        url=f"{WAV2VEC2_REPOSITORY}/resolve/main/{name}",
        size=None,
        sha256=None,
        license="Apache-2.0",
        origin=WAV2VEC2_REPOSITORY,
    )


def _official_file(name: str) -> WeightFile:
    # The authors publish the two checkpoints in a Google Drive folder (official README); Drive
    # has no stable direct-download URL for a folder's files, so there is none here: pass
    # --from DIR after downloading them, or a manifest file with URLs you trust.
    return WeightFile(
        path=name,
        url=None,
        size=None,
        sha256=None,
        license=OFFICIAL_LICENSE,
        origin=f"{OFFICIAL_DRIVE_FOLDER} (linked from {OFFICIAL_REPOSITORY})",
    )


DEFAULT_MANIFEST = Manifest(
    files=(
        _official_file("flow_transformer.pth"),
        _official_file("motion_autoencoder.pth"),
        _hf_file("config.json"),
        _hf_file("model.safetensors"),
    )
)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """The manifest in JSON file `path`, or `DEFAULT_MANIFEST` when `path` is ``None``.
    `CommandError` (exit 2) naming the file when it is missing or malformed."""
    if path is None:
        return DEFAULT_MANIFEST
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text())
        return Manifest.from_dict(data, str(file))
    except FileNotFoundError:
        raise CommandError(f"--manifest: {file} not found", exit_code=2) from None
    except (OSError, ValueError) as error:
        raise CommandError(f"--manifest: {file} is not a valid weights manifest ({error})", exit_code=2) from None


# --------------------------------------------------------------------------------------------
# Where the weights live
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActiveWeightsDir:
    """The weights directory in use and why (`origin`, for messages)."""

    path: Path
    origin: str


def location_file(environ: Mapping[str, str] | None = None) -> Path:
    """``<user cache>/avatarforcing/weights-location.json``: the copy set by ``weights path``."""
    return user_cache_dir(environ) / "avatarforcing" / LOCATION_FILE_NAME


def recorded_weights_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The directory recorded by `record_weights_dir`, or ``None`` (none, or unreadable)."""
    file = location_file(environ)
    try:
        value = json.loads(file.read_text()).get("weights_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(value) if isinstance(value, str) and value else None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PART_SUFFIX)
    partial.write_text(text)
    os.replace(partial, path)


def record_weights_dir(directory: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Path:
    """Record `directory` (made absolute) as the local copy of the weights; returns the
    location file. `CommandError` (exit 2) when it is not an existing directory."""
    path = Path(directory).expanduser().resolve()
    if not path.is_dir():
        raise CommandError(f"weights path: {path} is not an existing directory", exit_code=2)
    file = location_file(environ)
    _write_atomic(file, json.dumps({"weights_dir": str(path)}, indent=2) + "\n")
    return file


def forget_weights_dir(environ: Mapping[str, str] | None = None) -> bool:
    """Remove the recorded location; True if there was one."""
    try:
        location_file(environ).unlink()
        return True
    except FileNotFoundError:
        return False


def active_weights_dir(settings: Any = None, environ: Mapping[str, str] | None = None) -> ActiveWeightsDir:
    """The weights directory, in order: ``[model] checkpoint_dir`` (`settings`, a
    `ModelSettings` or ``None``), ``$AVATARFORCING_WEIGHTS``, the recorded local copy, the
    per-user cache."""
    env = os.environ if environ is None else environ
    checkpoint_dir = getattr(settings, "checkpoint_dir", "") or ""
    if checkpoint_dir:
        return ActiveWeightsDir(Path(checkpoint_dir).expanduser(), "[model] checkpoint_dir")
    if env.get(WEIGHTS_ENV):
        return ActiveWeightsDir(Path(env[WEIGHTS_ENV]).expanduser(), f"${WEIGHTS_ENV}")
    recorded = recorded_weights_dir(env)
    if recorded is not None:
        return ActiveWeightsDir(recorded, f"recorded in {location_file(env)}")
    return ActiveWeightsDir(default_weights_dir(env), "per-user cache")


# --------------------------------------------------------------------------------------------
# Checking files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileStatus:
    """What is known about one manifest file on disk. `state`: ``ok`` (size and hash match),
    ``unverified`` (present; the manifest lacks the size and/or hash to check fully),
    ``missing``, ``size-mismatch``, ``hash-mismatch``; `detail`: one line."""

    entry: WeightFile
    path: Path
    state: FileState
    detail: str

    @property
    def usable(self) -> bool:
        return self.state in ("ok", "unverified")


def sha256_of(path: Path, chunk: int = CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_file(entry: WeightFile, path: Path, *, hash_files: bool = True) -> FileStatus:
    """Compare the file at `path` with its manifest `entry` (size, then sha256 when known and
    `hash_files`)."""
    if not path.is_file():
        return FileStatus(entry, path, "missing", f"{path} not found")
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return FileStatus(entry, path, "size-mismatch", f"{size} bytes, expected {entry.size}")
    if entry.sha256 is not None and hash_files:
        actual = sha256_of(path)
        if actual != entry.sha256:
            return FileStatus(entry, path, "hash-mismatch", f"sha256 {actual}, expected {entry.sha256}")
        return FileStatus(entry, path, "ok", f"{size} bytes, sha256 verified")
    unknown = [what for what, value in (("size", entry.size), ("sha256", entry.sha256)) if value is None]
    if not unknown:  # hash known but hashing skipped
        return FileStatus(entry, path, "unverified", f"{size} bytes, sha256 not checked")
    return FileStatus(
        entry, path, "unverified", f"{size} bytes; the manifest has no {' or '.join(unknown)} to verify it"
    )


def verify_weights(manifest: Manifest, directory: Path) -> list[FileStatus]:
    """`check_file` for every manifest file inside `directory`."""
    return [check_file(entry, directory / entry.path) for entry in manifest.files]


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------
Progress = Callable[[int, "int | None"], None]  # (bytes done, bytes total or None)


def source_url(entry: WeightFile, base: str | None) -> str | None:
    """Where to fetch `entry`: ``BASE/PATH`` when `base` (a URL or a local directory) is given,
    else the manifest URL (``None`` when the manifest has none). A local `base` that lacks the
    file falls back to the manifest URL (e.g. a folder holding only the two official
    checkpoints, with wav2vec2 still coming from its hub)."""
    if base:
        if "://" in base:
            return base.rstrip("/") + "/" + urllib.parse.quote(entry.path)
        directory = Path(base).expanduser().resolve()
        if not directory.is_dir():
            raise CommandError(f"--from: {directory} is not a directory", exit_code=2)
        local = directory / entry.path
        return local.as_uri() if local.is_file() or not entry.url else entry.url
    return entry.url


def _open(url: str, offset: int, timeout: float):
    """``(stream, resumed, length of the rest or None)`` for `url` from byte `offset`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        handle = path.open("rb")  # FileNotFoundError names the file
        size = os.fstat(handle.fileno()).st_size
        resumed = 0 < offset <= size
        handle.seek(offset if resumed else 0)
        return handle, resumed, size - (offset if resumed else 0)
    if parsed.scheme not in ("http", "https"):
        raise CommandError(f"unsupported URL scheme in {url!r} (use http, https or file)", exit_code=2)
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    resumed = bool(offset) and response.status == 206
    length = response.headers.get("Content-Length")
    return response, resumed, (int(length) if length and length.isdigit() else None)


def download_file(
    url: str,
    destination: Path,
    entry: WeightFile,
    *,
    progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
) -> FileStatus:
    """Download `url` to `destination` through ``destination.part``, resuming a partial file,
    verify it against `entry`, then rename it into place. A file that fails the check is
    deleted and `CommandError` names it; a transfer error keeps the ``.part`` for a resume."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + PART_SUFFIX)
    offset = partial.stat().st_size if partial.is_file() else 0
    if entry.size is not None and offset >= entry.size:
        offset = 0 if offset > entry.size else offset
    try:
        if entry.size is not None and offset == entry.size:
            stream, resumed, rest = None, True, 0  # already complete: just verify
        else:
            stream, resumed, rest = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left past our offset: verify what we have
            stream, resumed, rest = None, True, 0
        else:
            raise CommandError(f"cannot download {entry.path} from {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise CommandError(f"cannot download {entry.path} from {url}: {reason}") from error
    done = offset if resumed else 0
    total = done + rest if rest is not None else entry.size
    if progress:
        progress(done, total)
    if stream is not None:
        try:
            with stream, partial.open("ab" if resumed else "wb") as out:
                while block := stream.read(CHUNK_BYTES):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise CommandError(
                f"download of {entry.path} from {url} interrupted after {done} bytes "
                f"({type(error).__name__}: {error}); run the command again to resume"
            ) from error
        if total is not None and done < total:
            raise CommandError(
                f"download of {entry.path} from {url} ended after {done} of {total} bytes; "
                "run the command again to resume"
            )
    status = check_file(entry, partial)
    if not status.usable:
        partial.unlink(missing_ok=True)
        raise CommandError(f"{entry.path} from {url} failed verification: {status.detail}; deleted")
    os.replace(partial, destination)
    return FileStatus(entry, destination, status.state, status.detail)


@dataclass
class FetchResult:
    """Outcome per manifest file: `action` is ``downloaded``, ``present`` (kept as it was) or
    ``unavailable`` (missing, and no URL to fetch it from)."""

    entry: WeightFile
    action: Literal["downloaded", "present", "unavailable"]
    status: FileStatus
    url: str = ""


@dataclass(frozen=True)
class FetchStep:
    """One manifest file in a `FetchPlan`: `url` is where to download it from, ``None`` when it
    is kept (`status` usable and not forced) or cannot be fetched (no URL)."""

    entry: WeightFile
    status: FileStatus
    url: str | None

    @property
    def action(self) -> Literal["download", "keep", "unavailable"]:
        if self.url is not None:
            return "download"
        return "keep" if self.status.usable else "unavailable"


@dataclass
class FetchPlan:
    """What `fetch_weights` will do, one `FetchStep` per manifest file, in manifest order."""

    steps: list[FetchStep] = field(default_factory=list)

    def with_action(self, action: str) -> list[FetchStep]:
        return [step for step in self.steps if step.action == action]

    @property
    def needs_license(self) -> bool:
        """True when a file under a non-commercial licence will be downloaded."""
        return any(step.entry.restricted for step in self.with_action("download"))


def plan_fetch(manifest: Manifest, destination: Path, base: str | None = None, force: bool = False) -> FetchPlan:
    """Which files are missing or wrong in `destination` and where each comes from. A present
    file is kept unless `force` or it fails its size/hash check."""
    plan = FetchPlan()
    for entry in manifest.files:
        status = check_file(entry, destination / entry.path)
        keep = status.usable and not force
        plan.steps.append(FetchStep(entry, status, None if keep else source_url(entry, base)))
    return plan


def fetch_weights(
    plan: FetchPlan,
    destination: Path,
    *,
    progress_for: Callable[[WeightFile], Progress | None] | None = None,
    timeout: float = TIMEOUT_S,
) -> list[FetchResult]:
    """Carry out `plan` in `destination` (see `download_file`); one `FetchResult` per step.
    Raises `CommandError` at the first download that fails (earlier files stay in place)."""
    results = []
    for step in plan.steps:
        if step.action == "download":
            progress = progress_for(step.entry) if progress_for else None
            status = download_file(
                step.url, destination / step.entry.path, step.entry, progress=progress, timeout=timeout
            )
            results.append(FetchResult(step.entry, "downloaded", status, step.url))
        elif step.action == "keep":
            results.append(FetchResult(step.entry, "present", step.status))
        else:
            results.append(FetchResult(step.entry, "unavailable", step.status))
    return results


__all__ = [
    "DEFAULT_MANIFEST",
    "LICENSE_NOTICE",
    "ActiveWeightsDir",
    "FetchPlan",
    "FetchResult",
    "FetchStep",
    "FileStatus",
    "Manifest",
    "WeightFile",
    "active_weights_dir",
    "check_file",
    "download_file",
    "fetch_weights",
    "forget_weights_dir",
    "load_manifest",
    "location_file",
    "plan_fetch",
    "record_weights_dir",
    "recorded_weights_dir",
    "sha256_of",
    "source_url",
    "verify_weights",
]
