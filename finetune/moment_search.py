"""Corpus inference for video corpus moment retrieval (VCMR, TVR) and single-video moment retrieval (SVMR).

The model gives two things (see `VrScores` and `SpanLogits`): a video-level score of every query
against every video, and per-frame start and end logits of a query in a video. Scoring follows
XML / HERO:

    log p(v|q)     = log_softmax over all V videos of vr_score(q, v) / vr_temperature
    log p_st(i|v,q) = log_softmax over the valid frames of v of st(q, v, i)     (same for p_ed)
    score(v, i, j)  = log p(v|q) + log p_st(i|v,q) + log p_ed(j|v,q),  min_len <= j - i + 1 <= max_len

and the moment (v, i, j), frames i..j inclusive, covers [i * interval, min((j + 1) * interval,
duration)] seconds. SVMR drops the video term and searches the query's given video only.

The Q x V x M x M score tensor of the brute force is never built: queries are chunked, only the
K best videos of each query (by VR score) are scored, and their moments are held as a band
(start i, length l) of shape (Qc, K, M, L), L = max_len - min_len + 1 (a moment longer than the
longest ground truth is never needed, so L << M). The best `candidates` moments per query then go
through temporal NMS within each video (as TVR's `filter_vcmr_by_nms`) and the first `predictions`
survivors are returned; a query with fewer survivors has its pool doubled until `predictions`
survive (TVR's fixed pool of 200 leaves 14-88 at real scale, so R@100 was scored on fewer).

Ties are broken deterministically, whatever the chunk sizes: videos by ascending corpus row; moments
by the rank of their video (itself by VR score, then corpus row), then the start frame, then the
length, ascending (the flat band index). `ranked_topk` gives that order exactly, also when equal
scores straddle the cut.

Output, per query, as in TVR's submission files: VCMR `[video_idx, st, ed, score]` best first, VR
`[video_idx, 0.0, 0.0, log p(v|q)]` for distinct videos best first; plain Python lists (JSON-ready).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

VrScores = Callable[[int, int], Tensor]  # (q0, q1) -> (q1 - q0, V) video scores, higher is better
SpanLogits = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (Qc,), (Qc, K) -> st, ed, each (Qc, K, M)
Prediction = list[float | int]  # [video_idx, st seconds, ed seconds, score]
NMS_BLOCK = 256  # candidates per step of temporal_nms: (Q, block, block + predictions) bool and float64
POSITIVE_INTS = ("top_videos", "min_moment_frames", "max_moment_frames", "candidates", "predictions",
                 "query_chunk", "moment_chunk")  # fmt: skip


@dataclass
class SearchConfig:
    """Options of the corpus search; the chunk sizes bound memory and never change the algorithm, but the model's
    products per chunk (moment.py's VR scores and span input) may round differently with another chunk size (a
    GEMM of other rows can block differently: seen on a CPU at TVR val's size), so keep them fixed to compare."""

    top_videos: int = 100  # K: videos per query (best VR scores) whose moments are scored; min(K, V)
    min_moment_frames: int = 1  # shortest moment, frames
    max_moment_frames: int = 16  # longest moment, frames (TVR: 1.5 s frames, moments up to ~24 s)
    candidates: int = 200  # best moments per query NMS starts from (TVR's max_before_nms), doubled until enough survive
    nms_iou: float = 0.7  # suppress IoU > nms_iou within a video (TVR's comparison); <= 0 or >= 1: no NMS (XML's -1)
    predictions: int = 100  # moments (and videos) returned per query
    vr_temperature: float = 1.0  # divides the VR scores before the softmax over videos
    query_chunk: int = 256  # queries per VR call: the model's (Qc, V, ...) tensors and a (Qc, V) sort
    moment_chunk: int = 64  # queries per band: (Qc, K, M, L) float32, 41 MB at K=100, M=100, L=16

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SearchConfig.{name} must be an integer >= 1, got {value!r}")
        if self.min_moment_frames > self.max_moment_frames:
            raise ValueError(
                f"SearchConfig.min_moment_frames must be in [1, max_moment_frames={self.max_moment_frames}], "
                f"got {self.min_moment_frames}"
            )
        if self.candidates < self.predictions:
            raise ValueError(f"SearchConfig.candidates ({self.candidates}) must be >= predictions ({self.predictions})")
        if not self.vr_temperature > 0:
            raise ValueError(f"SearchConfig.vr_temperature must be > 0, got {self.vr_temperature}")
        if self.nms_iou != self.nms_iou:
            raise ValueError("SearchConfig.nms_iou must be a number, got nan")

    @property
    def nms_enabled(self) -> bool:
        return 0 < self.nms_iou < 1


@dataclass
class Corpus:
    """The searched videos: V of them, row v of every tensor describing the same video."""

    frame_counts: Tensor  # (V,) long, >= 1: valid frames of each video
    intervals: float | Sequence[float] | Tensor  # seconds per frame, one for all or (V,)
    durations: Sequence[float] | Tensor  # (V,) seconds: the end of the last moment is clipped to it
    video_idx: Tensor  # (V,) long: the official index (TVR's video2idx) written in the predictions

    def __post_init__(self) -> None:
        v = self.frame_counts.shape[0]
        self.frame_counts = self.frame_counts.long()  # (V,)
        self.video_idx = self.video_idx.long()  # (V,)
        self.durations = torch.as_tensor(self.durations, dtype=torch.float64)  # (V,): a float32 tensor stays inexact
        self.intervals = torch.as_tensor(self.intervals, dtype=torch.float64).expand(v).clone()  # (V,)
        for name in ("video_idx", "durations", "intervals"):
            if getattr(self, name).shape != (v,):
                raise ValueError(f"Corpus.{name} must have shape ({v},), got {tuple(getattr(self, name).shape)}")
        if v == 0 or int(self.frame_counts.min()) < 1:
            raise ValueError("Corpus.frame_counts must be non-empty with every video >= 1 frame")
        if not bool((self.intervals > 0).all()):
            raise ValueError("Corpus.intervals must be > 0")

    @property
    def num_videos(self) -> int:
        return self.frame_counts.shape[0]


# ---------------------------------------------------------------- pure tensor steps


def ranked_topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices), each (R, min(k, N)): each row's k largest, best first, equal values by ascending index.

    torch.topk leaves the order of equal values unspecified; this makes it the one a stable sort
    would give. One topk of k + 1 tells whether equal values straddle the k-th place (the
    k-th and (k+1)-th largest are equal); only such rows, rare with real scores, get a full sort.
    """
    n = x.shape[1]
    k = min(k, n)
    vals, idx = x.topk(min(k + 1, n), dim=1, sorted=False)  # (R, k or k + 1)
    idx, perm = idx.sort(dim=1)  # index ascending ...
    vals, order = vals.gather(1, perm).sort(dim=1, descending=True, stable=True)  # ... then value descending
    idx = idx.gather(1, order)
    if k < n:
        straddle = (vals[:, k - 1] == vals[:, k]) & (vals[:, k] > float("-inf"))  # (R,)
        vals, idx = vals[:, :k], idx[:, :k]  # (R, k): the dropped (k+1)-th is strictly worse, or a tie
        if bool(straddle.any()):
            rows = straddle.nonzero().squeeze(1)  # (r,)
            v_all, i_all = x[rows].sort(dim=1, descending=True, stable=True)  # (r, N)
            vals[rows], idx[rows] = v_all[:, :k], i_all[:, :k]
    return vals, idx


def frame_log_probs(logits: Tensor, counts: Tensor) -> Tensor:
    """(Qc, K, M) log_softmax over each video's valid frames; -inf at frames >= its count (model garbage)."""
    valid = torch.arange(logits.shape[-1], device=logits.device) < counts[..., None]  # (Qc, K, M)
    return logits.float().masked_fill(~valid, float("-inf")).log_softmax(dim=-1)  # (Qc, K, M)


