"""One artifact-storage interface for every host: files stored by name, streamed in and out, and this host's cache.

Every file the system keeps (uploaded inputs, ONNX model files, memory-import files, job
outputs, sandbox output chunks) lives in Django's default storage (STORAGES["default"], from
ARTIFACT_STORAGE_URL): the local disk under MEDIA_ROOT, or S3-compatible object storage. No
host reads another host's disk: a worker needs only network access to the storage.

- Reads stream: `storage.open(name, "rb")` gives a file that yields bytes as they arrive
  (django-storages' own S3 file downloads the whole object into memory first; ours does not).
- Writes stream: `store_local_file` sends a local file in parts (S3 multipart from the file
  itself, no in-memory copy) and is whole-or-absent on both backends.
- Workers that need a file on their own disk (onnxruntime, memory-mapped .npz inputs, import
  files) call `local_copy(name, sha256=...)`: a per-host cache keyed by the file's sha256,
  filled by streaming in 1 MiB chunks while hashing, checked against the digest, reused across
  jobs and bounded by ARTIFACT_CACHE_MAX_BYTES (least recently used first). Processes of a host
  that want the same file at once fetch it once: the others wait on a lock and find it cached.
  On local-disk storage the stored file itself is used in place.
"""

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as StorageConnectionError
from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage
from django.http import FileResponse
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# A cached copy used this recently is never evicted: the job that asked for it may be about to
# open it (opening takes milliseconds; an open or mapped file survives its unlink anyway).
CACHE_MIN_IDLE_SECONDS = 300
# A download left half-written by a killed process is removed once this old.
STALE_PARTIAL_SECONDS = 3600


# The object storage did not answer (down, restarting, a network cut): the job kinds that read or
# write files retry these with backoff, like a database outage. A 4xx/5xx answer is not here:
# boto3 already retries throttling and 5xx itself.
TRANSIENT_STORAGE_ERRORS: tuple[type[BaseException], ...] = (StorageConnectionError, HTTPClientError)


@dataclass(frozen=True)
class StoredObject:
    """One stored file as listed: its storage name, size and last modification (epoch seconds)."""

    name: str
    size: int
    modified: float


class StoredFileCorrupt(Exception):
    """A stored file's bytes do not have the sha256 recorded for it (changed or damaged in storage)."""

    def __init__(self, name: str, expected: str, actual: str):
        super().__init__(f"stored file {name} has sha256 {actual}, not the recorded {expected}")
        self.name, self.expected, self.actual = name, expected, actual


class StreamedFile(File):
    """A stored object read front to back as its bytes arrive: never held whole in memory, not seekable."""

    def __init__(self, body, name: str, size: int):
        super().__init__(body, name)
        self.size = size  # File.size is a cached_property: the object's length, known without reading it
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self, mode=None):
        if self._closed:
            raise ValueError(f"{self.name}: a streamed object cannot be reopened; open it from the storage again.")
        return self

    def close(self) -> None:
        self._closed = True
        self.file.close()


class LocalArtifactStorage(FileSystemStorage):
    """The local disk (MEDIA_ROOT, or the folder of a file:// URL): one host, or a mount all hosts share."""

    def save_local_file(self, name: str, path: Path, *, move: bool = False) -> str:
        """Put the local file `path` under `name` (replacing what was there): whole or absent, never partial."""
        target = Path(self.path(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.replace(path, target)  # same filesystem: a rename, no copy
                os.chmod(target, self.file_permissions_mode or 0o644)
                return name
            except OSError:
                pass  # another filesystem: copied below
        descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        os.close(descriptor)
        try:
            shutil.copyfile(path, partial)
            os.chmod(partial, self.file_permissions_mode or 0o644)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return name

    def delete(self, name: str) -> None:
        """Remove the file, then its folders that are left empty (up to the storage's root)."""
        super().delete(name)
        root = Path(self.location)
        folder = Path(self.path(name)).parent
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone)
            folder = folder.parent

    def stored_objects(self, prefix: str) -> Iterator[StoredObject]:
        root = Path(self.location)
        for folder, _subfolders, files in os.walk(self.path(prefix)):
            for file_name in files:
                path = Path(folder) / file_name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                yield StoredObject(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime)


class S3ArtifactStorage(S3Storage):
    """S3-compatible object storage (AWS, MinIO, Ceph, ...), with reads that stream."""

    def _key(self, name: str) -> str:
        return self._normalize_name(clean_name(name))

    def _open(self, name, mode="rb"):
        if mode != "rb":
            return super()._open(name, mode)
        try:
            response = self.connection.meta.client.get_object(Bucket=self.bucket_name, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"No stored file {name}.") from exc
            raise
        return StreamedFile(response["Body"], name, response["ContentLength"])

    def save_local_file(self, name: str, path: Path, *, move: bool = False) -> str:
        """Upload the local file `path` as `name`: multipart, each part read from the file when it is sent."""
        name = clean_name(name)
        key = self._key(name)
        self.bucket.Object(key).upload_file(
            str(path), ExtraArgs=self._get_write_parameters(key), Config=self.transfer_config
        )
        return name

    def stored_objects(self, prefix: str) -> Iterator[StoredObject]:
        base = self._key(prefix).rstrip("/") + "/"
        location = f"{self.location.strip('/')}/" if self.location else ""
        paginator = self.connection.meta.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket_name, Prefix=base):
            for entry in page.get("Contents", ()):
                yield StoredObject(
                    entry["Key"].removeprefix(location), entry["Size"], entry["LastModified"].timestamp()
                )


