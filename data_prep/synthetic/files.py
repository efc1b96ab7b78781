"""File writers with deterministic bytes: the same data gives the same file on every run."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


def write_text(path: Path, text: str) -> None:
    """UTF-8 text with Unix line ends; the folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """One JSON document and a newline."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    """CSV with Unix line ends, the header first when there is one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerows(([header] if header else []) + rows)


def write_npy(path: Path, arr: np.ndarray) -> None:
    """One array in .npy format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def write_npz(path: Path, arr: np.ndarray) -> None:
    """Like np.savez(path, features=arr) but with a fixed zip timestamp (np.savez uses now)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    info = zipfile.ZipInfo("features.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = 0o644 << 16
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(info, buf.getvalue())
