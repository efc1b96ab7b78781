"""What a rank says when a collective fails (pretrain/runtime.py): which ranks and hosts it lost.

The peers are what `init_distributed` gathers after the rendezvous; the errors are gloo's own
messages, copied from runs across the namespace nodes (tests/e2e/test_multinode.py)."""

from __future__ import annotations

import pytest
import torch

from pretrain import runtime

RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.77.0.2]:4513: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)
TIMEOUT = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 10000ms"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.setattr(runtime, "_PEERS", [(0, "node1", "10.77.0.1"), (1, "node2", "10.77.0.2"),
                                            (2, "node3", "10.77.0.22")])  # fmt: skip
    monkeypatch.setattr(runtime, "_PEERS_TIMEOUT", [10])
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)


def test_a_reset_connection_names_the_rank_at_that_address_only(peers) -> None:
    message = runtime.lost_ranks_message(RuntimeError(RESET))
    assert "lost the connection to rank 1 on node2 (10.77.0.2);" in message  # not node3's 10.77.0.22
    assert "timeout runtime.timeout_s=10 s" in message and "Read error [10.77.0.2]:4513" in message


def test_a_timeout_names_every_other_rank(peers) -> None:
    message = runtime.lost_ranks_message(RuntimeError(TIMEOUT))
    assert "got no answer in time from (or lost) rank 1 on node2 (10.77.0.2), rank 2 on node3 (10.77.0.22);" in message


def test_only_distributed_errors_are_collective_errors() -> None:
    assert runtime._is_collective_error(RuntimeError(RESET)) and runtime._is_collective_error(RuntimeError(TIMEOUT))
    assert runtime._is_collective_error(torch.distributed.DistStoreError("Timed out after 9 seconds"))
    assert not runtime._is_collective_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_run_then_shutdown_turns_a_gloo_error_into_a_collective_error(peers, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "shutdown", lambda wait=True: None)  # no process group here

    def fail():
        raise RuntimeError(TIMEOUT)

    with pytest.raises(runtime.CollectiveError, match="rank 1 on node2"):
        runtime.run_then_shutdown(fail)
    with pytest.raises(ValueError, match="not distributed"):  # anything else passes through as it is
        runtime.run_then_shutdown(lambda: (_ for _ in ()).throw(ValueError("not distributed")))


def test_a_preemption_leaves_through_the_barrier_an_error_does_not(monkeypatch) -> None:
    """Every rank raises Preempted after the same checkpoint: they wait for each other on the way out (no rank's
    exit 3 gets another killed by srun --kill-on-bad-exit while it ends its MLflow run); an error does not wait."""
    from pretrain.loop import Preempted

    waits = []
    monkeypatch.setattr(runtime, "shutdown", lambda wait=True: waits.append(wait))
    for error in (Preempted("stopped at step 3"), ValueError("bad batch")):
        with pytest.raises(type(error)):
            runtime.run_then_shutdown(lambda e=error: (_ for _ in ()).throw(e))
    assert waits == [True, False]
