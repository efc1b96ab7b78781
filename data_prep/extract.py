"""Raw video files -> per-video frame features in the public layouts the converters read.

    python -m data_prep.extract --videos DIR|LIST --out DIR --layout howto100m \
        --backbone resnet152,r2plus1d_18 --weights resnet152=weights/resnet-152,r2plus1d_18=weights/r2plus1d_18.pth

Layouts (data_prep/features.py reads both unchanged):
- `howto100m`: `<out>/2d/<id>.npy` from the 2D backbone at 1 feature/s and `<out>/3d/<id>.npy`
  from the 3D backbone at 1.5 features/s (one 16-frame clip at 24 fps per 2/3 s window).
- `hero`: `<out>/<id>.npz` with key `features`: every backbone at one feature per `--interval`
  seconds (default 1.5 s, HERO's grid), concatenated along D (e.g. ResNet-152 + R(2+1)D, or the
  CLIP image tower for VALUE-style features).

Sampling rule: a video of duration d (container metadata) has n = floor(d / I) windows of I
seconds; window k is [k*I, (k+1)*I). A 2D backbone sees the frame shown at the window centre
c = (k + 0.5) * I; a 3D backbone sees F frames at c + (j - (F - 1) / 2) / fps, j < F. "The frame
shown at t" is the last decoded frame with pts <= t (the first frame for t before it), which is
right for variable frame rates. A video with n == 0 is rejected (`too_short`).

Every input is accounted for: a video whose feature files exist is skipped (files are written
to a `.tmp` name and renamed when complete); a bad one (unreadable, no video stream, zero
duration, decode error part-way, truncated, too short) is a line in `<out>/_extract/rejects.*.jsonl`
and leaves no feature file. The provenance manifest `<out>/extract_manifest.json` names each
backbone, its weights file and sha256, sampling, preprocessing and the library versions;
`data_prep.howto100m` copies it into the shards' manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import platform
import posixpath
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep import cli
from data_prep.errors import DataPrepError, Rejected
from data_prep.features import EXTRACT_MANIFEST
from data_prep.storage import Location, open_location, s3_options

log = logging.getLogger("data_prep.extract")

MANIFEST_FILE = EXTRACT_MANIFEST
STATE_DIR = "_extract"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- backbones


RESIZES = ("torch", "ffmpeg")  # --resize: who resizes the frames (docs/feature_extraction.md "Resize")
SWS_FILTER = {"bilinear": "BILINEAR", "bicubic": "BICUBIC"}  # the backbone's filter in FFmpeg's swscale


@dataclass(frozen=True)
class Preprocess:
    """How a backbone was trained to see a frame: resize, centre crop, normalise."""

    resize: int | tuple[int, int]  # int: the short side; (h, w): both sides
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # torch interpolate mode, antialiased like torchvision's Resize

    def size(self, h: int, w: int) -> tuple[int, int]:
        """The (h, w) a frame of h x w is resized to before the centre crop."""
        if isinstance(self.resize, int):
            scale = self.resize / min(h, w)
            return max(self.resize, round(h * scale)), max(self.resize, round(w * scale))
        return self.resize

    def __call__(self, frames: np.ndarray, device: torch.device | None = None, resized: bool = False) -> torch.Tensor:
        """[N, H, W, 3] uint8 RGB -> [N, 3, crop, crop] float32 on `device` (default: the CPU), normalised.
        The uint8 frames go to the device first, so on a GPU the resize runs there. `resized`: the frames
        are at `size` already (FFmpeg resized them while converting to RGB, `--resize ffmpeg`): crop only."""
        device = device or torch.device("cpu")
        x = torch.from_numpy(frames)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        x = x.to(device).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
        size = self.size(*x.shape[-2:])
        if not resized:
            x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False)
        elif tuple(x.shape[-2:]) != size:
            raise ValueError(f"frames of {tuple(x.shape[-2:])} given as resized, expected {size}")
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop].clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    def describe(self, resize: str = "torch") -> dict[str, Any]:
        by = f"torch F.interpolate {self.interpolation}, antialias, on float RGB"
        if resize == "ffmpeg":
            by = f"FFmpeg swscale {SWS_FILTER[self.interpolation]}, in the YUV -> RGB conversion (--resize ffmpeg)"
        return {
            "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
            "resize_rule": "short side" if isinstance(self.resize, int) else "(h, w)",
            "interpolation": by,
            "crop": f"centre {self.crop}x{self.crop}",
            "mean": list(self.mean),
            "std": list(self.std),
            "input_range": "[0, 1] RGB before normalisation",
        }


@dataclass(frozen=True)
class Backbone:
    """One feature extractor: its sampling (frames per sample, their fps), preprocessing, model."""

    name: str
    kind: str  # "2d" or "3d": the howto100m layout's folder and its rate
    frames: int  # frames per sample (1 for a 2D model)
    clip_fps: float  # fps of a 3D clip's frames (unused for 2D)
    preprocess: Preprocess
    expects: str  # the weights file or folder it loads, for the error message
    source: str  # which package the architecture comes from

    def build(self, weights: str | None, tiny: bool) -> nn.Module:
        """The model in eval mode, from `weights` (a local path) or random (weights None)."""
        return _BUILDERS[self.name](weights, tiny).eval()


BACKBONES = {
    "resnet152": Backbone(
        "resnet152", "2d", 1, 0.0, Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD),
        "a Hugging Face folder (config.json + model.safetensors) of microsoft/resnet-152",
        "transformers ResNetModel (ImageNet ResNet-152, pooled 2048-d)",
    ),
    "r2plus1d_18": Backbone(
        "r2plus1d_18", "3d", 16, 24.0, Preprocess((128, 171), 112, KINETICS_MEAN, KINETICS_STD),
        "torchvision's Kinetics-400 state dict r2plus1d_18-91a641e6.pth (a .pth or .safetensors)",
        "R(2+1)D-18 (torchvision's architecture and parameter names; data_prep/extract.py), pooled 512-d",
    ),
    "clip_vit_b32": Backbone(
        "clip_vit_b32", "2d", 1, 0.0, Preprocess(224, 224, CLIP_MEAN, CLIP_STD, "bicubic"),
        "a Hugging Face folder (config.json + model.safetensors) of openai/clip-vit-base-patch32",
        "transformers CLIPVisionModelWithProjection (image_embeds, 512-d)",
    ),
}  # fmt: skip


class _Pooled(nn.Module):
    """A transformers vision model -> [B, D] features."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self.model(pixel_values=x), self.output)
        return out.flatten(1)


