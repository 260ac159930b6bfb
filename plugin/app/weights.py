"""The official weights on disk: where they live, what they should be, and what was fetched.

- **Where** (`active_weights_dir`): ``[model] checkpoint_dir`` when set, else
  ``$AVATARFORCING_WEIGHTS``, else a local copy recorded with ``avatarforcing weights path DIR``
  (a small JSON file, `location_file`, in ``<user cache>/avatarforcing/``), else the per-user
  cache ``<user cache>/avatarforcing/weights`` (`avatarforcing.plugin.app.paths`).
- **What** (`Manifest`): one `WeightFile` per file — its path inside the weights directory, the
  Hugging Face Hub repository, file and revision it comes from, its size and sha256 when known,
  licence and origin. `DEFAULT_MANIFEST` lists the two official checkpoints, from the Hub
  mirror ``multimodalart/AvatarForcingHelpers`` (branch ``main``: trusted on first use, see the
  lock), and the two files of ``facebook/wav2vec2-base-960h`` the engine reads, pinned to a
  commit. A JSON file (``{"files": [{"path": ..., "repo": ..., "filename": ..., "revision":
  ..., "size": ..., "sha256": ..., "license": ..., "origin": ...}]}``) replaces it.
- **What was fetched** (`WeightsLock`): ``weights.lock.json`` in the weights directory records
  per file where it came from (repository, requested revision, resolved commit — or the local
  folder it was copied from), its size, sha256 and git blob id. ``weights fetch`` writes it at
  the first fetch and holds every later fetch to it; ``weights verify`` checks files against
  the manifest, else the lock.
- **The licence**: the official checkpoints are CC BY-NC 4.0 (non-commercial); `LICENSE_NOTICE`
  is shown and must be accepted once per user (`record_license_acceptance`) before
  ``weights fetch`` installs them.

Downloading is `avatarforcing.plugin.app.weights_fetch` (``huggingface_hub``); the strict load
check of ``weights verify --load`` is `avatarforcing.plugin.app.weights_keys`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.paths import WEIGHTS_ENV, default_weights_dir, user_cache_dir

LOCATION_FILE_NAME = "weights-location.json"
LICENSE_RECORD_NAME = "licenses-accepted.json"
LOCK_FILE_NAME = "weights.lock.json"
LOCK_VERSION = 1
TEMP_SUFFIX = ".tmp"
CHUNK_BYTES = 1 << 20

OFFICIAL_LICENSE = "CC BY-NC 4.0"
OFFICIAL_REPOSITORY = "https://github.com/TaekyungKi/AvatarForcing"
OFFICIAL_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1rN52J2QXD8A-r2CZ8nDqFdwvZuPRmMsc"
OFFICIAL_MIRROR = "multimodalart/AvatarForcingHelpers"
WAV2VEC2_REPO = "facebook/wav2vec2-base-960h"
# The commit of facebook/wav2vec2-base-960h that carries model.safetensors (its main branch).
WAV2VEC2_REVISION = "22aad52d435eb6dbaf354bdad9b0da84ce7d6156"
HUB_URL = "https://huggingface.co"
DEFAULT_REVISION = "main"

LICENSE_NOTICE = f"""\
The official Avatar Forcing checkpoints (flow_transformer.pth, motion_autoencoder.pth) are
released by their authors ({OFFICIAL_REPOSITORY}) under the Creative Commons
Attribution-NonCommercial 4.0 International licence ({OFFICIAL_LICENSE},
https://creativecommons.org/licenses/by-nc/4.0/): attribution is required and they may NOT be
used for commercial purposes - not in a paid product, not on a monetised stream. Anything that
runs them is non-commercial. avatarforcing downloads them from the Hugging Face mirror
{HUB_URL}/{OFFICIAL_MIRROR} of the authors' release; wav2vec2-base-960h
({HUB_URL}/{WAV2VEC2_REPO}) is Apache-2.0."""

FileState = Literal["ok", "unverified", "missing", "size-mismatch", "hash-mismatch"]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The only URL form the manifest still accepts: a file of the Hub (what earlier manifests held).
_HUB_FILE_URL = re.compile(
    r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$"
)


def is_commit(revision: str | None) -> bool:
    """Whether `revision` is a full commit hash (40 lower-case hex digits)."""
    return bool(revision) and bool(_HEX40.match(revision))


def _check_relative(what: str, value: str) -> None:
    """`ValueError` unless `value` is a relative POSIX path that stays inside its folder."""
    parts = Path(value).parts
    if not value or Path(value).is_absolute() or ".." in parts or "\\" in value:
        raise ValueError(f"manifest {what} {value!r} must be relative, without '..'")


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFile:
    """One file of the weights directory.

    `path`: relative POSIX path inside the weights directory (e.g.
    ``"wav2vec2-base-960h/config.json"``); `repo`: the Hugging Face model repository it is
    downloaded from, ``None`` when there is none (the file must then come from ``--from DIR``);
    `filename`: its path inside `repo` (default: `path`); `revision`: a branch, tag or commit
    hash (a commit pins the content); `size` in bytes and `sha256` (lower-case hex), ``None``
    when unknown (the Hub's own hashes and the lock then verify the file); `license`;
    `origin`: where a person finds it.
    """

    path: str
    repo: str | None = None
    filename: str = ""
    revision: str = DEFAULT_REVISION
    size: int | None = None
    sha256: str | None = None
    license: str = ""
    origin: str = ""

    def __post_init__(self) -> None:
        _check_relative("path", self.path)
        if not self.filename:
            object.__setattr__(self, "filename", self.path)
        _check_relative("filename", self.filename)
        if self.repo is not None and not _REPO_ID.match(self.repo):
            raise ValueError(f"manifest entry {self.path!r}: repo must be 'owner/name', got {self.repo!r}")
        if not self.revision or any(c.isspace() for c in self.revision):
            raise ValueError(f"manifest entry {self.path!r}: revision must be a branch, tag or commit hash")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"manifest entry {self.path!r}: size must be a non-negative integer or null")
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            raise ValueError(f"manifest entry {self.path!r}: sha256 must be 64 lower-case hex digits or null")

    @property
    def restricted(self) -> bool:
        """True for files under a non-commercial licence (their notice must be accepted)."""
        return "NC" in self.license.upper().replace("-", " ").split()

    @property
    def pinned(self) -> bool:
        """True when `revision` is a commit hash: the Hub serves one content for it, forever."""
        return is_commit(self.revision)

    @property
    def source(self) -> str:
        """``repo@revision:filename`` for messages, or ``"no download source"``."""
        if self.repo is None:
            return "no download source"
        return f"{self.repo}@{self.revision[:12]}:{self.filename}"


_MANIFEST_KEYS = {f.name for f in fields(WeightFile)} | {"url"}


def _entry_from_dict(index: int, raw: Any) -> WeightFile:
    """One manifest entry; the legacy ``url`` key is accepted for Hub file URLs only."""
    if not isinstance(raw, Mapping) or "path" not in raw:
        raise ValueError(f"files[{index}]: expected an object with at least a path")
    unknown = set(raw) - _MANIFEST_KEYS
    if unknown:
        raise ValueError(f"files[{index}]: unknown keys {sorted(unknown)}")
    values = {key: raw[key] for key in raw if key != "url"}
    url = raw.get("url")
    if url is not None:
        match = _HUB_FILE_URL.match(str(url))
        if match is None:
            raise ValueError(
                f"files[{index}]: url {url!r}: files are fetched from the Hugging Face Hub only "
                "(give repo, filename and revision; a mirror of the Hub goes in HF_ENDPOINT); "
                "put other files in a folder and use --from DIR"
            )
        values.setdefault("repo", match["repo"])
        values.setdefault("revision", urllib.parse.unquote(match["revision"]))
        values.setdefault("filename", urllib.parse.unquote(match["filename"]))
    sha = values.get("sha256")
    if isinstance(sha, str):
        values["sha256"] = sha.lower()
    for key in ("path", "filename", "revision", "license", "origin"):
        if key in values and values[key] is not None:
            values[key] = str(values[key])
    values.setdefault("revision", DEFAULT_REVISION)
    if values.get("revision") is None:
        values["revision"] = DEFAULT_REVISION
    return WeightFile(**values)


@dataclass(frozen=True)
class Manifest:
    """The files of a weights directory; `source` is ``"built-in"`` or the JSON file read."""

    files: tuple[WeightFile, ...]
    source: str = "built-in"

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Manifest:
        """Parse ``{"files": [...]}``; `ValueError` naming the bad entry."""
        if not isinstance(data, Mapping) or not isinstance(data.get("files"), list):
            raise ValueError('expected {"files": [ ... ]}')
        files = tuple(_entry_from_dict(index, raw) for index, raw in enumerate(data["files"]))
        if not files:
            raise ValueError("the manifest lists no files")
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError("a path is listed twice")
        return cls(files, source)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `from_dict` reads."""
        return {"files": [asdict(f) for f in self.files]}


def _wav2vec2_file(name: str) -> WeightFile:
    """File `name` of facebook/wav2vec2-base-960h at the pinned commit, in its own folder."""
    return WeightFile(
        path=f"wav2vec2-base-960h/{name}",
        repo=WAV2VEC2_REPO,
        filename=name,
        revision=WAV2VEC2_REVISION,
        license="Apache-2.0",
        origin=f"{HUB_URL}/{WAV2VEC2_REPO}",
    )


def _official_file(name: str) -> WeightFile:
    """Official checkpoint `name`, from the Hub mirror's main branch (trusted on first use)."""
    # The authors publish the two checkpoints in a Google Drive folder (official README), which
    # has no stable direct-download URL; the live ports of Avatar Forcing use this Hub mirror.
    # Its revision is not pinned (no commit is known here): the first fetch records it in the lock.
    return WeightFile(
        path=name,
        repo=OFFICIAL_MIRROR,
        filename=name,
        revision=DEFAULT_REVISION,
        license=OFFICIAL_LICENSE,
        origin=f"{HUB_URL}/{OFFICIAL_MIRROR}, a mirror of the authors' release "
        f"{OFFICIAL_DRIVE_FOLDER} (linked from {OFFICIAL_REPOSITORY})",
    )


DEFAULT_MANIFEST = Manifest(
    files=(
        _official_file("flow_transformer.pth"),
        _official_file("motion_autoencoder.pth"),
        _wav2vec2_file("config.json"),
        _wav2vec2_file("model.safetensors"),
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
    except (OSError, ValueError, TypeError) as error:
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


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or
    the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    partial.write_text(text)
    os.replace(partial, path)


def record_weights_dir(directory: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Path:
    """Record `directory` (made absolute) as the local copy of the weights; returns the
    location file. `CommandError` (exit 2) when it is not an existing directory."""
    path = Path(directory).expanduser().resolve()
    if not path.is_dir():
        raise CommandError(f"weights path: {path} is not an existing directory", exit_code=2)
    file = location_file(environ)
    write_atomic(file, json.dumps({"weights_dir": str(path)}, indent=2) + "\n")
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
# The licence, accepted once per user
# --------------------------------------------------------------------------------------------
def license_record_file(environ: Mapping[str, str] | None = None) -> Path:
    """``<user cache>/avatarforcing/licenses-accepted.json``: licences this user accepted."""
    return user_cache_dir(environ) / "avatarforcing" / LICENSE_RECORD_NAME


def _accepted(environ: Mapping[str, str] | None) -> dict[str, str]:
    """Licence -> ISO date of acceptance, from the record (empty when none or unreadable)."""
    try:
        value = json.loads(license_record_file(environ).read_text()).get("accepted")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def accepted_license(license: str, environ: Mapping[str, str] | None = None) -> str | None:
    """When (ISO date) this user accepted `license` with ``weights fetch``, or ``None``."""
    return _accepted(environ).get(license)


def record_license_acceptance(license: str, environ: Mapping[str, str] | None = None) -> Path:
    """Record that this user accepted `license` today; returns the record file."""
    accepted = _accepted(environ)
    accepted[license] = datetime.date.today().isoformat()
    file = license_record_file(environ)
    write_atomic(file, json.dumps({"accepted": accepted}, indent=2) + "\n")
    return file


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Digests:
    """A file's `size`, `sha256` and `git_blob` (its git object id, which is what the Hub
    reports for files it does not store with LFS)."""

    size: int
    sha256: str
    git_blob: str


def file_digests(path: Path, chunk: int = CHUNK_BYTES) -> Digests:
    """Size, sha256 and git blob id of `path`, in one read."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size)  # git's object header; sha1 is git's id, not a security check
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            sha256.update(block)
            git.update(block)
    return Digests(size, sha256.hexdigest(), git.hexdigest())


# --------------------------------------------------------------------------------------------
# The lock: what was fetched, trusted on first use
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LockEntry:
    """What one installed file is: `size`, `sha256`, `git_blob` (see `Digests`); `source`
    ``"hub"`` (`repo`, `filename`, the requested `revision` and the `commit` it resolved to) or
    ``"local"`` (copied from the folder `location` with ``--from``)."""

    path: str
    size: int
    sha256: str
    git_blob: str
    source: Literal["hub", "local"]
    repo: str | None = None
    filename: str | None = None
    revision: str | None = None
    commit: str | None = None
    location: str | None = None

    @classmethod
    def from_dict(cls, path: str, raw: Any) -> LockEntry:
        """The entry of `path` in the lock's JSON; `ValueError` when it is incomplete."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: expected an object")
        known = {f.name for f in fields(cls)} - {"path"}
        values = {k: raw[k] for k in raw if k in known}
        entry = cls(path=path, **values)
        if (
            not isinstance(entry.size, int)
            or not _HEX64.match(str(entry.sha256))
            or entry.source not in ("hub", "local")
        ):
            raise ValueError(f"{path}: size, sha256 and source are required")
        return entry

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without `path`, the key it is stored under, and without nulls)."""
        return {k: v for k, v in asdict(self).items() if k != "path" and v is not None}

    def describe(self) -> str:
        """Where the file came from, for messages."""
        if self.source == "local":
            return f"copied from {self.location}"
        return f"{self.repo}@{(self.commit or '?')[:12]}"


@dataclass
class WeightsLock:
    """``weights.lock.json`` of one weights directory: a `LockEntry` per installed path."""

    path: Path
    entries: dict[str, LockEntry] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> WeightsLock:
        """The lock in `directory` (empty when there is none). `CommandError` (exit 2) naming
        the file when it is unreadable: a damaged lock is not silently replaced."""
        path = directory / LOCK_FILE_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as error:
            raise CommandError(f"{path} is not readable ({error}); remove it to start over", exit_code=2) from None
        try:
            if not isinstance(data, Mapping) or data.get("version") != LOCK_VERSION:
                raise ValueError(f"expected version {LOCK_VERSION}")
            files = data.get("files")
            if not isinstance(files, Mapping):
                raise ValueError("no files")
            entries = {str(p): LockEntry.from_dict(str(p), raw) for p, raw in files.items()}
        except (ValueError, TypeError) as error:
            raise CommandError(
                f"{path} is not a valid weights lock ({error}); remove it to start over", exit_code=2
            ) from None
        return cls(path, entries)

    def write(self) -> None:
        """Write the lock atomically (sorted, one entry per installed file)."""
        data = {
            "version": LOCK_VERSION,
            "comment": "written by `avatarforcing weights fetch`: what each file is and where it came from; "
            "later fetches refuse other content unless run with --update",
            "files": {path: self.entries[path].to_dict() for path in sorted(self.entries)},
        }
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Checking files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileStatus:
    """What is known about one manifest file on disk. `state`: ``ok`` (size and hash match),
    ``unverified`` (present; neither the manifest nor the lock has a hash to check it),
    ``missing``, ``size-mismatch``, ``hash-mismatch``; `detail`: one line; `digests` when the
    file was hashed."""

    entry: WeightFile
    path: Path
    state: FileState
    detail: str
    digests: Digests | None = None

    @property
    def usable(self) -> bool:
        """Present and not contradicted by anything known about it."""
        return self.state in ("ok", "unverified")


def check_file(
    entry: WeightFile,
    path: Path,
    *,
    locked: LockEntry | None = None,
    hash_files: bool = True,
) -> FileStatus:
    """Compare the file at `path` with what its manifest `entry` says, else what the lock
    entry `locked` recorded: size, then sha256 (when `hash_files`)."""
    if not path.is_file():
        return FileStatus(entry, path, "missing", f"{path} not found")
    size = path.stat().st_size
    expected_size, expected_sha, by = entry.size, entry.sha256, "manifest"
    if expected_sha is None and locked is not None:
        expected_size, expected_sha, by = (entry.size if entry.size is not None else locked.size), locked.sha256, "lock"
    if expected_size is not None and size != expected_size:
        return FileStatus(entry, path, "size-mismatch", f"{size} bytes, expected {expected_size} ({by})")
    if not hash_files:
        return FileStatus(entry, path, "unverified", f"{size} bytes, sha256 not checked")
    digests = file_digests(path)
    if expected_sha is None:
        return FileStatus(
            entry, path, "unverified", f"{size} bytes; no sha256 to verify it (manifest or lock)", digests
        )
    if digests.sha256 != expected_sha:
        detail = f"sha256 {digests.sha256}, expected {expected_sha} ({by})"
        return FileStatus(entry, path, "hash-mismatch", detail, digests)
    return FileStatus(entry, path, "ok", f"{size} bytes, sha256 verified ({by})", digests)


def verify_weights(manifest: Manifest, directory: Path) -> list[FileStatus]:
    """`check_file` for every manifest file inside `directory`, with its lock."""
    lock = WeightsLock.read(directory)
    return [check_file(entry, directory / entry.path, locked=lock.entries.get(entry.path)) for entry in manifest.files]


__all__ = [
    "DEFAULT_MANIFEST",
    "LICENSE_NOTICE",
    "ActiveWeightsDir",
    "Digests",
    "FileStatus",
    "LockEntry",
    "Manifest",
    "WeightFile",
    "WeightsLock",
    "accepted_license",
    "active_weights_dir",
    "check_file",
    "file_digests",
    "forget_weights_dir",
    "license_record_file",
    "load_manifest",
    "location_file",
    "record_license_acceptance",
    "record_weights_dir",
    "recorded_weights_dir",
    "verify_weights",
]
