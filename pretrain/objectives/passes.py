"""The forward passes of one step, each run once and handed to every objective that asks for it.

Several objectives encode the same inputs: the unmasked text and video (e_t, e_v) feed TACo,
GMR, self-contrasting, MFM-NCE (its text side), MLM (its video side) and the collapse guard;
T_cross over them and the MCBs (FEEL eq. 1-3) feed GMR and self-contrasting. `Passes` is a memo
for one step and one batch: an objective asks `passes.text()`, `passes.video(masked=True)`,
`passes.cross(...)` or `passes.converted()` and gets the pass computed by whoever asked first.

What is NOT shared, because the inputs differ: MLM's text pass runs on the corrupted
`mlm_input_ids`, MFM-NCE's video pass on the masked frames (HERO masks one modality per task:
MLM the text, MFM the frames), so each has its own T_cross pass; self-contrasting's second
passes and TACo's fusion pairs have inputs no other objective has.

A shared pass is the same autograd node for every consumer: its backward runs once with the
consumers' gradients summed, which equals the separate passes' gradients up to float summation
order when dropout is off. With dropout on, the consumers see one dropout mask instead of one
each. `share=False` runs every request afresh (the objectives' separate passes, as before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel
    from pretrain.objectives.gmr import Converted


@dataclass
class Fused:
    """One T_cross pass (FEEL eq. 1): its inputs and outputs."""

    e_v: Tensor  # (B, M, d)
    e_t: Tensor  # (B, N, d)
    o_v: Tensor  # (B, M, d)
    o_t: Tensor  # (B, N, d)


class Passes:
    """A per-step memo of the model's passes over one batch, keyed by what each pass depends on."""

    def __init__(self, model: VideoTextModel, batch: Batch, share: bool = True):
        self.model, self.batch, self.share = model, batch, share
        self._memo: dict[tuple, Any] = {}

    def _get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if not self.share:
            return compute()
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def text(self, masked: bool = False) -> Tensor:
        """e_t (B, N, d) of `input_ids`, or of MLM's corrupted `mlm_input_ids` when `masked`."""
        ids = self.batch["mlm_input_ids" if masked else "input_ids"]  # (B, N)
        return self._get(("text", masked), lambda: self.model.embed_text(ids, self.batch["attention_mask"]))

    def video(self, masked: bool = False, learned: bool = True) -> Tensor:
        """e_v (B, M, d) of `frames`, or of MFM's masked frames when `masked` (with the learned mask
        vector when `learned`, `model.mask_frames`)."""
        b = self.batch

        def compute() -> Tensor:
            frames = self.model.mask_frames(b["frames"], b["mfm_mask"], learned) if masked else b["frames"]
            return self.model.embed_video(frames, b["frame_mask"])  # (B, M, Dv) -> (B, M, d)

        return self._get(("video", masked, masked and learned), compute)

    def cross(self, masked_text: bool = False, masked_video: bool = False, learned: bool = True) -> Fused:
        """T_cross (FEEL eq. 1) over `video(masked_video, learned)` and `text(masked_text)`."""
        b = self.batch

        def compute() -> Fused:
            e_v, e_t = self.video(masked_video, learned), self.text(masked_text)  # (B, M, d), (B, N, d)
            return Fused(e_v, e_t, *self.model.cross(e_v, b["frame_mask"], e_t, b["attention_mask"]))

        return self._get(("cross", masked_text, masked_video, masked_video and learned), compute)

    def converted(self) -> Converted:
        """FEEL eq. 1-3 on the unmasked batch (GMR's and self-contrasting's first pass), `gmr.convert`."""
        from pretrain.objectives.gmr import convert

        return self._get(("converted",), lambda: convert(self.model, self.batch, self))