def _hf_model(cls: Any, config: Any, weights: str | None) -> nn.Module:
    if weights is None:
        torch.manual_seed(0)
        return cls(config)
    return cls.from_pretrained(weights, local_files_only=True)


def _build_resnet152(weights: str | None, tiny: bool) -> nn.Module:
    from transformers import ResNetConfig, ResNetModel

    sizes = ([1, 1, 1, 1], [8, 16, 32, 64], 8) if tiny else ([3, 8, 36, 3], [256, 512, 1024, 2048], 64)
    config = ResNetConfig(depths=sizes[0], hidden_sizes=sizes[1], embedding_size=sizes[2], layer_type="bottleneck")
    return _Pooled(_hf_model(ResNetModel, config, weights), "pooler_output")


def _build_clip(weights: str | None, tiny: bool) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if tiny:
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  projection_dim=16, image_size=224, patch_size=32)  # fmt: skip
    else:
        config = CLIPVisionConfig(image_size=224, patch_size=32, projection_dim=512)  # ViT-B/32
    return _Pooled(_hf_model(CLIPVisionModelWithProjection, config, weights), "image_embeds")


class _Conv2Plus1D(nn.Sequential):
    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = (cin * cout * 27) // (cin * 9 + 3 * cout)
        self.conv1 = nn.Sequential(_Conv2Plus1D(cin, cout, mid, stride), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(_Conv2Plus1D(cout, cout, mid), nn.BatchNorm3d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + res)


class R2Plus1D18(nn.Module):
    """R(2+1)D-18 (Tran et al. 2018) with torchvision's parameter names, so its Kinetics-400
    state dict loads as is. [B, 3, T, H, W] -> [B, 512] (the pooled features, before fc)."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), stem_mid: int = 45, classes: int = 400):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_Block(cin, w, stride), _Block(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, classes)  # unused for features; kept so the state dict loads strictly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def _build_r2plus1d(weights: str | None, tiny: bool) -> nn.Module:
    torch.manual_seed(0)
    model = R2Plus1D18((8, 16, 32, 64), 6) if tiny else R2Plus1D18()
    if weights is not None:
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model


_BUILDERS = {"resnet152": _build_resnet152, "r2plus1d_18": _build_r2plus1d, "clip_vit_b32": _build_clip}


def weights_digest(path: str) -> dict[str, Any]:
    """sha256 of a weights file, or of a folder's files (name + content, sorted)."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
    )  # fmt: skip
    for name in files:
        if os.path.isdir(path):
            h.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return {"path": os.path.abspath(path), "sha256": h.hexdigest(), "files": len(files)}