def store_local_file(name: str, path: Path, *, move: bool = False) -> str:
    """Store the local file `path` under `name`, replacing what was there; returns the stored name.

    Streams on every backend; `move` lets the local disk take the file by renaming it.
    """
    save = getattr(default_storage, "save_local_file", None)
    if save is not None:
        return save(name, Path(path), move=move)
    with Path(path).open("rb") as handle:  # another Storage: its own save (it may rename)
        return default_storage.save(name, File(handle))


def store_bytes(name: str, data: bytes) -> str:
    """Store a small payload (a chunk, a probe) under `name`: written to a temporary file, then stored whole."""
    with tempfile.TemporaryDirectory(prefix="store-") as folder:
        path = Path(folder) / "payload"
        path.write_bytes(data)
        return store_local_file(name, path, move=True)


def delete_stored(names: Iterable[str]) -> int:
    """Delete these stored files (missing ones are fine); returns how many deletes were sent.

    A failure is logged and the rest go on: what stays behind is an orphan the prune removes.
    """
    count = 0
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
            count += 1
        except Exception:
            logger.exception("artifact_storage.delete_failed", extra={"storage_name": name})
    return count


def stored_objects(prefix: str) -> Iterator[StoredObject]:
    """Every stored file under the folder `prefix` (recursively), listed in pages, never all at once."""
    listing = getattr(default_storage, "stored_objects", None)
    if listing is not None:
        yield from listing(prefix)
        return
    folders, files = default_storage.listdir(prefix)
    for file_name in files:
        name = f"{prefix.rstrip('/')}/{file_name}"
        modified = default_storage.get_modified_time(name).timestamp()
        yield StoredObject(name, default_storage.size(name), modified)
    for folder in folders:
        yield from stored_objects(f"{prefix.rstrip('/')}/{folder}")


def stored_open(name: str) -> File:
    """The stored file, open for reading as a stream (FileNotFoundError when nothing is stored under `name`)."""
    return default_storage.open(name, "rb")


