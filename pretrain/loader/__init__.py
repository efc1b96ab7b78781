"""The pretraining data loader: WebDataset shards -> padded, masked batches, resumable exactly.

    from pretrain.loader import LoaderConfig, build_eval_loader, build_train_loader
    loader = build_train_loader(LoaderConfig(train="s3://bucket/howto100m/clip60", batch_size=64), tokenizer)
    for epoch in range(epochs):
        for batch in loader:            # the rest of the current epoch; then loader.epoch += 1
            ...                         # batch: see `collate`
        ckpt["loader"] = loader.state_dict()          # any time between batches (JSON-serialisable)
    loader.load_state_dict(ckpt["loader"])            # a fresh loader continues where it stopped
    held_out = build_eval_loader("shards/held_out", cfg)   # every sample once, unmasked

The stages are open_clip's (shuffle shards -> split by node -> split by worker -> skip bad
samples -> shuffle -> batch -> fixed steps per epoch), made deterministic so that the batch
sequence depends only on (seed, epoch, rank, world size, batch size, streams, shard sizes)
and not on the number of DataLoader workers, their timing or an interruption:

1. Plan (`plan_epoch`, pure, from sizes.json alone). The shards are permuted with a generator
   seeded by (seed, epoch); rank r takes every world-th shard from position r (what
   `wds.split_by_node` does, with rank/world passed in); its shards are dealt to `streams`
   logical streams the same way (what `wds.split_by_worker` does, but over a fixed number of
   streams instead of the worker count). Steps per epoch: the largest ceil(samples of a rank /
   batch size) over ranks, so every sample is seen once per epoch and every rank takes the
   same number of steps (`with_epoch`'s role); the ranks with fewer samples, and their streams
   in proportion to their size, repeat some samples (a second pass over their shards) to fill
   their batches. This differs from open_clip's ceil(total / (batch x world)), under which a
   rank holding more than the mean drops samples every epoch; the two differ by at most about
   one shard's worth of steps. `epoch_samples` (open_clip's formula with that total) or
   `epoch_steps` fix the step count instead; a rank then drops or repeats samples.
2. Streams. A stream reads its shards in blocks of whole shards (>= `shuffle_buffer`
   samples), through fsspec and webdataset's tar expander and grouper with counting handlers;
   drops incomplete or undecodable samples (counted); emits the block's samples in a random
   order seeded by (seed, epoch, rank, stream, pass, block). That is the sample shuffle: a
   block permutation instead of wds.shuffle's reservoir, so that a position is (pass, block,
   index) and a resume can start at a block without reading anything before it. Memory: each
   stream holds one block of raw shard bytes, so `streams` blocks per rank.
3. Samples are tokenised (with TACo weights, pretrain/text.py), masked (MLM, MFM,
   pretrain/masking.py) and cropped (a random window of `max_frames`) in the stream's process,
   with generators keyed by (seed, epoch, sample key): the same sample gets the same masks
   wherever and whenever it is processed.
4. Chunks and order. Round j of the epoch takes samples [j*B, (j+1)*B) of every stream, in
   stream order; the batches are consecutive runs of B samples of that sequence. Every stream
   emits exactly one chunk per round (maybe empty), so the DataLoader's round-robin over its
   workers (worker w serves streams w, w+W, ...; W must divide `streams`) returns the chunks
   in the planned order whatever W is, and with W = 0 the main process runs all streams in
   the same order. A chunk that is exactly one planned batch (all but the epoch's tail) is
   collated in the worker, straight into shared memory; the tail's partial chunks are merged
   and collated in the main process.
5. Transport. The frames cross in `frames_dtype` (float16 by default: the shards' dtype, so
   nothing is rounded, and half the bytes of float32: ~11 instead of ~22 MB a batch at
   4352-d); with CUDA the batches are pinned (`pin_memory`, None: when CUDA is available), and
   `to_device` copies them non_blocking and makes the frames float32 on the device.

Resume: the state is the epoch, the batches taken, and for each stream the cursor of its
first sample not yet in a taken batch: (samples emitted, pass, block, index in the block's
permuted order). A fresh loader given that state regenerates the same plan, starts every
stream at its cursor (reading one block, discarding the samples before the index, which are
not decoded, tokenised or masked) and the first round at the earliest unconsumed chunk; the
batches that follow equal an uninterrupted run's. Cost of a resume: one block (>=
`shuffle_buffer` samples, rounded up to whole shards) read per stream, the same as filling a
shuffle buffer; nothing before it is read. A state from another setup (world size, batch
size, ...) is refused, or with strict=False mapped to the same fraction of the saved epoch.

Bad input: a missing folder, sizes.json or shard raises FileNotFoundError naming it before
any work. At run time a shard that cannot be opened or read (garbage, truncated), a sample
missing `.feat.npy` or `.json`, or one that does not decode (wrong schema, shape, dim) is
skipped, counted by kind in `loader.skipped` and logged (the first 10 of each kind per
process, then every 100th). The counts are part of the state and exact across a resume: a
block's read errors count with its first sample, once per read (a stream that passes over
its shards twice to fill its batches counts a bad shard twice). The plan still comes from
sizes.json, so a skipped shard costs no step: its stream repeats samples instead.

Remote storage (s3://): every listing, sizes.json/manifest.json/toi_df.json read and shard read
is tried again after a transient error (throttling, 5xx, timeouts, dropped connections) with
exponential backoff and jitter, `s3_retries` times at most and within `s3_retry_seconds`
(pretrain/s3retry.py, which also says what s3fs raises); each retry is logged at WARNING with
the URL, never with credentials. A remote shard is read whole, so a retry never yields a sample
twice. Permanent errors (NoSuchKey, AccessDenied) are not retried, and a shard that still fails
after the last attempt is skipped and counted as `unreadable_shard` like any unreadable shard.

Held-out mode (`build_eval_loader`): the same readers and processing over a given shard
list, one rank, no shard or sample shuffle, no masking, the first `max_frames` frames, every
sample exactly once and the last batch partial.

The package, in the order of its layers (each imports only those above it):

- storage.py: shard sources -> `Corpus` (sizes.json), the reads of a folder's files, `read_manifest`;
- plan.py: the epoch plan (step 1) and the resume arithmetic;
- reading.py: shards -> validated raw samples through webdataset, skips counted and logged (step 2);
- batch.py: raw samples -> model inputs, `collate` (step 3), `to_device`;
- streams.py: a stream's chunks per round, the IterableDataset of a rank's streams (step 4);
- loader.py: `LoaderConfig`, `VideoTextLoader`, `build_train_loader`, `build_eval_loader`.
"""