# ----------------------------------------------------------------------------- sampling + decoding


@dataclass(frozen=True)
class Plan:
    """One backbone's sampling in this run: a window of `interval` seconds per feature."""

    backbone: Backbone
    interval: float

    def times(self, k: int) -> list[float]:
        """The frame times (s) of sample k."""
        c = (k + 0.5) * self.interval
        f = self.backbone.frames
        return [c + (j - (f - 1) / 2) / self.backbone.clip_fps for j in range(f)] if f > 1 else [c]

    def count(self, duration: float) -> int:
        return math.floor(duration / self.interval + 1e-6)


@dataclass
class Sample:
    plan: int  # index into the plans
    index: int  # k
    frames: list[np.ndarray]  # F x [H, W, 3] uint8
    pts: list[float]  # the chosen frames' times (s)


def probe(path: str) -> tuple[Any, Any, float]:
    """Open a video: (container, its video stream, duration in s), or Rejected."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise Rejected("unreadable", f"{type(e).__name__}: {e}") from None
    if not container.streams.video:
        container.close()
        raise Rejected("no_video_stream", f"streams: {[s.type for s in container.streams]}")
    stream = container.streams.video[0]
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    if not duration and container.duration is not None:
        duration = container.duration / 1e6
    if not duration or duration <= 0:
        container.close()
        raise Rejected("zero_duration", "neither the stream nor the container has a positive duration")
    return container, stream, duration


def frame_array(frame: Any, pre: Preprocess, resize: str, reformatter: Any = None) -> np.ndarray:
    """A decoded frame as [H, W, 3] uint8 RGB. "torch": full size (the backbone's resize comes later,
    in Preprocess); "ffmpeg": at `pre.size`, swscale resizing with the backbone's filter in the same
    pass as the YUV -> RGB conversion (a fraction of the work of converting the full frame)."""
    if resize == "torch":
        return frame.to_ndarray(format="rgb24")
    from av.video.reformatter import Interpolation, VideoReformatter

    h, w = pre.size(frame.height, frame.width)
    reformatter = reformatter or VideoReformatter()
    out = reformatter.reformat(frame, width=w, height=h, format="rgb24",
                               interpolation=Interpolation[SWS_FILTER[pre.interpolation]])  # fmt: skip
    return out.to_ndarray()


def iter_samples(path: str, plans: list[Plan], resize: str = "torch") -> Iterator[Sample | int]:
    """Decode `path` once, front to back, yielding each plan's samples as soon as their frames are
    decoded (in time order per plan), then the number of decoded frames (an int, last). Only the frames
    a sample takes are converted to RGB (`frame_array`, per `resize`), each once per size it is needed at.
    Rejected: see probe; `decode_error` part-way; `truncated` (frames end well before the duration)."""
    import av
    from av.video.reformatter import VideoReformatter

    if resize not in RESIZES:
        raise ValueError(f"resize={resize!r}, not one of {RESIZES}")
    container, stream, duration = probe(path)
    stream.thread_type = "AUTO"
    counts = [p.count(duration) for p in plans]
    if max(counts) == 0:
        container.close()
        raise Rejected("too_short", f"{duration:.3f} s < one window of {min(p.interval for p in plans):.3f} s")
    # pending times, in order, over all plans: (t, plan, k, j)
    wanted = sorted(
        (t, p, k, j) for p, plan in enumerate(plans) for k in range(counts[p]) for j, t in enumerate(plan.times(k))
    )
    open_samples: dict[tuple[int, int], Sample] = {}
    nxt, decoded, prev, prev_t, last_t = 0, 0, None, None, -1.0
    reformatters = [VideoReformatter() for _ in plans]  # one per plan: swscale's context is reused

    def take(frame: Any, t_frame: float) -> Iterator[Sample]:
        """Give `frame` (shown at t_frame) to every wanted time before the next frame."""
        nonlocal nxt
        imgs: dict[int | None, np.ndarray] = {}  # "torch": one full-size array; "ffmpeg": one per plan
        while nxt < len(wanted) and (next_t is None or wanted[nxt][0] < next_t):
            _, p, k, j = wanted[nxt]
            key = None if resize == "torch" else p
            if key not in imgs:
                imgs[key] = frame_array(frame, plans[p].backbone.preprocess, resize, reformatters[p])  # (H, W, 3)
            s = open_samples.setdefault((p, k), Sample(p, k, [], []))
            s.frames.append(imgs[key])
            s.pts.append(t_frame)
            if j == plans[p].backbone.frames - 1:
                yield open_samples.pop((p, k))
            nxt += 1

    try:
        with container:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if t < last_t:  # out of order: keep the stream's display order as decoded
                    continue
                decoded += 1
                last_t = t
                if prev is not None:
                    next_t = t
                    yield from take(prev, prev_t)
                prev, prev_t = frame, t
                if nxt == len(wanted):
                    break
    except av.error.FFmpegError as e:
        raise Rejected("decode_error", f"after {decoded} frames ({last_t:.2f} s): {e}") from None
    if prev is None:
        raise Rejected("decode_error", "no frame decoded")
    tolerance = max(1.0, 0.05 * duration)
    if nxt < len(wanted) and last_t < duration - tolerance:
        raise Rejected("truncated", f"frames end at {last_t:.2f} s of a {duration:.2f} s video")
    next_t = None
    yield from take(prev, prev_t)
    yield decoded


# ----------------------------------------------------------------------------- the stage


@dataclass
class Extractor:
    """Backbones loaded once; `video` turns one file into [n, D] per plan."""

    plans: list[Plan]
    models: list[nn.Module]
    device: torch.device
    batch_size: int = 32
    resize: str = "torch"  # RESIZES: torch resizes on the model's device, ffmpeg while converting to RGB
    stats: dict[str, float] = field(default_factory=lambda: {"frames": 0, "videos": 0})

    def _run(self, p: int, samples: list[Sample]) -> np.ndarray:
        plan = self.plans[p]
        frames = np.stack([f for s in samples for f in s.frames])  # (B*F, H, W, 3) uint8
        # uint8 to the device, resized (unless FFmpeg did), cropped and normalised there: (B*F, 3, S, S)
        x = plan.backbone.preprocess(frames, self.device, resized=self.resize == "ffmpeg")
        if plan.backbone.frames > 1:
            b, f = len(samples), plan.backbone.frames
            x = x.view(b, f, *x.shape[1:]).transpose(1, 2)  # (B, 3, F, S, S)
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.models[p](x).float().cpu().numpy()  # (B, D)

    def video(self, path: str) -> list[np.ndarray]:
        """Per plan, [n, D] float32 features of one video; Rejected as in iter_samples."""
        batches: list[list[Sample]] = [[] for _ in self.plans]
        outs: list[list[np.ndarray]] = [[] for _ in self.plans]
        decoded = 0
        for s in prefetched(iter_samples(path, self.plans, self.resize), 2 * self.batch_size):
            if isinstance(s, int):
                decoded = s
                continue
            batches[s.plan].append(s)
            if len(batches[s.plan]) == self.batch_size:
                outs[s.plan].append(self._run(s.plan, batches[s.plan]))
                batches[s.plan] = []
        for p, rest in enumerate(batches):
            if rest:
                outs[p].append(self._run(p, rest))
        self.stats["frames"] += decoded
        feats = [np.concatenate(o).astype(np.float32) if o else None for o in outs]
        if any(f is None for f in feats):
            short = [self.plans[p].backbone.name for p, f in enumerate(feats) if f is None]
            raise Rejected("too_short", f"no full window for {short}")
        return feats


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """`items` produced in a background thread, at most `depth` ahead: decoding (FFmpeg releases
    the GIL) overlaps the model's forward passes. An exception in the producer is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        """Wait for room unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(end)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # the generator's `with container` closes the file

    worker = threading.Thread(target=produce, name="extract-decode", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def plans_for(layout: str, backbones: list[Backbone], interval: float) -> list[Plan]:
    if layout == "howto100m":
        kinds = sorted(b.kind for b in backbones)
        if kinds != ["2d", "3d"]:
            raise DataPrepError(
                f"--layout howto100m needs one 2d and one 3d backbone, got {[b.name for b in backbones]}"
            )
        rates = {"2d": 1.0, "3d": 1.0 / 1.5}
        return [Plan(b, rates[b.kind]) for b in backbones]
    return [Plan(b, interval) for b in backbones]


def output_names(layout: str, plans: list[Plan], video_id: str) -> list[str]:
    """The video's feature files, relative to the output folder."""
    if layout == "howto100m":
        return [f"{p.backbone.kind}/{video_id}.npy" for p in plans]
    return [f"{video_id}.npz"]


def write_features(loc: Location, names: list[str], layout: str, feats: list[np.ndarray]) -> None:
    """Every file to `<name>.tmp`, then each renamed (on S3: copied, then the temporary deleted);
    the last rename marks the video complete."""
    if layout == "hero":
        n = min(len(f) for f in feats)
        feats = [np.concatenate([f[:n] for f in feats], axis=1)]  # (n, sum D)
    tmps = []
    for name, f in zip(names, feats):
        buf = io.BytesIO()
        if layout == "hero":
            np.savez(buf, features=f)
        else:
            np.save(buf, f)
        tmp = loc.path(name + ".tmp")
        if loc.is_local:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with loc.fs.open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        tmps.append(tmp)
    for tmp, name in zip(tmps, names):
        loc.commit(tmp, loc.path(name))


def list_videos(src: str, endpoint: str | None = None) -> list[tuple[str, str]]:
    """(video_id, path) sorted by id: the video files of a folder (local or s3://), or the paths
    (local or s3://) in a list file."""
    if src.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_options(endpoint))
        try:
            found = fs.ls(src[len("s3://") :].rstrip("/"), detail=False)
        except (FileNotFoundError, PermissionError, OSError) as e:
            raise DataPrepError(f"{src}: not found or not accessible ({type(e).__name__})") from None
        paths = ["s3://" + p for p in found if p.lower().endswith(VIDEO_EXTENSIONS)]
    elif os.path.isdir(src):
        paths = [os.path.join(src, f) for f in os.listdir(src) if f.lower().endswith(VIDEO_EXTENSIONS)]
    elif os.path.isfile(src):
        with open(src, encoding="utf-8") as f:
            paths = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    else:
        raise DataPrepError(f"{src}: no such folder or list file")
    videos = {}
    for path in paths:
        vid = os.path.splitext(os.path.basename(path))[0]
        if vid in videos:
            raise DataPrepError(f"{src}: two files for video id {vid!r}: {videos[vid]} and {path}")
        videos[vid] = path
    return sorted(videos.items())