def stored_chunks(name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The stored file's bytes in chunks, as they arrive."""
    with stored_open(name) as source:
        yield from iter(lambda: source.read(chunk_bytes), b"")


def stored_sha256(name: str) -> str:
    digest = hashlib.sha256()
    for chunk in stored_chunks(name):
        digest.update(chunk)
    return digest.hexdigest()


def stored_exists(name: str) -> bool:
    return default_storage.exists(name)


def safe_storage_name(name: str) -> bool:
    """A relative name with no `..`, `.` or empty parts: it cannot leave the folder it names."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def local_copy(name: str, *, sha256: str) -> Path:
    """A local path holding the stored file `name`, whose bytes have the sha256 `sha256`.

    On local-disk storage, the stored file itself. Otherwise this host's cached copy, fetched
    once (streamed, hashed on the way, StoredFileCorrupt on a mismatch) and reused by every
    later job on this host. FileNotFoundError when nothing is stored under `name`.
    """
    if isinstance(default_storage, FileSystemStorage):
        path = Path(default_storage.path(name))
        if not path.is_file():
            raise FileNotFoundError(f"No stored file {name}.")
        return path
    cached = _cache_root() / sha256[:2] / f"{sha256}{PurePosixPath(name).suffix}"
    if cached.is_file():
        os.utime(cached)  # least recently used goes first
        return cached
    with _fetch_lock(sha256):
        if cached.is_file():  # fetched by another process while this one waited
            os.utime(cached)
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        _fetch(name, sha256, cached)
    logger.info(
        "artifact_storage.fetched",
        extra={
            "storage_name": name,
            "size_bytes": cached.stat().st_size,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    cache_evict(keep=cached)
    return cached


def _fetch(name: str, sha256: str, cached: Path) -> None:
    digest = hashlib.sha256()
    descriptor, partial = tempfile.mkstemp(dir=cached.parent, prefix=f".{cached.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as out:
            for chunk in stored_chunks(name):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise StoredFileCorrupt(name, sha256, digest.hexdigest())
        os.replace(partial, cached)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@contextmanager
def _fetch_lock(sha256: str) -> Iterator[None]:
    """Held by the one process of this host that fetches a file; others wanting it wait, then find it cached.

    One lock per first byte of the digest (256 lock files, outside the cached copies): two different
    files that share it are fetched one after the other, which is rare and costs only time.
    """
    folder = Path(settings.ARTIFACT_CACHE_DIR) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{sha256[:2]}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield


def local_cache_put(path: Path, *, sha256: str, name: str) -> None:
    """Seed this host's cache with a local file about to be stored as `name` (the web just received it):
    a check at submit on this host then reads it without fetching it back. No-op on local-disk storage."""
    if isinstance(default_storage, FileSystemStorage):
        return
    cached = _cache_root() / sha256[:2] / f"{sha256}{PurePosixPath(name).suffix}"
    if cached.is_file():
        os.utime(cached)
        return
    cached.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=cached.parent, prefix=f".{cached.name}.", suffix=".partial")
    os.close(descriptor)
    try:
        shutil.copyfile(path, partial)
        os.replace(partial, cached)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    cache_evict(keep=cached)


def _cache_root() -> Path:
    return Path(settings.ARTIFACT_CACHE_DIR) / "sha256"


def cache_evict(*, keep: Path | None = None, max_bytes: int | None = None) -> int:
    """Remove least recently used cached copies until the cache holds at most `max_bytes`; returns bytes freed.

    Copies used in the last CACHE_MIN_IDLE_SECONDS stay (a job may be opening them), so the
    cache can stay above its bound for that long when every copy is busy.
    """
    root = _cache_root()
    if not root.is_dir():
        return 0
    limit = settings.ARTIFACT_CACHE_MAX_BYTES if max_bytes is None else max_bytes
    now = time.time()
    entries = []
    freed = 0
    for folder in root.iterdir():
        for path in folder.iterdir() if folder.is_dir() else ():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.name.endswith(".partial"):
                if stat.st_mtime < now - STALE_PARTIAL_SECONDS:
                    path.unlink(missing_ok=True)
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _mtime, size, _path in entries)
    for mtime, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= limit:
            break
        if path == keep or mtime > now - CACHE_MIN_IDLE_SECONDS:
            continue
        path.unlink(missing_ok=True)
        total -= size
        freed += size
    if freed:
        logger.info("artifact_storage.cache_evicted", extra={"freed_bytes": freed, "cached_bytes": total})
    return freed


@contextmanager
def local_workdir(prefix: str) -> Iterator[Path]:
    """A private folder on this host's disk for files being written before they are stored; removed on exit."""
    base = Path(settings.ARTIFACT_CACHE_DIR) / "work"
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=base, prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class StoredFileResponse(FileResponse):
    """A stored file sent as it is read from storage, in 256 KiB blocks (FileResponse's 4 KiB costs a
    read call per 4 KiB, many small reads on S3 streams)."""

    block_size = 256 * 1024


def stored_file_response(
    name: str, *, size: int, content_type: str, filename: str = "", as_attachment: bool = False
) -> FileResponse:
    """Stream a stored file to the client through this process (never whole in memory, never a redirect)."""
    response = StoredFileResponse(
        default_storage.open(name, "rb"), as_attachment=as_attachment, filename=filename, content_type=content_type
    )
    # From the row: a stream cannot tell its length (FileResponse would guess from a local path by the same name).
    response.headers["Content-Length"] = str(size)
    return response


def storage_check_roundtrip() -> str:
    """Write, read back and delete a small probe object; returns the storage's description, raises on failure."""
    import socket
    import uuid

    name = f"preflight/{socket.gethostname()}-{uuid.uuid4().hex}.probe"
    payload = uuid.uuid4().bytes
    stored = store_bytes(name, payload)
    try:
        with default_storage.open(stored, "rb") as source:
            if source.read() != payload:
                raise OSError("the probe read back differs from what was written")
    finally:
        default_storage.delete(stored)
    return stored
