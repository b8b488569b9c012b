"""Atomic checkpoints, resume resolution and RNG capture (fcmae.engine)."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest
import torch

from fcmae.engine import (
    atomic_save,
    capture_rng_state,
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
)


def test_atomic_save_roundtrip_and_no_leftovers(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    atomic_save({"step": 3, "w": torch.arange(4.0)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3
    assert torch.equal(ckpt["w"], torch.arange(4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # a partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # temp file removed


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not readable"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_resolve_resume(tmp_path):
    runs = tmp_path / "runs"
    assert resolve_resume(None, runs, "last.pt") is None
    assert resolve_resume("none", runs, "last.pt") is None
    assert resolve_resume("auto", runs, "last.pt") is None  # nothing yet: fresh start
    old, new, empty = runs / "a", runs / "b", runs / "c"
    atomic_save({"step": 1}, old / "last.pt")
    atomic_save({"step": 2}, new / "last.pt")
    empty.mkdir()
    t = time.time()
    os.utime(old / "last.pt", (t - 100, t - 100))
    assert resolve_resume("auto", runs, "last.pt") == new / "last.pt"
    assert resolve_resume("auto", runs, "last.pt", exclude=new) == old / "last.pt"
    assert find_latest_checkpoint(runs, "other.pt") is None
    assert resolve_resume(str(old), runs, "last.pt") == old / "last.pt"
    assert resolve_resume(str(old / "last.pt"), runs, "last.pt") == old / "last.pt"
    with pytest.raises(ValueError, match="no checkpoint at"):
        resolve_resume(str(empty), runs, "last.pt")


def test_rng_state_roundtrip():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