def band_scores(log_st: Tensor, log_ed: Tensor, prior: Tensor, min_len: int, max_len: int) -> Tensor:
    """(Qc, K, M, L): score of the moment starting at frame i with min_len + l frames, -inf where invalid.

    The end frame of entry (i, l) is i + min_len - 1 + l: a window of log_ed padded with -inf, so
    moments running past the video (or past M) come out -inf with no separate mask.
    """
    m = log_st.shape[-1]
    hi = min(max_len, m)
    pad = log_ed.new_full((*log_ed.shape[:-1], hi - 1), float("-inf"))  # (Qc, K, hi - 1)
    ends = torch.cat([log_ed, pad], dim=-1).unfold(-1, hi, 1)[..., min_len - 1 :]  # (Qc, K, M, L) view
    return ends + (log_st + prior[..., None])[..., None]  # (Qc, K, M, L)


def batched_pairwise_iou(st_a: Tensor, ed_a: Tensor, st_b: Tensor, ed_b: Tensor) -> Tensor:
    """(Q, A, B) IoU of every span of each row of a with every span of the same row of b (ed >= st); 0 where
    the union is empty.

    The union is len_a + len_b - inter. TVR's utils/temporal_nms.py divides by the hull
    max(ed) - min(st) instead, which is the same number whenever the spans overlap and gives 0
    either way when they do not, so the two agree. In-place steps: every fresh (Q, A, B) float64
    temporary costs more in page faults than its arithmetic. The evaluator's elementwise IoU (numpy):
    finetune.moment_eval.elementwise_iou; inclusive frame spans: finetune.mesm.pairwise_frame_iou.
    """
    inter = torch.minimum(ed_a[:, :, None], ed_b[:, None])  # (Q, A, B)
    inter.sub_(torch.maximum(st_a[:, :, None], st_b[:, None])).clamp_(min=0)  # (Q, A, B)
    union = ((ed_a - st_a)[:, :, None] + (ed_b - st_b)[:, None]).sub_(inter)  # (Q, A, B)
    return inter.div_(union).nan_to_num_(0.0)  # (Q, A, B): 0 / 0 -> 0


