"""finetune.task.gc_paused: the cyclic collector off inside (an evaluation), back as it was after, errors included."""

from __future__ import annotations

import gc

import pytest

from finetune.task import gc_paused


def test_collector_off_inside_and_restored_after() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("evaluation failed")
    assert gc.isenabled()


def test_a_collector_already_off_stays_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
