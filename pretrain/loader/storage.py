"""Shard storage: what a shard source holds (local or s3://) and the reads of its files.

`resolve_shards` turns folders, s3:// prefixes, brace patterns and shard paths into a `Corpus`
(shard URLs with the sample counts of their sizes.json); `read_manifest` is the one reader of
the manifest.json data_prep writes beside the shards. Remote listings and reads are retried
after transient errors (pretrain/s3retry.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import webdataset as wds

from data_prep import schema
from data_prep.storage import s3_options
from pretrain.s3retry import RetryPolicy, retry_call


@dataclass(frozen=True)
class Corpus:
    """The shards to read, with the sample counts declared in their sizes.json."""

    urls: tuple[str, ...]
    sizes: tuple[int, ...]
    endpoint: str | None = None  # S3 endpoint (None: AWS_ENDPOINT_URL or AWS)
    feature_dim: int | None = None  # from manifest.json, when there is one
    toi_df: str | None = None  # the folder's toi_df.json, when there is one
    retry: RetryPolicy = field(default_factory=RetryPolicy, compare=False)  # remote reads (not in the digest)

    def digest(self) -> str:
        """What the plan depends on: shard names and sizes, not where they are (local or S3)."""
        names = [posixpath.basename(u) for u in self.urls]
        return hashlib.sha1(json.dumps([names, self.sizes]).encode()).hexdigest()[:16]


def storage_options(url: str, endpoint: str | None = None) -> dict:
    """fsspec options for a URL: the S3 endpoint for s3://, nothing for local paths."""
    return s3_options(endpoint) if url.startswith("s3://") else {}


def _fs(url: str, endpoint: str | None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **storage_options(url, endpoint))


def join_url(folder: str, name: str) -> str:
    """`name` in `folder`, a local path or a URL."""
    return posixpath.join(folder.rstrip("/"), name) if "://" in folder else os.path.join(folder, name)


def _normalise(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def source_folder(src: str) -> str | None:
    """The folder of a shard source: the folder itself, or the one holding a shard path or brace
    pattern (local paths made absolute); None for a "::" list of shards."""
    if "::" in src:
        return None
    src = _normalise(src).rstrip("/")
    return posixpath.dirname(src) if src.endswith(".tar") or "{" in src else src


def exists(url: str, endpoint: str | None, retry: RetryPolicy | None = None) -> bool:
    """Whether a file or folder exists; a remote listing is tried again after transient errors."""
    fs, path = _fs(url, endpoint)
    return retry_call(lambda: fs.exists(path), url, retry, "listing")


def read_bytes(url: str, endpoint: str | None, retry: RetryPolicy | None = None, what: str = "read") -> bytes:
    """A whole file; remote ones opened and read again after transient errors (`retry`)."""

    def read() -> bytes:
        fs, path = _fs(url, endpoint)
        with fs.open(path, "rb") as f:
            return f.read()

    return retry_call(read, url, retry, what)


def read_json(url: str, endpoint: str | None, retry: RetryPolicy | None = None) -> Any:
    """A whole JSON file (`read_bytes`, so remote reads are retried)."""
    return json.loads(read_bytes(url, endpoint, retry, "read"))


def read_manifest(folder: str, endpoint: str | None = None, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """The manifest.json that data_prep writes in a shard folder (local or s3://): its counts,
    feature_spec (the frame feature dim: ["feature_spec"]["dim"]), ...

    Raises FileNotFoundError naming it when the folder has none. Remote listings and reads are
    tried again after transient errors (`retry`, default RetryPolicy()).
    """
    url = join_url(folder, schema.MANIFEST_FILE)
    if not exists(url, endpoint, retry):
        raise FileNotFoundError(f"no {url} (data_prep writes it when it finishes a conversion)")
    return read_json(url, endpoint, retry)


def _folder_shards(
    folder: str, endpoint: str | None, retry: RetryPolicy | None = None
) -> tuple[list[str], list[int], dict[str, Any]]:
    """Shard URLs and declared sizes of a folder from its sizes.json; the folder's extras."""
    fs, path = _fs(folder, endpoint)
    if not retry_call(lambda: fs.isdir(path), folder, retry, "listing"):
        raise FileNotFoundError(f"shard folder not found: {folder}")
    listed = retry_call(lambda: fs.ls(path, detail=False), folder, retry, "listing")
    names = {posixpath.basename(p.rstrip("/")) for p in listed}
    if schema.SIZES_FILE not in names:
        raise FileNotFoundError(f"{folder}: no {schema.SIZES_FILE} (written when data_prep finishes a conversion)")
    sizes = read_json(join_url(folder, schema.SIZES_FILE), endpoint, retry)
    missing = sorted(set(sizes) - names)
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} shard(s) of sizes.json missing, e.g. {missing[0]}")
    extras: dict[str, Any] = {}
    if schema.MANIFEST_FILE in names:
        extras["feature_dim"] = _manifest_dim(folder, endpoint, retry)
    if schema.TOI_DF_FILE in names:
        extras["toi_df"] = join_url(folder, schema.TOI_DF_FILE)
    names_sorted = sorted(sizes)
    return [join_url(folder, n) for n in names_sorted], [int(sizes[n]) for n in names_sorted], extras


def _manifest_dim(folder: str, endpoint: str | None, retry: RetryPolicy | None = None) -> int | None:
    """The feature dim of the manifest.json in `folder`; None without one."""
    try:
        manifest = read_manifest(folder, endpoint, retry)
    except FileNotFoundError:
        return None
    return (manifest.get("feature_spec") or {}).get("dim")


def _count_samples(url: str, endpoint: str | None) -> int:
    """Samples in a shard without a sizes.json beside it: its distinct keys (reads the tar headers)."""
    fs, path = _fs(url, endpoint)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        return len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isreg()})