def same_video_overlaps(st_a: Tensor, ed_a: Tensor, video_a: Tensor, st_b: Tensor, ed_b: Tensor, video_b: Tensor,
                        iou: float, later_only: bool = False) -> Tensor:  # fmt: skip
    """(Q, A, B) bool: span a of a row and span b of the same row are of the same video and their IoU is > iou.

    later_only: only b > a (A == B, one list against itself). When few pairs are of the same video (a tenth in
    a VCMR candidate list spread over many videos), the IoU is computed at those only, with the arithmetic of
    `batched_pairwise_iou`; else (SVMR: one video) at every pair, by it."""
    n_a, n_b = video_a.shape[1], video_b.shape[1]
    same = video_a[:, :, None] == video_b[:, None]  # (Q, A, B)
    if later_only:
        same.triu_(1)
    if int(same.sum()) > same.numel() // 4:
        return same.logical_and_(batched_pairwise_iou(st_a, ed_a, st_b, ed_b) > iou)
    pair = same.view(-1).nonzero().squeeze(1)  # (n,) flat index q * A * B + a * B + b
    row_a, row_b = pair // n_b, pair // (n_a * n_b) * n_b + pair % n_b  # (n,) flat q * A + a, q * B + b
    s_a, e_a = st_a.reshape(-1)[row_a], ed_a.reshape(-1)[row_a]  # (n,)
    s_b, e_b = st_b.reshape(-1)[row_b], ed_b.reshape(-1)[row_b]  # (n,)
    inter = torch.minimum(e_a, e_b).sub_(torch.maximum(s_a, s_b)).clamp_(min=0)  # (n,)
    union = ((e_a - s_a) + (e_b - s_b)).sub_(inter)  # (n,)
    out = torch.zeros_like(same)  # (Q, A, B)
    out.view(-1)[pair] = inter.div_(union).nan_to_num_(0.0) > iou
    return out


def temporal_nms(st: Tensor, ed: Tensor, video: Tensor, valid: Tensor, iou: float, limit: int | None = None,
                 block: int = NMS_BLOCK) -> Tensor:  # fmt: skip
    """(Q, C) bool keep mask of greedy NMS over each row's candidates, which must be sorted best first.

    A candidate is dropped when its IoU with an already kept candidate of the same video is
    strictly greater than `iou` (TVR: `compute_temporal_iou(...) > nms_threshold`); candidates of
    different videos never suppress each other, and invalid ones neither count nor are kept. A row
    stops at `limit` kept candidates (None: no limit); later ones are not kept.

    Candidates go in blocks of `block`: each block is compared with the kept ones of the blocks
    before (at most `limit`) and with itself, so memory is (Q, block, block + limit), whatever C.
    """
    limit = st.shape[1] if limit is None else min(limit, st.shape[1])
    nms = NmsState.start(st.shape[0], limit, st, video)
    nms.extend(st, ed, video, valid, iou, block)
    return nms.keep


