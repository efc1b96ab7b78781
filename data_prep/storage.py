"""Where shards go: a local folder or `s3://bucket/prefix`, through fsspec (s3fs for S3).

Credentials come from the standard AWS chain (environment, ~/.aws, instance role); an
S3-compatible store is reached with `endpoint_url` or the `AWS_ENDPOINT_URL` variable.
Nothing here logs credentials.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from data_prep.errors import DataPrepError


@dataclass
class Location:
    """An output folder: the fsspec filesystem and the root path inside it."""

    fs: fsspec.AbstractFileSystem
    root: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open(self.path(name), "rb") as f:
            return f.read()

    def listdir(self) -> list[str]:
        """File names directly under the root (empty when the root does not exist yet)."""
        if not self.fs.exists(self.root):
            return []
        self.fs.invalidate_cache(self.root)
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a small file atomically: to a temporary name, then renamed. The temporary name is
        unique, so writers of the same file (array tasks writing one manifest) never share it."""
        tmp = self.path(f"{name}.{uuid.uuid4().hex[:12]}.tmp")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.commit(tmp, self.path(name))

    def commit(self, tmp_path: str, final_path: str) -> None:
        """Rename a completely written temporary file to its final name."""
        if self.is_local:
            os.replace(tmp_path, final_path)
        else:  # S3: server-side copy then delete; the final key appears only when complete
            self.fs.mv(tmp_path, final_path)

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.rm(self.path(name))


def s3_options(endpoint_url: str | None = None) -> dict:
    """s3fs options: a custom endpoint from the argument or AWS_ENDPOINT_URL, else AWS."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    opts: dict = {}
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def open_location(url: str, endpoint_url: str | None = None) -> Location:
    """A Location for a local path or an s3:// URL; local folders are created."""
    if url.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_options(endpoint_url))
        root = url[len("s3://") :].rstrip("/")
        bucket = root.split("/")[0]
        try:
            fs.ls(bucket)
        except (FileNotFoundError, PermissionError, OSError) as e:
            raise DataPrepError(f"s3://{bucket}: bucket not found or not accessible ({type(e).__name__})") from None
        return Location(fs=fs, root=root, url=url.rstrip("/"))
    root = os.path.abspath(url)
    os.makedirs(root, exist_ok=True)
    return Location(fs=fsspec.filesystem("file"), root=root, url=root)