def fetch(path: str, scratch: str, endpoint: str | None) -> str:
    """A local path for the video: itself, or an s3:// object copied into `scratch` (deleted after the video);
    an object that cannot be fetched is Rejected as unreadable."""
    if not path.startswith("s3://"):
        return path
    local = os.path.join(scratch, posixpath.basename(path))
    try:
        fsspec.filesystem("s3", **s3_options(endpoint)).get(path[len("s3://") :], local)
    except (FileNotFoundError, PermissionError, OSError) as e:
        raise Rejected("unreadable", f"{path}: {type(e).__name__}: {e}") from None
    return local


def shard_of(videos: list[tuple[str, str]], num_shards: int, index: int) -> list[tuple[str, str]]:
    """Every num_shards-th video from `index`: deterministic, balanced, disjoint."""
    if not 0 <= index < num_shards:
        raise DataPrepError(f"--shard-index {index} is outside 0..{num_shards - 1}")
    return videos[index::num_shards]


def provenance(
    plans: list[Plan], weights: dict[str, str | None], layout: str, tiny: bool, resize: str = "torch"
) -> dict[str, Any]:
    import av
    import transformers

    return {
        "created_by": "python -m data_prep.extract",
        "layout": layout,
        "sampling_rule": "n = floor(duration / interval); window k's centre (k + 0.5) * interval; "
        "3D: F frames at centre + (j - (F - 1) / 2) / fps; the frame shown at t (last pts <= t)",
        "backbones": [
            {
                "name": p.backbone.name,
                "architecture": p.backbone.source + (" (tiny test size)" if tiny else ""),
                "weights": weights_digest(weights[p.backbone.name]) if weights[p.backbone.name] else "random (test)",
                "interval_s": p.interval,
                "features_per_s": 1.0 / p.interval,
                "frames_per_sample": p.backbone.frames,
                "clip_fps": p.backbone.clip_fps or None,
                "output": (f"{p.backbone.kind}/<id>.npy" if layout == "howto100m" else "<id>.npz key features"),
                "preprocessing": p.backbone.preprocess.describe(resize),
            }
            for p in plans
        ],
        "decoder": {
            "name": "PyAV",
            "av": av.__version__,
            "ffmpeg": _ffmpeg_version(),
            "threading": "AUTO",
            "resize": resize,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }


def _ffmpeg_version() -> str:
    import av

    try:
        return ".".join(str(v) for v in av.library_versions["libavcodec"])
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def parse_weights(arg: str | None, names: list[str]) -> dict[str, str]:
    """`PATH` (one backbone) or `name=PATH,name=PATH`."""
    if not arg:
        return {}
    if "=" not in arg:
        if len(names) != 1:
            raise DataPrepError("--weights PATH fits one backbone; use name=PATH,name=PATH for several")
        return {names[0]: arg}
    out = {}
    for part in arg.split(","):
        name, _, path = part.partition("=")
        if name not in names:
            raise DataPrepError(f"--weights names {name!r}, not one of the backbones {names}")
        out[name] = path
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--videos", required=True, help="folder (or s3://bucket/prefix) of video files, or a text file "
                   "with one path (local or s3://) per line")  # fmt: skip
    p.add_argument("--out", required=True, help="feature folder, or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--layout", default="howto100m", choices=("howto100m", "hero"))
    p.add_argument("--backbone", default="resnet152,r2plus1d_18", help=f"comma-separated, of {sorted(BACKBONES)}")
    p.add_argument("--weights", default=None, help="PATH, or name=PATH,name=PATH (local files only)")
    p.add_argument("--random-weights", action="store_true", help="tests only: random weights, no file")
    p.add_argument("--tiny", action="store_true", help="tests only (with --random-weights): small widths")
    p.add_argument("--interval", type=float, default=1.5, help="hero layout: seconds per feature")
    p.add_argument("--batch-size", type=int, default=32, help="samples per forward pass")
    p.add_argument("--resize", default="torch", choices=RESIZES, help="torch (default): the backbone's trained "
                   "resize (antialiased torch interpolate, on the GPU when there is one); ffmpeg: swscale "
                   "resizes while converting to RGB, faster on the CPU, features close but not equal "
                   "(docs/feature_extraction.md: Resize)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-index", type=int, default=None, help="default: SLURM_ARRAY_TASK_ID, else 0")
    args = p.parse_args(argv)
    if args.tiny and not args.random_weights:
        p.error("--tiny is for tests and needs --random-weights")
    if args.interval <= 0 or args.batch_size < 1 or args.num_shards < 1:
        p.error("--interval, --batch-size and --num-shards must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = [n.strip() for n in args.backbone.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKBONES]
    if unknown or not names:
        raise DataPrepError(f"unknown backbone(s) {unknown}; known: {sorted(BACKBONES)}")
    backbones = [BACKBONES[n] for n in names]
    weights: dict[str, str | None] = {n: None for n in names}
    if not args.random_weights:
        given = parse_weights(args.weights, names)
        for b in backbones:
            path = given.get(b.name)
            if not path or not os.path.exists(path):
                where = f"at {path}" if path else "(no --weights for it)"
                raise DataPrepError(
                    f"{b.name}: weights not found {where}; it expects {b.expects}. Put it on local disk and pass "
                    f"--weights {b.name}=PATH (nothing is downloaded; --random-weights is for tests only)"
                )
            weights[b.name] = path
    plans = plans_for(args.layout, backbones, args.interval)
    index = args.shard_index if args.shard_index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    videos = shard_of(list_videos(args.videos, args.s3_endpoint), args.num_shards, index)
    loc = open_location(args.out, args.s3_endpoint)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    torch.manual_seed(0)
    models = [p.backbone.build(weights[p.backbone.name], args.tiny).to(device) for p in plans]
    ext = Extractor(plans, models, device, args.batch_size, args.resize)

    prov = provenance(plans, weights, args.layout, args.tiny, args.resize)
    loc.write_bytes(MANIFEST_FILE, json.dumps(prov, indent=1, sort_keys=True).encode())
    if loc.is_local:
        os.makedirs(loc.path(STATE_DIR), exist_ok=True)
    reject_name = f"{STATE_DIR}/rejects.{index:05d}-of-{args.num_shards:05d}.jsonl"
    reject_lines = loc.read_bytes(reject_name).decode().splitlines(keepends=True) if loc.exists(reject_name) else []

    done, skipped, rejected = [], [], []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="extract-") as scratch:
        for i, (vid, path) in enumerate(videos):
            names = output_names(args.layout, plans, vid)
            if all(loc.exists(n) for n in names):
                skipped.append(vid)
                continue
            try:
                feats = ext.video(fetch(path, scratch, args.s3_endpoint))
            except Rejected as e:
                rejected.append(vid)
                reject_lines.append(json.dumps({"video_id": vid, "path": path, "reason": e.reason,
                                                "detail": e.detail}) + "\n")  # fmt: skip
                loc.write_bytes(reject_name, "".join(reject_lines).encode())  # appended (S3 has no append)
                log.warning("%s rejected: %s", vid, e)
                continue
            finally:
                if path.startswith("s3://"):
                    shutil.rmtree(scratch, ignore_errors=True)
                    os.makedirs(scratch, exist_ok=True)
            write_features(loc, names, args.layout, feats)
            done.append(vid)
            dt = max(time.monotonic() - start, 1e-9)
            print(f"\rextract [{index}/{args.num_shards}] {i + 1}/{len(videos)} videos, {len(done) / dt:.2f} videos/s, "
                  f"{ext.stats['frames'] / dt:.1f} decoded frames/s", end="", file=sys.stderr, flush=True)  # fmt: skip
    print(file=sys.stderr)
    result = {"videos": len(videos), "done": done, "skipped": skipped, "rejected": rejected,
              "decoded_frames": ext.stats["frames"], "seconds": time.monotonic() - start}  # fmt: skip
    log.info("shard %d/%d: %d done, %d skipped (complete), %d rejected -> %s",
             index, args.num_shards, len(done), len(skipped), len(rejected), loc.path(reject_name))  # fmt: skip
    return result


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