@dataclass
class NmsState:
    """Greedy NMS (`temporal_nms`) over a row's candidates so far, to be extended by later candidates: greedy
    NMS decides each candidate from the ones before it only, so NMS over a longer prefix of the same ranking
    goes on from here (`best_moments` widens a query's pool without redoing the first part)."""

    keep: Tensor  # (Q, C) the decisions so far
    kept_st: Tensor  # (Q, P + 1) the kept spans in slots 0.., slot P a bin for what is not kept
    kept_ed: Tensor  # (Q, P + 1)
    kept_video: Tensor  # (Q, P + 1) video -1 in empty slots, which matches none
    room: Tensor  # (Q,) slots left
    limit: int  # P

    @classmethod
    def start(cls, q: int, limit: int, like: Tensor, video: Tensor) -> NmsState:
        kept = like.new_zeros(q, limit + 1)  # (Q, P + 1)
        return cls(torch.zeros(q, 0, dtype=torch.bool, device=like.device), kept, kept.clone(),
                   video.new_full((q, limit + 1), -1), torch.full((q,), limit, dtype=torch.long, device=like.device),
                   limit)  # fmt: skip

    def rows(self, index: Tensor) -> NmsState:
        """The state of rows `index` (R,)."""
        return NmsState(*(t[index] for t in (self.keep, self.kept_st, self.kept_ed, self.kept_video, self.room)),
                        self.limit)  # fmt: skip

    def extend(self, st: Tensor, ed: Tensor, video: Tensor, valid: Tensor, iou: float, block: int = NMS_BLOCK) -> None:
        """Decide candidates keep.shape[1]: of the (Q, C) lists, whose first ones must be those decided."""
        q, c = st.shape
        b_start, limit, room = self.keep.shape[1], self.limit, self.room
        self.keep = torch.cat([self.keep, self.keep.new_zeros(q, c - b_start)], dim=1)  # (Q, C)
        for b0 in range(b_start, c, block):
            if bool((room == 0).all()):
                break
            b = slice(b0, min(b0 + block, c))
            s, e, v = st[:, b], ed[:, b], video[:, b]  # (Q, B)
            suppressed = ~valid[:, b]  # (Q, B)
            if bool((room < limit).any()):  # suppressed by the ones kept before
                lim = slice(0, limit)
                by_kept = same_video_overlaps(s, e, v, self.kept_st[:, lim], self.kept_ed[:, lim],
                                              self.kept_video[:, lim], iou)  # (Q, B, P)  # fmt: skip
                suppressed |= by_kept.any(dim=2)  # (Q, B)
            over = same_video_overlaps(s, e, v, s, e, v, iou, later_only=True)  # (Q, B, B): j over the later k
            block_keep = self.keep[:, b]  # (Q, B) view
            first_slot = limit - room  # (Q,)
            for j in range(s.shape[1]):  # greedy in score order, all rows at once
                block_keep[:, j] = ~suppressed[:, j] & (room > 0)
                room -= block_keep[:, j].long()
                suppressed |= block_keep[:, j, None] & over[:, j]  # (Q, B)
            slot = first_slot[:, None] + block_keep.long().cumsum(dim=1) - 1  # (Q, B) where each kept one goes ...
            slot = torch.where(block_keep, slot, limit)  # (Q, B) ... the rest to the bin
            for kept, new in ((self.kept_st, s), (self.kept_ed, e), (self.kept_video, v)):
                kept.scatter_(1, slot, new)  # (Q, P + 1)


# ---------------------------------------------------------------- moments of one chunk of queries


@dataclass
class Moments:
    """The best moments of a chunk of queries, best first; `keep` marks what survives NMS."""

    score: Tensor  # (Qc, C) float
    video: Tensor  # (Qc, C) long corpus row
    start: Tensor  # (Qc, C) long first frame
    end: Tensor  # (Qc, C) long last frame, inclusive
    keep: Tensor  # (Qc, C) bool: finite score and not suppressed


