"""``weights fetch``: the manifest's files from the Hugging Face Hub (or a local folder), verified,
installed into the weights directory, and recorded in its lock.

Every remote file is downloaded by ``huggingface_hub`` into its cache, which brings what this
ecosystem expects: ``HF_HOME``/``HF_HUB_CACHE`` (one copy shared with every other tool),
``HF_TOKEN`` (or ``hf auth login``), ``HF_HUB_OFFLINE=1``, ``HF_ENDPOINT`` for a mirror of the
Hub, retries that resume an interrupted transfer, and its progress bars. `HubSettings` reads
those variables from the command's environment.

A fetch has two steps:

1. `plan_fetch` asks the Hub, once per repository and revision, which commit the revision
   resolves to and each file's size and hash (``model_info(files_metadata=True)``: the sha256
   of LFS files, the git blob id of the others), and decides per file: keep the installed file
   (it matches everything known about it), download it, copy it from ``--from DIR``, or report
   it unavailable. A file whose content differs from the one recorded in the lock (a changed
   upstream file) is a `FetchPlan.changes` entry: the fetch is refused unless ``--update``.
2. `fetch_weights` downloads every file into the Hugging Face cache (checking that the Hub
   served the commit the plan resolved), verifies each against the Hub's size and hash (and the
   manifest's and the lock's),
   and only when every file checks out installs them (hard link to the cache blob, else a
   copy, through a temporary name) and writes the lock. A file that fails its check is removed
   from the cache and nothing is installed.

With ``HF_HUB_OFFLINE=1`` nothing is asked of the network: the commit and the hashes come from
the lock (or a pinned manifest entry), the files from the cache.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.weights import (
    CHUNK_BYTES,
    HUB_URL,
    TEMP_SUFFIX,
    Digests,
    FileStatus,
    LockEntry,
    Manifest,
    WeightFile,
    WeightsLock,
    check_file,
    file_digests,
    is_commit,
)

_TRUE = ("1", "true", "yes", "on")
DEFAULT_METADATA_TIMEOUT_S = 10.0  # huggingface_hub's default for HF_HUB_ETAG_TIMEOUT
# Shapes of Hugging Face access tokens, redacted from any text shown to the user in case a
# server echoes one in an error message.
_TOKEN_SHAPES = (re.compile(r"hf_[A-Za-z0-9]{6,}"), re.compile(r"(?i)(bearer\s+)\S+"))
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The Hub's settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSettings:
    """How to reach the Hub: `endpoint` (``None``: huggingface_hub's default), `cache_dir`,
    `token` (``None``: huggingface_hub's stored login, if any), `offline`, and the `timeout` in
    seconds of a metadata request."""

    endpoint: str | None
    cache_dir: Path
    token: str | None
    offline: bool
    timeout: float = DEFAULT_METADATA_TIMEOUT_S

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> HubSettings:
        """The settings huggingface_hub derives from ``HF_ENDPOINT``, ``HF_HUB_CACHE`` /
        ``HF_HOME`` / ``XDG_CACHE_HOME``, ``HF_TOKEN``, ``HF_HUB_OFFLINE`` and
        ``HF_HUB_ETAG_TIMEOUT`` (its timeout for metadata requests), read from
        `environ` now: huggingface_hub reads them once, when first imported, so reading them
        per command keeps their meaning while following the command's own environment."""
        env = os.environ if environ is None else environ

        def path(value: str) -> Path:
            return Path(os.path.expandvars(os.path.expanduser(value)))

        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        if cache:
            cache_dir = path(cache)
        else:
            home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
            cache_dir = path(home) / "hub"
        offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").strip().lower() in _TRUE
        try:
            timeout = float(env.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_METADATA_TIMEOUT_S)
        except ValueError:
            timeout = DEFAULT_METADATA_TIMEOUT_S
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or "").rstrip("/") or None,
            cache_dir=cache_dir,
            token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
            offline=offline,
            timeout=timeout,
        )

    @property
    def where(self) -> str:
        """The endpoint, for messages."""
        return self.endpoint or HUB_URL

    def redact(self, text: str) -> str:
        """`text` without the token or anything shaped like one."""
        if self.token:
            text = text.replace(self.token, "***")
        text = _TOKEN_SHAPES[0].sub("hf_***", text)
        return _TOKEN_SHAPES[1].sub(r"\1***", text)


