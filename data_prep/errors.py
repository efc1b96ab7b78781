"""The two ways data_prep reports bad input.

`DataPrepError` stops the run with one message that names the file (a malformed input file,
an output that already exists). `Rejected` drops one video: it lands in the reject log with
its reason, and the run goes on.
"""


class DataPrepError(Exception):
    """A problem with an input file or the output location that stops the run."""


class Rejected(Exception):
    """One video cannot be used; `reason` is one of schema.REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