def best_moments(st: Tensor, ed: Tensor, v_rows: Tensor, prior: Tensor, corpus: Corpus,
                 cfg: SearchConfig) -> list[list[Prediction]]:  # fmt: skip
    """`best_moments_packed` as lists."""
    return best_moments_packed(st, ed, v_rows, prior, corpus, cfg).lists()


def best_moments_packed(st: Tensor, ed: Tensor, v_rows: Tensor, prior: Tensor, corpus: Corpus,
                        cfg: SearchConfig) -> Packed:  # fmt: skip
    """Score the band of every (query, video) pair; per query, the first `predictions` moments NMS keeps.

    st, ed: (Qc, K, M) logits from the model; v_rows: (Qc, K) corpus rows; prior: (Qc, K) log p(v|q)
    (zeros for SVMR). NMS runs over the best `candidates` moments; a query with fewer than
    `predictions` survivors has its pool doubled, until enough survive or every moment of its
    videos is in. Greedy NMS keeps the same moments from any prefix of the ranking, so this is NMS
    over all moments, cut after `predictions`: fewer only when NMS leaves fewer of all the moments
    (SVMR in a video of a few frames, DiDeMo's six 5 s segments).
    """
    counts = corpus.frame_counts.to(v_rows.device)[v_rows]  # (Qc, K)
    m = st.shape[-1]
    if int(counts.max()) > m:
        raise ValueError(f"span_logits gave {m} frames, but a video has {int(counts.max())}")
    band = band_scores(frame_log_probs(st, counts), frame_log_probs(ed, counts), prior.float(),
                       cfg.min_moment_frames, cfg.max_moment_frames).flatten(1)  # (Qc, K * M * L)  # fmt: skip
    n, length = band.shape[1], band.shape[1] // (v_rows.shape[1] * m)
    done_parts: list[tuple[Tensor, Packed]] = []  # (rows finished, their predictions) per round
    rows = torch.arange(band.shape[0], device=band.device)  # (R,) queries still to finish
    size = min(cfg.candidates if cfg.nms_enabled else cfg.predictions, n)
    nms: NmsState | None = None  # NMS over the pool so far, of the rows still to finish
    while True:
        score, flat = ranked_topk(band[rows], size)  # (R, C), (R, C) index into (K, M, L)
        k, start = flat // (m * length), flat // length % m  # (R, C)
        end = start + flat % length + cfg.min_moment_frames - 1  # (R, C)
        video = v_rows[rows].gather(1, k)  # (R, C)
        keep = score > float("-inf")  # (R, C)
        more = torch.zeros_like(rows, dtype=torch.bool)  # (R,) needs a wider pool
        if cfg.nms_enabled:
            t_st, t_ed = span_seconds(video, start, end, corpus)  # (R, C)
            finite = keep
            if nms is None:
                nms = NmsState.start(len(rows), min(cfg.predictions, size), t_st, video)
            nms.extend(t_st, t_ed, video, finite, cfg.nms_iou)  # the first candidates: the pool before, decided
            keep = nms.keep  # (R, C)
            more = (keep.sum(dim=1) < cfg.predictions) & finite[:, -1] & (size < n)  # (R,)
        done = (~more).nonzero().squeeze(1)  # (D,)
        packed = pack_moments(Moments(*(t[done] for t in (score, video, start, end, keep))), corpus, cfg.predictions)
        done_parts.append((rows[done].cpu(), packed))
        if not bool(more.any()):
            return in_row_order(done_parts, band.shape[0])
        rows, size = rows[more], min(2 * size, n)
        nms = nms.rows(more.nonzero().squeeze(1)) if nms is not None else None


def in_row_order(parts: list[tuple[Tensor, Packed]], num_rows: int) -> Packed:
    """The predictions of rows 0..num_rows-1 in row order, from rounds that each finished some rows (in order)."""
    if len(parts) == 1:
        return parts[0][1]  # every row in the first round, in order
    rows = torch.cat([r for r, _ in parts])  # (Qc,) each row once
    packed = Packed.cat([p for _, p in parts])
    owner = rows.repeat_interleave(packed.counts)  # (n,) each prediction's row
    order = owner.argsort(stable=True)  # rows ascending, each row's predictions kept in order
    counts = torch.zeros(num_rows, dtype=torch.long).index_put_((rows,), packed.counts)  # (Qc,)
    return Packed(packed.rows[order], counts)


