"""The sample store on its own: records, validity under a cap, and writers at once or killed.

No model here: ``compute`` stands in for drawing and scoring, and records which slots it was asked
for, so a test can count what was computed twice. Writers are separate processes (spawned: they
hold real fcntl locks and can be killed mid-write).
"""

import json
import multiprocessing as mp
import os
import signal
import time

import pyarrow.parquet as pq
import pytest

from experiments.sample_store import (Bucket, SampleStore, StoredSample, chunk_key, index_runs, missing_slots,
                                      results_of)

KEYS = [chunk_key([1, 2, i], [[3], [4], [5], [6, i]]) for i in range(5)]


def fake(i, j, cap, finished=True):
    """A stand-in sample of slot (i, j): j + 1 tokens, finished unless told otherwise."""
    return StoredSample(tuple(range(j + 1)), f"z{i}.{j}", finished, -1.0 - j, -2.0 - i, cap)


def computing(log_path, cap, delay=0.0, finished=True):
    """A ``compute`` that notes the slots it is asked for in ``log_path`` (one JSON line a call)."""
    def compute(missing):
        with open(log_path, "a") as f:
            f.write(json.dumps([[i, j] for i, js in sorted(missing.items()) for j in js]) + "\n")
        time.sleep(delay)
        return {(i, j): fake(i, j, cap, finished) for i, js in missing.items() for j in js}
    return compute


def computed_slots(log_path):
    if not os.path.exists(log_path):
        return []
    return [tuple(s) for line in open(log_path) for s in json.loads(line)]


def records(bucket):
    return [(key, j) for (key, j), rs in bucket.read().items() for _ in rs]


def test_runs_missing_slots_and_results_folder(tmp_path):
    assert index_runs([5, 0, 1, 2]) == [(0, 3), (5, 1)] and index_runs([]) == []
    assert missing_slots(2, 3, {(0, 0): 1, (0, 1): 1, (0, 2): 1, (1, 1): 1}) == {1: [0, 2]}
    assert results_of(tmp_path / "r" / "artifacts" / "estep" / "k" / "shards" / "00000-of-00002") == (tmp_path / "r").resolve()
    assert results_of(tmp_path / "elsewhere") is None
    assert chunk_key([1, 2], [[3]]) != chunk_key([1], [[2, 3]])  # lengths are hashed, not just the ids


def test_a_finished_sample_serves_every_cap_past_its_stop():
    done, cut = fake(0, 2, cap=8), fake(0, 2, cap=8, finished=False)  # 3 tokens
    assert done.valid_for(8) and done.valid_for(4) and done.valid_for(100)
    assert not done.valid_for(3)  # under cap 3 the stop (step 3) is never reached: cut at 3 tokens
    assert cut.valid_for(8) and not cut.valid_for(16) and not cut.valid_for(4)


def test_fill_computes_only_what_is_missing_and_stores_it(tmp_path):
    bucket, log = Bucket(tmp_path / "b"), tmp_path / "log"
    got, new = bucket.fill(KEYS[:3], 2, 8, computing(log, 8))
    assert len(got) == 6 and new == set(got)
    got, new = bucket.fill(KEYS[:3], 4, 8, computing(log, 8))  # K 2 -> 4: indices 2, 3 only
    assert new == {(i, j) for i in range(3) for j in (2, 3)} and len(got) == 12
    got, new = bucket.fill(KEYS[:3], 3, 8, computing(log, 8))  # all stored: no lock, no compute
    assert new == set() and got[(1, 2)] == fake(1, 2, 8)
    assert sorted(computed_slots(log)) == sorted((i, j) for i in range(3) for j in range(4))
    assert sorted(records(bucket)) == sorted((KEYS[i], j) for i in range(3) for j in range(4))


def test_cut_samples_are_redrawn_under_another_cap_finished_ones_are_not(tmp_path):
    bucket, log = Bucket(tmp_path / "b"), tmp_path / "log"
    bucket.fill(KEYS[:1], 2, 8, computing(log, 8, finished=False))  # cut at cap 8
    bucket.fill(KEYS[1:2], 2, 8, computing(log, 8, finished=True))  # finished after 1 and 2 tokens
    got, new = bucket.fill(KEYS[:2], 2, 16, computing(log, 16))
    assert new == {(0, 0), (0, 1)} and got[(1, 1)].cap == 8
    got, _ = Bucket(bucket.path).fill(KEYS[:2], 2, 16, computing(log, 16))
    assert got[(0, 0)].cap == 16  # the record drawn under the cap asked for is preferred