def hub_failure(hub: HubSettings, what: str, error: BaseException) -> CommandError:
    """One `CommandError` saying `what` failed and why, with tokens redacted; the original
    exception is chained (for ``--debug``) only when its text holds none. When the Hub could
    not be reached at all, it says how to work from the lock and the cache instead."""
    from huggingface_hub.errors import HfHubHTTPError

    reason = " ".join(str(error).split()) or type(error).__name__
    text = hub.redact(reason)
    unreachable = not hub.offline and not isinstance(error, (HfHubHTTPError, OSError, ValueError))
    hint = (
        "; without network access, set HF_HUB_OFFLINE=1 to install from the Hugging Face cache" if unreachable else ""
    )
    failure = CommandError(f"cannot {what}: {type(error).__name__}: {text}{hint}")
    failure.__cause__ = error if text == reason else None
    failure.__suppress_context__ = True
    return failure


def _hub_call(hub: HubSettings, what: str, call: Callable[[], T], *, passing: tuple[type[Exception], ...] = ()) -> T:
    """Run one huggingface_hub call; a failure becomes `hub_failure`, except the `passing`
    exceptions, which the caller handles."""
    try:
        return call()
    except passing:
        raise
    except CommandError:
        raise
    except Exception as error:  # the client raises HTTP, transport, cache and OS errors alike
        raise hub_failure(hub, what, error)  # noqa: B904 (its cause is set there, or hidden on purpose)


# --------------------------------------------------------------------------------------------
# What the Hub says about a file
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    """One file at one commit of a repository, with what is known of its content: `size`,
    `sha256` (the Hub reports it for LFS files; the lock knows it for every file) and
    `git_blob` (the Hub reports it for files not in LFS); `basis` says who told (for reports).
    `commit` is ``None`` only offline before the cache has named it."""

    repo: str
    filename: str
    revision: str
    commit: str | None
    size: int | None = None
    sha256: str | None = None
    git_blob: str | None = None
    basis: str = "the Hub"

    def differs_from(self, locked: LockEntry) -> bool:
        """Whether this content is known to differ from the locked one."""
        return (
            (self.size is not None and self.size != locked.size)
            or (self.sha256 is not None and self.sha256 != locked.sha256)
            or (self.git_blob is not None and self.git_blob != locked.git_blob)
        )

    def mismatch(self, digests: Digests) -> str:
        """How `digests` differ from what is known, or ``""``."""
        if self.size is not None and digests.size != self.size:
            return f"{digests.size} bytes, expected {self.size}"
        if self.sha256 is not None and digests.sha256 != self.sha256:
            return f"sha256 {digests.sha256}, expected {self.sha256}"
        if self.git_blob is not None and digests.git_blob != self.git_blob:
            return f"git blob id {digests.git_blob}, expected {self.git_blob}"
        return ""

    @property
    def label(self) -> str:
        """``repo@commit`` (12 digits), for messages."""
        return f"{self.repo}@{(self.commit or self.revision)[:12]}"