def span_seconds(video: Tensor, start: Tensor, end: Tensor, corpus: Corpus) -> tuple[Tensor, Tensor]:
    """(st, ed) float64 seconds of frames start..end: [start * interval, (end + 1) * interval], clipped to the duration.

    Only the end is clipped in a consistent corpus; the start as well only for frames that begin
    past the video's duration (more frames than the duration holds), which gives ed >= st always.
    """
    interval = corpus.intervals.to(video.device)[video]  # (..., C)
    duration = corpus.durations.to(video.device)[video]  # (..., C)
    return torch.minimum(start * interval, duration), torch.minimum((end + 1) * interval, duration)


def to_lists(moments: Moments, corpus: Corpus, limit: int) -> list[list[Prediction]]:
    """The first `limit` kept moments of each query as [video_idx, st, ed, score] lists."""
    return pack_moments(moments, corpus, limit).lists()


def pack_moments(moments: Moments, corpus: Corpus, limit: int) -> Packed:
    """The first `limit` kept moments of each query, packed (`to_lists` without the lists)."""
    take = moments.keep & (moments.keep.cumsum(dim=1) <= limit)  # (Qc, C) the first `limit` kept of each row
    rows, cols = take.nonzero(as_tuple=True)  # (n,) in row order, then column order
    video, score = moments.video[rows, cols], moments.score[rows, cols]  # (n,)
    st, ed = span_seconds(video, moments.start[rows, cols], moments.end[rows, cols], corpus)  # (n,)
    vid = corpus.video_idx.to(video.device)[video]  # (n,)
    return Packed.of(vid, st, ed, score, take.sum(dim=1))