from pretrain.loader.batch import (
    FRAMES_DTYPES,
    RNG_CROP,
    RNG_MFM,
    RNG_MLM,
    collate,
    copy_serial,
    frames_tensor,
    readonly_tensor,
    sample_rng,
    to_device,
)
from pretrain.loader.loader import (
    LoaderConfig,
    VideoTextLoader,
    build_eval_loader,
    build_train_loader,
    dist_info,
    load_feature_stats,
    pin_memory,
    retry_policy,
)
from pretrain.loader.plan import apportion, check_world, plan_epoch
from pretrain.loader.reading import SKIP_KINDS, RawSample, read_block
from pretrain.loader.storage import read_manifest, resolve_shards, source_folder

__all__ = [
    "FRAMES_DTYPES", "RNG_CROP", "RNG_MFM", "RNG_MLM", "SKIP_KINDS", "LoaderConfig", "RawSample", "VideoTextLoader",
    "apportion", "build_eval_loader", "build_train_loader", "check_world", "collate", "copy_serial", "dist_info",
    "frames_tensor", "load_feature_stats", "pin_memory", "plan_epoch", "read_block", "read_manifest",
    "readonly_tensor", "resolve_shards", "retry_policy", "sample_rng", "source_folder", "to_device",
]  # fmt: skip