def hub_files(hub: HubSettings, repo: str, revision: str, filenames: list[str]) -> dict[str, RemoteFile]:
    """Ask the Hub (one request) which commit `revision` of `repo` is and what `filenames` are
    there. `CommandError` when the repository, revision or a file is not found."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    info = _hub_call(
        hub,
        f"ask {hub.where} about {repo}@{revision}",
        lambda: api.model_info(repo, revision=revision, files_metadata=True, timeout=hub.timeout),
    )
    commit = info.sha
    if not commit:
        raise CommandError(f"{hub.where} gave no commit for {repo}@{revision}")
    siblings = {s.rfilename: s for s in info.siblings or []}
    missing = [name for name in filenames if name not in siblings]
    if missing:
        raise CommandError(f"{repo}@{commit[:12]} on {hub.where} has no {', '.join(missing)}")
    remote = {}
    for name in filenames:
        sibling = siblings[name]
        lfs = sibling.lfs
        remote[name] = RemoteFile(
            repo=repo,
            filename=name,
            revision=revision,
            commit=commit,
            size=lfs.size if lfs else sibling.size,
            sha256=lfs.sha256 if lfs else None,
            git_blob=None if lfs else sibling.blob_id,  # an LFS file's blob id is its pointer's
        )
    return remote


def _offline_remote(entry: WeightFile, locked: LockEntry | None) -> RemoteFile:
    """What is known of `entry` without the network: the lock's commit and hashes when the lock
    describes this Hub file, else the manifest's (a pinned revision, its size and sha256)."""
    assert entry.repo is not None
    if locked is not None and locked.source == "hub" and (locked.repo, locked.filename) == (entry.repo, entry.filename):
        return RemoteFile(
            entry.repo,
            entry.filename,
            entry.revision,
            locked.commit,
            locked.size,
            locked.sha256,
            locked.git_blob,
            basis="the lock",
        )
    commit = entry.revision if entry.pinned else None
    return RemoteFile(
        entry.repo, entry.filename, entry.revision, commit, entry.size, entry.sha256, basis="the manifest"
    )


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
Action = Literal["keep", "hub", "local", "unavailable"]


@dataclass(frozen=True)
class FetchStep:
    """One manifest file in a `FetchPlan`. `action`: ``keep`` the installed file, download it
    from the ``hub`` (`remote`), copy it from a ``local`` folder (`local`, its `digests`), or
    ``unavailable`` (missing, and no source). `status`: the installed file before the fetch.
    `change`: how the content to install differs from the lock's, ``""`` when it does not."""

    entry: WeightFile
    action: Action
    status: FileStatus
    remote: RemoteFile | None = None
    local: Path | None = None
    digests: Digests | None = None
    change: str = ""


@dataclass
class FetchPlan:
    """What `fetch_weights` will do in `destination`, one `FetchStep` per manifest file."""

    destination: Path
    lock: WeightsLock
    hub: HubSettings
    steps: list[FetchStep] = field(default_factory=list)
    update: bool = False
    force: bool = False

    def with_action(self, action: str) -> list[FetchStep]:
        """The steps with `action`, in manifest order."""
        return [step for step in self.steps if step.action == action]

    @property
    def needs_license(self) -> bool:
        """True when a file under a non-commercial licence will be installed."""
        return bool(self.licenses)

    @property
    def licenses(self) -> list[str]:
        """The non-commercial licences of the files to install."""
        found = [s.entry.license for s in self.steps if s.action in ("hub", "local") and s.entry.restricted]
        return list(dict.fromkeys(found))

    @property
    def changes(self) -> list[FetchStep]:
        """Steps whose content differs from the lock's."""
        return [step for step in self.steps if step.change]

    def refusal(self) -> str:
        """The message that refuses changed files without ``--update``."""
        listed = "; ".join(step.change for step in self.changes)
        return (
            f"refusing to change what {self.lock.path} recorded: {listed}. Nothing was downloaded or "
            "changed; if you trust the new content, run `avatarforcing weights fetch --update`"
        )


def _base_dir(base: str | None) -> Path | None:
    """``--from``: an existing local folder. A URL is refused with the way to use a mirror."""
    if not base:
        return None
    if "://" in base:
        raise CommandError(
            f"--from {base}: give a local folder; to download from a mirror of the Hugging Face Hub, "
            "set HF_ENDPOINT to it",
            exit_code=2,
        )
    directory = Path(base).expanduser().resolve()
    if not directory.is_dir():
        raise CommandError(f"--from: {directory} is not a directory", exit_code=2)
    return directory


def _change(entry: WeightFile, locked: LockEntry | None, new: str, differs: bool) -> str:
    """`entry`'s line in the refusal when its content `differs` from `locked`, else ``""``."""
    if locked is None or not differs:
        return ""
    return f"{entry.path} was {locked.describe()} (sha256 {locked.sha256[:16]}…, {locked.size} bytes), now {new}"