def _file_shards(urls: list[str], endpoint: str | None, retry: RetryPolicy | None = None) -> list[int]:
    """Declared sizes of shards named one by one: from the sizes.json beside them, else counted."""
    sizes, tables = [], {}
    for url in urls:
        fs, path = _fs(url, endpoint)
        if not retry_call(lambda: fs.isfile(path), url, retry, "listing"):  # noqa: B023 - called at once
            raise FileNotFoundError(f"shard not found: {url}")
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        if folder not in tables:
            sizes_url = join_url(folder, schema.SIZES_FILE)
            tables[folder] = read_json(sizes_url, endpoint, retry) if exists(sizes_url, endpoint, retry) else {}
        sizes.append(int(tables[folder][name]) if name in tables[folder] else _count_samples(url, endpoint))
    return sizes


def resolve_shards(
    sources: Sequence[str] | str, endpoint: str | None = None, retry: RetryPolicy | None = None
) -> Corpus:
    """The Corpus of one or more sources (folders, s3:// prefixes, brace patterns, shard paths).

    Every shard must exist: a missing one raises FileNotFoundError naming it, before any reading.
    Remote listings and reads are retried after transient errors (`retry`, default RetryPolicy()).
    """
    retry = retry or RetryPolicy()
    sources = [s for s in ([sources] if isinstance(sources, str) else sources) if s]
    if not sources:
        raise ValueError("no shard source given (loader.train is empty)")
    urls: list[str] = []
    sizes: list[int] = []
    extras: dict[str, Any] = {}
    for src in sources:
        if "{" in src or "::" in src or src.endswith(".tar"):  # webdataset's brace and "::" list syntax
            files = [_normalise(u) for u in wds.shardlists.expand_urls(src)]
            urls += files
            sizes += _file_shards(files, endpoint, retry)
            folders = sorted({u.rsplit("/", 1)[0] for u in files if "/" in u})  # their manifests' feature dims
            dims = sorted({d for f in folders if (d := _manifest_dim(f, endpoint, retry)) is not None})
            if len(dims) > 1:
                raise ValueError(f"{src}: shards of feature dims {dims} in one source")
            found = {"feature_dim": dims[0]} if dims else {}
        else:
            folder_urls, folder_sizes, found = _folder_shards(_normalise(src).rstrip("/"), endpoint, retry)
            urls, sizes = urls + folder_urls, sizes + folder_sizes
        for key, value in found.items():
            if key == "feature_dim" and extras.get(key, value) != value:
                raise ValueError(f"{src}: feature dim {value} differs from the other sources' {extras[key]}")
            extras.setdefault(key, value)
    if len(set(urls)) != len(urls):
        raise ValueError("a shard is listed twice in loader.train")
    return Corpus(tuple(urls), tuple(sizes), endpoint, extras.get("feature_dim"), extras.get("toi_df"), retry)