@dataclass
class Packed:
    """The predictions of consecutive queries as two tensors: cheap to gather between ranks and to concatenate;
    `lists()` makes the JSON-ready lists. float64 holds every column exactly (video_idx < 2**53, float32 scores),
    so the lists are the ones the columns' own dtypes give (the video index back to int)."""

    rows: Tensor  # (n, 4) float64 [video_idx, st, ed, score]: the first query's predictions, then the next's ...
    counts: Tensor  # (Q,) long: predictions per query

    @staticmethod
    def of(vid: Tensor, st: Tensor, ed: Tensor, score: Tensor, counts: Tensor) -> Packed:
        """From (n,) columns (any dtypes) and (Q,) counts."""
        cols = [t.cpu().to(torch.float64) for t in (vid, st, ed, score)]
        return Packed(torch.stack(cols, dim=1).reshape(-1, 4), counts.cpu().long())

    @staticmethod
    def cat(parts: Sequence[Packed]) -> Packed:
        """The queries of `parts`, one part after the other."""
        if not parts:
            return Packed(torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
        return Packed(torch.cat([p.rows for p in parts]), torch.cat([p.counts for p in parts]))

    def lists(self) -> list[list[Prediction]]:
        """Per query, its [video_idx, st, ed, score] lists."""
        vid, st, ed, score = self.rows.unbind(1)  # (n,) each
        flat = [list(p) for p in zip(vid.long().tolist(), st.tolist(), ed.tolist(), score.tolist())]
        ends = self.counts.cumsum(dim=0).tolist()  # (Q,) where each query's predictions end in `flat`
        return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


# ---------------------------------------------------------------- searches


@torch.no_grad()
def search_corpus(
    vr_scores: VrScores,
    span_logits: SpanLogits,
    num_queries: int,
    corpus: Corpus,
    cfg: SearchConfig,
    part: tuple[int, int] = (0, 1),
) -> tuple[list[list[Prediction]], list[list[Prediction]]]:
    """(vcmr, vr): per query, the best moments in the whole corpus and the best videos (`search_corpus_packed`
    as lists)."""
    vcmr, vr = search_corpus_packed(vr_scores, span_logits, num_queries, corpus, cfg, part)
    return vcmr.lists(), vr.lists()


@torch.no_grad()
def search_corpus_packed(
    vr_scores: VrScores,
    span_logits: SpanLogits,
    num_queries: int,
    corpus: Corpus,
    cfg: SearchConfig,
    part: tuple[int, int] = (0, 1),
) -> tuple[Packed, Packed]:
    """(vcmr, vr) packed: per query, the best moments in the whole corpus and the best videos.

    part = (r, W): only the query chunks c (of `query_chunk` queries) with c % W == r, whose queries' lists
    come back in order (finetune/ranks.py spreads the chunks over the ranks and gathers them); a chunk's
    result does not depend on which others are searched.

    Peak memory of the search itself: a (query_chunk, V) score matrix and its ranking, and a
    few (moment_chunk, K, M, L) float32 bands; the model's callbacks add their own.
    """
    cfg.validate()
    k = min(cfg.top_videos, corpus.num_videos)
    vcmr: list[Packed] = []
    vr: list[Packed] = []
    for q0 in range(part[0] * cfg.query_chunk, num_queries, part[1] * cfg.query_chunk):
        q1 = min(q0 + cfg.query_chunk, num_queries)
        log_pv = (vr_scores(q0, q1).float() / cfg.vr_temperature).log_softmax(dim=1)  # (Qv, V)
        top_lp, top_v = ranked_topk(log_pv, max(k, cfg.predictions))  # (Qv, max(K, P))
        vr.append(pack_videos(top_lp[:, : cfg.predictions], top_v[:, : cfg.predictions], corpus))
        for c0 in range(0, q1 - q0, cfg.moment_chunk):
            rows = slice(c0, min(c0 + cfg.moment_chunk, q1 - q0))
            v_rows, prior = top_v[rows, :k], top_lp[rows, :k]  # (Qc, K)
            q_rows = torch.arange(q0 + rows.start, q0 + rows.stop, device=v_rows.device)  # (Qc,)
            st, ed = span_logits(q_rows, v_rows)  # (Qc, K, M) each
            vcmr.append(best_moments_packed(st, ed, v_rows, prior, corpus, cfg))
    return Packed.cat(vcmr), Packed.cat(vr)


def video_lists(log_pv: Tensor, v_rows: Tensor, corpus: Corpus) -> list[list[Prediction]]:
    """[video_idx, 0.0, 0.0, log p(v|q)] per ranked video, TVR's VR format."""
    return pack_videos(log_pv, v_rows, corpus).lists()


def pack_videos(log_pv: Tensor, v_rows: Tensor, corpus: Corpus) -> Packed:
    """`video_lists` packed: log_pv, v_rows (Qv, P)."""
    vid = corpus.video_idx.to(v_rows.device)[v_rows].flatten()  # (Qv * P,)
    zero = torch.zeros(vid.shape, dtype=torch.float64)  # (Qv * P,)
    counts = torch.full((v_rows.shape[0],), v_rows.shape[1], dtype=torch.long)  # (Qv,)
    return Packed.of(vid, zero, zero, log_pv.flatten(), counts)


@torch.no_grad()
def search_single(
    span_logits: SpanLogits,
    q_rows: Tensor,
    v_rows: Tensor,
    corpus: Corpus,
    cfg: SearchConfig,
    part: tuple[int, int] = (0, 1),
) -> list[list[Prediction]]:
    """SVMR: per query q_rows[i], the best moments inside video row v_rows[i] (its ground truth): as lists."""
    return search_single_packed(span_logits, q_rows, v_rows, corpus, cfg, part).lists()


@torch.no_grad()
def search_single_packed(
    span_logits: SpanLogits,
    q_rows: Tensor,
    v_rows: Tensor,
    corpus: Corpus,
    cfg: SearchConfig,
    part: tuple[int, int] = (0, 1),
) -> Packed:
    """SVMR packed: per query q_rows[i], the best moments inside video row v_rows[i] (its ground truth).

    part = (r, W): only the chunks c of `moment_chunk` queries with c % W == r, as in `search_corpus`."""
    cfg.validate()
    out: list[Packed] = []
    for c0 in range(part[0] * cfg.moment_chunk, q_rows.shape[0], part[1] * cfg.moment_chunk):
        q = q_rows[c0 : c0 + cfg.moment_chunk].long()  # (Qc,)
        v = v_rows[c0 : c0 + cfg.moment_chunk].long()[:, None]  # (Qc, 1)
        st, ed = span_logits(q, v)  # (Qc, 1, M) each
        prior = torch.zeros(v.shape, device=st.device)  # (Qc, 1): no video term
        out.append(best_moments_packed(st, ed, v.to(st.device), prior, corpus, cfg))
    return Packed.cat(out)