def _remote_description(remote: RemoteFile) -> str:
    """`remote` with its hash and size, for the refusal."""
    digest = f"sha256 {remote.sha256[:16]}…" if remote.sha256 else f"git blob {(remote.git_blob or '?')[:16]}…"
    return f"{remote.label} ({digest}, {remote.size} bytes)"


def _installed_matches(status: FileStatus, remote: RemoteFile | None) -> bool:
    """Whether the installed file agrees with everything known about it: the manifest or lock
    (`status`) and the Hub (`remote`). An unverified file with nothing to check it counts."""
    if not status.usable:
        return False
    if remote is None or status.digests is None:
        return True
    return not remote.mismatch(status.digests)


def _manifest_problem(entry: WeightFile, size: int | None, sha256: str | None, where: str) -> str:
    """How `where`'s file differs from the manifest's pinned size or sha256, or ``""``."""
    if entry.size is not None and size is not None and size != entry.size:
        return f"{entry.path}: {where} has {size} bytes, the manifest says {entry.size}"
    if entry.sha256 is not None and sha256 is not None and sha256 != entry.sha256:
        return f"{entry.path}: {where} has sha256 {sha256}, the manifest says {entry.sha256}"
    return ""


def _plan_local(entry: WeightFile, status: FileStatus, locked: LockEntry | None, local: Path, force: bool) -> FetchStep:
    """The step for a file found in the ``--from`` folder: keep the installed file when it is
    the same, else copy (a change when the lock recorded other content)."""
    digests = file_digests(local)
    problem = _manifest_problem(entry, digests.size, digests.sha256, str(local))
    if problem:
        raise CommandError(problem)
    change = _change(
        entry,
        locked,
        f"{local} (sha256 {digests.sha256[:16]}…, {digests.size} bytes)",
        bool(locked and locked.sha256 != digests.sha256),
    )
    same = status.digests is not None and status.digests.sha256 == digests.sha256
    if same and status.usable and not force:
        return FetchStep(entry, "keep", status, digests=digests)
    return FetchStep(entry, "local", status, local=local, digests=digests, change=change)


def _plan_hub(
    entry: WeightFile,
    status: FileStatus,
    locked: LockEntry | None,
    remote: RemoteFile,
    *,
    online: bool,
    force: bool,
) -> FetchStep:
    """The step for a Hub file: keep the installed file when it matches everything known about
    it, else download `remote` (a change when, online, the Hub's content differs from the
    lock's). `CommandError` when the Hub contradicts the manifest's pins."""
    problem = _manifest_problem(entry, remote.size, remote.sha256, remote.label) if online else ""
    if problem:
        raise CommandError(problem)
    change = _change(
        entry, locked, _remote_description(remote), online and locked is not None and remote.differs_from(locked)
    )
    if not force and _installed_matches(status, remote):
        return FetchStep(entry, "keep", status, remote=remote, change=change)
    return FetchStep(entry, "hub", status, remote=remote, change=change)


def plan_fetch(
    manifest: Manifest,
    destination: Path,
    hub: HubSettings,
    *,
    base: str | None = None,
    force: bool = False,
    update: bool = False,
) -> FetchPlan:
    """Decide per manifest file what `fetch_weights` does (see the module docstring). Asks the
    Hub once per repository and revision unless `hub.offline`; hashes the installed files.
    `CommandError` when the Hub cannot be asked, or a file contradicts the manifest's pins."""
    if update and hub.offline:
        raise CommandError("--update needs the network: HF_HUB_OFFLINE is set", exit_code=2)
    base_dir = _base_dir(base)
    lock = WeightsLock.read(destination)
    plan = FetchPlan(destination, lock, hub, update=update, force=force)
    local = {e.path: base_dir / e.path for e in manifest.files if base_dir and (base_dir / e.path).is_file()}
    remotes: dict[tuple[str, str], dict[str, RemoteFile]] = {}
    if not hub.offline:
        wanted: dict[tuple[str, str], list[str]] = {}
        for entry in manifest.files:
            if entry.repo is not None and entry.path not in local:
                wanted.setdefault((entry.repo, entry.revision), []).append(entry.filename)
        for (repo, revision), names in wanted.items():
            remotes[(repo, revision)] = hub_files(hub, repo, revision, names)
    for entry in manifest.files:
        locked = lock.entries.get(entry.path)
        status = check_file(entry, destination / entry.path, locked=locked)
        if entry.path in local:
            plan.steps.append(_plan_local(entry, status, locked, local[entry.path], force))
        elif entry.repo is not None:
            remote = (
                _offline_remote(entry, locked) if hub.offline else remotes[(entry.repo, entry.revision)][entry.filename]
            )
            plan.steps.append(_plan_hub(entry, status, locked, remote, online=not hub.offline, force=force))
        else:
            plan.steps.append(FetchStep(entry, "keep" if status.usable else "unavailable", status))
    return plan