def test_store_layout_is_content_addressed(tmp_path):
    store = SampleStore(tmp_path, "ckpt1", {"backend": "hf", "dtype": "float32"})
    a = store.bucket({"temperature": 1.0, "seed": 3}, KEYS[:2])
    assert a.path.parent.parent == tmp_path / "sample_store" / "ckpt1"
    assert json.loads((a.path.parent / "settings.json").read_text())["seed"] == 3
    assert store.bucket({"temperature": 1.0, "seed": 3}, KEYS[1::-1]).path == a.path  # the set of chunks
    assert store.bucket({"temperature": 0.5, "seed": 3}, KEYS[:2]).path.parent != a.path.parent
    assert SampleStore(tmp_path, "ckpt1", {"backend": "vllm", "dtype": "float32"}).bucket(
        {"temperature": 1.0, "seed": 3}, KEYS[:2]).path != a.path


def test_an_unreadable_segment_is_ignored_and_recomputed(tmp_path):
    bucket, log = Bucket(tmp_path / "b"), tmp_path / "log"
    bucket.fill(KEYS[:1], 1, 8, computing(log, 8))
    seg = bucket.segments()[0]
    seg.write_bytes(seg.read_bytes()[:20])
    with pytest.warns(UserWarning, match="unreadable segment"):
        _, new = bucket.fill(KEYS[:1], 1, 8, computing(log, 8))
    assert new == {(0, 0)}


# ------------------------------------------------------------------ several processes
def _writer(path, k, cap, log, delay, barrier):
    barrier.wait()
    got, new = Bucket(path).fill(KEYS, k, cap, computing(log, cap, delay))
    assert len(got) == len(KEYS) * k


def _dies_writing(path, k, cap, log, how):
    """Fill, but die inside the segment write: half the file is on disk under its temporary name."""
    import pyarrow.parquet

    real = pyarrow.parquet.write_table

    def half_then_die(table, where, **kw):
        real(table, where, **kw)
        with open(where, "r+b") as f:
            f.truncate(os.path.getsize(where) // 2)
        if how == "exit":
            os._exit(3)
        open(str(where) + ".ready", "w").close()
        time.sleep(600)  # SIGKILLed here

    pyarrow.parquet.write_table = half_then_die
    Bucket(path).fill(KEYS, k, cap, computing(log, cap))


def _start(target, *args):
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    return proc


@pytest.mark.parametrize("ks", [(4, 4), (1, 4, 2, 3)])
def test_writers_at_once_compute_each_sample_once(tmp_path, ks):
    """Writers of one bucket at once, asking for the same or overlapping indices: every sample is
    computed once and stored once, and every segment is whole."""
    path, log = tmp_path / "b", tmp_path / "log"
    barrier = mp.get_context("spawn").Barrier(len(ks))
    procs = [_start(_writer, path, k, 8, str(log), 0.3, barrier) for k in ks]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    want = sorted((i, j) for i in range(len(KEYS)) for j in range(max(ks)))
    assert sorted(computed_slots(log)) == want
    assert sorted(records(Bucket(path))) == sorted((KEYS[i], j) for i, j in want)
    for seg in Bucket(path).segments():
        assert pq.read_table(seg).num_rows > 0
    assert not list(path.glob("*.tmp*"))


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_writer_killed_mid_write_leaves_nothing_read_as_whole(tmp_path, how):
    path, log = tmp_path / "b", tmp_path / "log"
    proc = _start(_dies_writing, path, 2, 8, str(log), how)
    if how == "sigkill":
        deadline = time.time() + 120
        while not list(path.glob("*.ready")) and time.time() < deadline and proc.is_alive():
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(120)
    assert proc.exitcode in (3, -signal.SIGKILL)
    assert list(path.glob("seg-*.parquet.tmp*"))  # the half-written file is there, under its temporary name
    bucket = Bucket(path)
    assert bucket.segments() == [] and bucket.find(KEYS, 2, 8) == {}
    # its lock died with it: the next writer computes everything and clears what it left
    got, new = bucket.fill(KEYS, 2, 8, computing(str(tmp_path / "log2"), 8))
    assert len(new) == len(KEYS) * 2 and not list(path.glob("seg-*.parquet.tmp*"))
    assert sorted(records(bucket)) == sorted((k, j) for k in KEYS for j in range(2))