# --------------------------------------------------------------------------------------------
# Carrying it out
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchResult:
    """Outcome per manifest file: `action` is ``downloaded`` (from the Hub), ``cached`` (from
    the Hugging Face cache), ``copied`` (from ``--from DIR``), ``present`` (kept as it was) or
    ``unavailable`` (missing, and no source); `status`: the file as installed; `source`: where
    it came from."""

    entry: WeightFile
    action: Literal["downloaded", "cached", "copied", "present", "unavailable"]
    status: FileStatus
    source: str = ""


@dataclass(frozen=True)
class _Fetched:
    """A verified file waiting to be installed."""

    step: FetchStep
    path: Path
    digests: Digests
    remote: RemoteFile | None
    action: Literal["downloaded", "cached", "copied"]


def _is_cached(hub: HubSettings, remote: RemoteFile) -> bool:
    """Whether the Hugging Face cache already holds `remote` (so nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        remote.repo, remote.filename, cache_dir=str(hub.cache_dir), revision=remote.commit or remote.revision
    )
    return isinstance(found, str)


class _NotCached(Exception):
    """Offline, and the file is not in the Hugging Face cache."""


def _download(hub: HubSettings, remote: RemoteFile, force: bool) -> Path:
    """The file in the Hugging Face cache, downloaded when needed (offline: `_NotCached` when
    it is not there)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    what = f"download {remote.filename} from {remote.label} ({hub.where})"
    # Online, ask for the requested revision (the client then records it in the cache's refs/,
    # as every Hub tool does, for later offline use) and check the commit it gave afterwards;
    # offline, the commit the lock recorded is the one to find.
    revision = (remote.commit or remote.revision) if hub.offline else remote.revision
    call = lambda: hf_hub_download(
        remote.repo,
        remote.filename,
        revision=revision,
        cache_dir=str(hub.cache_dir),
        endpoint=hub.endpoint,
        token=hub.token,
        local_files_only=hub.offline,
        force_download=force and not hub.offline,
    )
    try:
        return Path(_hub_call(hub, what, call, passing=(LocalEntryNotFoundError,)))
    except LocalEntryNotFoundError as error:
        if hub.offline:
            raise _NotCached from None
        raise hub_failure(hub, what, error)  # noqa: B904 (its cause is set there, or hidden on purpose)


def _purge(path: Path) -> None:
    """Remove a downloaded file from the Hugging Face cache (its blob and snapshot entry), so
    the next fetch downloads it again instead of reusing bad bytes."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _commit_of(path: Path, filename: str) -> str | None:
    """The commit of a file returned by the cache: ``.../snapshots/<commit>/<filename>``."""
    parents = Path(filename).parts
    candidate = path.parents[len(parents) - 1].name if len(path.parents) >= len(parents) else ""
    return candidate if is_commit(candidate) else None


def _from_cache_name(remote: RemoteFile, path: Path) -> RemoteFile:
    """Offline without a lock: the cache names each blob by the ETag the Hub sent, which is the
    sha256 of an LFS file and the git blob id of another; hold the file to that."""
    name = path.resolve().name
    sha256 = name if _HEX64.match(name) else None
    git_blob = name if _HEX40.match(name) else None
    commit = remote.commit or _commit_of(path, remote.filename)
    basis = "the ETag the Hub sent, kept as the cache's blob name"
    return RemoteFile(remote.repo, remote.filename, remote.revision, commit, remote.size, sha256, git_blob, basis)


def _fetch_from_hub(plan: FetchPlan, step: FetchStep) -> _Fetched:
    """Download (or find in the cache) `step`'s file and verify it against the Hub, the
    manifest and (unless updating) the lock; on a mismatch purge it from the cache and raise."""
    remote = step.remote
    assert remote is not None
    cached = _is_cached(plan.hub, remote) and not plan.force
    path = _download(plan.hub, remote, plan.force)
    served = _commit_of(path, remote.filename)
    if plan.hub.offline and remote.sha256 is None and remote.git_blob is None:
        remote = _from_cache_name(remote, path)
    elif remote.commit is None:
        remote = replace(remote, commit=served)
    elif served is not None and served != remote.commit:
        raise CommandError(
            f"{remote.repo}@{remote.revision} moved from {remote.commit[:12]} to {served[:12]} during the fetch; "
            "nothing was installed; run the command again"
        )
    digests = file_digests(path)
    problem = remote.mismatch(digests) or _manifest_problem(step.entry, digests.size, digests.sha256, "the download")
    if problem:  # bad bytes: never leave them in the cache for the next run to reuse
        _purge(path)
        raise CommandError(
            f"{step.entry.path} from {remote.label} failed verification ({problem}): removed it from the "
            f"Hugging Face cache and installed nothing; run the command again to download it again"
        )
    locked = plan.lock.entries.get(step.entry.path)
    if locked is not None and not plan.update and locked.sha256 != digests.sha256:
        # good bytes, but not the ones the lock trusts (offline, where the plan could not tell)
        raise CommandError(
            f"{step.entry.path}: {remote.label} in the Hugging Face cache has sha256 {digests.sha256}, "
            f"but {plan.lock.path} records {locked.sha256} ({locked.describe()}); nothing was installed. "
            "If you trust it, run `avatarforcing weights fetch --update` with network access"
        )
    return _Fetched(step, path, digests, remote, "cached" if cached else "downloaded")


def _copy_hashing(source: Path, target: Path) -> str:
    """Copy `source` to `target`, returning the sha256 of the bytes written."""
    import hashlib

    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        while block := reader.read(CHUNK_BYTES):
            digest.update(block)
            writer.write(block)
    return digest.hexdigest()


def install_file(source: Path, target: Path, sha256: str, *, link: bool) -> None:
    """Put `source` at `target` through a temporary name and a rename, so `target` is never
    partial: a hard link when `link` and the file system allows it (no second copy of a cache
    blob), else a copy whose bytes must hash to `sha256`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}{TEMP_SUFFIX}")
    temporary.unlink(missing_ok=True)
    try:
        linked = False
        if link:
            try:
                os.link(source.resolve(), temporary)
                linked = True
            except OSError:  # another file system, or no hard links there
                pass
        if not linked:
            written = _copy_hashing(source, temporary)
            if written != sha256:
                raise CommandError(f"copying {source} to {target} produced sha256 {written}, expected {sha256}")
            shutil.copymode(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _lock_entry(fetched: _Fetched, base: str) -> LockEntry:
    """The lock entry of an installed file (`base`: the ``--from`` folder of a local one)."""
    entry, digests, remote = fetched.step.entry, fetched.digests, fetched.remote
    if remote is None:
        return LockEntry(entry.path, digests.size, digests.sha256, digests.git_blob, "local", location=base)
    return LockEntry(
        entry.path, digests.size, digests.sha256, digests.git_blob, "hub",
        repo=remote.repo, filename=remote.filename, revision=remote.revision, commit=remote.commit,
    )  # fmt: skip


def _kept_entry(step: FetchStep, locked: LockEntry | None) -> LockEntry | None:
    """The lock entry of a kept file: the lock's (following the Hub to a new commit when the
    content is the same), or a new one when the Hub just verified it; ``None`` otherwise."""
    remote, digests = step.remote, step.status.digests
    if remote is None or digests is None or remote.commit is None or step.change:
        return locked
    if locked is not None and (locked.source != "hub" or locked.commit == remote.commit):
        return locked
    return LockEntry(
        step.entry.path, digests.size, digests.sha256, digests.git_blob, "hub",
        repo=remote.repo, filename=remote.filename, revision=remote.revision, commit=remote.commit,
    )  # fmt: skip


def fetch_weights(plan: FetchPlan) -> list[FetchResult]:
    """Carry out `plan` (see the module docstring); one `FetchResult` per step. Everything is
    fetched and verified before anything is installed: on any failure (`CommandError`) the
    weights directory and its lock are left as they were."""
    if plan.changes and not plan.update:
        raise CommandError(plan.refusal())
    fetched: dict[str, _Fetched] = {}
    not_cached: list[str] = []
    for step in plan.steps:
        if step.action == "hub":
            try:
                fetched[step.entry.path] = _fetch_from_hub(plan, step)
            except _NotCached:
                not_cached.append(f"{step.entry.path} ({step.remote.label if step.remote else '?'})")
        elif step.action == "local":
            assert step.local is not None and step.digests is not None
            fetched[step.entry.path] = _Fetched(step, step.local, step.digests, None, "copied")
    if not_cached:
        raise CommandError(
            f"HF_HUB_OFFLINE is set and the Hugging Face cache ({plan.hub.cache_dir}) lacks "
            f"{', '.join(not_cached)}; nothing was installed. Run `avatarforcing weights fetch` once with "
            "network access (HF_HUB_OFFLINE unset), or use --from DIR with a folder holding the files"
        )
    lock = plan.lock
    before = dict(lock.entries)
    results: list[FetchResult] = []
    for step in plan.steps:
        item = fetched.get(step.entry.path)
        if item is not None:
            target = plan.destination / step.entry.path
            install_file(item.path, target, item.digests.sha256, link=item.action != "copied")
            lock.entries[step.entry.path] = _lock_entry(item, _local_root(step))
            status = _installed_status(step, item, target)
            source = item.remote.label if item.remote else str(item.path)
            results.append(FetchResult(step.entry, item.action, status, source))
        elif step.action == "keep":
            kept = _kept_entry(step, lock.entries.get(step.entry.path))
            if kept is not None:
                lock.entries[step.entry.path] = kept
            results.append(FetchResult(step.entry, "present", step.status, kept.describe() if kept else ""))
        else:
            results.append(FetchResult(step.entry, "unavailable", step.status))
    if lock.entries != before:
        lock.write()
    return results


def _local_root(step: FetchStep) -> str:
    """The ``--from`` folder a local file was copied from."""
    if step.local is None:
        return ""
    parts = len(Path(step.entry.path).parts)
    return str(step.local.parents[parts - 1])


def _installed_status(step: FetchStep, item: _Fetched, target: Path) -> FileStatus:
    """The installed file's status, saying what it was checked against."""
    size, remote = f"{item.digests.size} bytes", item.remote
    if step.entry.sha256:
        return FileStatus(step.entry, target, "ok", f"{size}, sha256 verified (manifest)", item.digests)
    if remote is None:
        detail = f"{size}, sha256 recorded in the lock (nothing to check a local file against)"
        return FileStatus(step.entry, target, "unverified", detail, item.digests)
    if remote.sha256 or remote.git_blob:
        what = "sha256" if remote.sha256 else "git blob id"
        return FileStatus(step.entry, target, "ok", f"{size}, {what} verified ({remote.basis})", item.digests)
    detail = f"{size}; nothing known to verify it (offline, no lock); sha256 recorded in the lock"
    return FileStatus(step.entry, target, "unverified", detail, item.digests)


__all__ = [
    "FetchPlan",
    "FetchResult",
    "FetchStep",
    "HubSettings",
    "RemoteFile",
    "fetch_weights",
    "hub_files",
    "install_file",
    "plan_fetch",
]
