"""The E-step's sample store: thoughts drawn once per checkpoint, reused across K and across trials.

Sample j of a chunk is a pure function of (checkpoint, prompt ids, sampling settings, j): the
samplers draw it from seeded noise that does not depend on batching or on which other indices are
drawn with it (``Sampler.sample(first=...)``). So a K=4 E-step and a K=8 one from the same
checkpoint share samples 0-3, and a sweep's trials that start from one warm start share their
iteration-1 samples. The store keeps each drawn sample with its log q and log p, so a later E-step
takes what is stored and draws (and scores) only the indices that are missing.

Layout, content-addressed under the results folder (docs/design.md "Sample store")::

    <results>/sample_store/<checkpoint key>/<settings hash>/settings.json
    <results>/sample_store/<checkpoint key>/<settings hash>/<bucket>/seg-<time>-<rand>.parquet
    <results>/sample_store/<checkpoint key>/<settings hash>/<bucket>/.lock

- checkpoint key: the cache key of the stage that wrote the sampling model (its marker's finish
  time is in the settings, so a checkpoint recomputed under the same key never reads the old one's
  samples);
- settings: what changes the distribution sampled: backend (hf and vllm draw differently from one
  seed), dtype, vLLM's fan-out, temperature, the seed the E-step passes the sampler, stop and
  banned tokens. Not the thought cap: a record keeps the cap it was drawn under, and a sample that
  finished (hit EoL) before a cap is that cap's sample too;
- bucket: a hash of the chunk keys of one sampler call (one cache group of documents); a chunk key
  hashes the prompt ids and the scoring frame (context, SoL PRIOR, EoL, X), so a stored log p is
  the log p of that very sequence;
- a record: chunk key, sample index j, cap, token ids, text, finished, log q (incl. the EoL stop),
  log p.

Writers: a segment is written whole (temporary name, then ``os.replace``); readers list only
``seg-*.parquet``, never a temporary file, so a killed writer leaves nothing read as whole. A writer
fills a bucket under its ``fcntl`` lock and looks again once it holds it: two writers of the same
missing indices never both compute them, the second takes what the first wrote. Temporary files
found under the lock are a dead writer's and are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import struct
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from platform.files import write_atomic, write_json_atomic
from platform.stage import MARKER

STORE_DIR = "sample_store"
FORMAT = 1  # bump when a record comes to mean something else: old records are then not read
COLUMNS = ("key", "j", "cap", "token_ids", "text", "finished", "log_q", "log_p")

Slot = tuple[int, int]  # (position of the chunk in the call, sample index j)


@dataclass(frozen=True)
class StoredSample:
    """One sample as the E-step uses it (``token_ids``, ``text``, ``finished``, ``logprob_sum`` as
    in ``SampleOut``) with the log p of its scoring sequence and the cap it was drawn under."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool
    logprob_sum: float  # log q, the EoL stop included
    log_p: float
    cap: int

    def valid_for(self, cap: int) -> bool:
        """Drawn under ``cap``, or finished before it: the stop token came at step len < cap, which
        a draw under ``cap`` reaches too (the noise of step t does not depend on the cap)."""
        return self.cap == cap or (self.finished and len(self.token_ids) < cap)


def chunk_key(prompt_ids: Sequence[int], frame: Sequence[Sequence[int]]) -> str:
    """A chunk's key: its prompt ids and the pieces of its scoring sequence around the thought."""
    h = hashlib.blake2b(digest_size=16)
    for part in (prompt_ids, *frame):
        h.update(struct.pack(f"<q{len(part)}q", len(part), *part))
    return h.hexdigest()


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps({**settings, "format": FORMAT}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def results_of(out_dir: Path) -> Optional[Path]:
    """The results folder of a stage folder ``<results>/artifacts/<stage>/<key>/...``, else None."""
    out_dir = Path(out_dir).resolve()
    return next((p.parent for p in out_dir.parents if p.name == "artifacts"), None)


class SampleStore:
    """The samples of one checkpoint and sampler (``identity``: backend, dtype, fan-out, ...)."""

    def __init__(self, results: Path, checkpoint: str, identity: dict[str, Any]):
        self.base = Path(results) / STORE_DIR / checkpoint
        self.identity = dict(identity)

    def bucket(self, draw: dict[str, Any], keys: Sequence[str]) -> "Bucket":
        """The bucket of one sampler call: ``draw`` holds the call's settings (temperature, seed, ...)."""
        settings = {**self.identity, **draw}
        root = self.base / settings_hash(settings)
        if not (root / "settings.json").exists():
            root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(root / "settings.json", {**settings, "format": FORMAT})
        name = hashlib.blake2b("\n".join(sorted(set(keys))).encode(), digest_size=12).hexdigest()
        return Bucket(root / name)


class Bucket:
    """The stored samples of one set of chunks, and the lock that fills it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def segments(self) -> list[Path]:
        """Whole segments in the order they were written (temporary files never match)."""
        return sorted(self.path.glob("seg-*.parquet"))

    def read(self) -> dict[tuple[str, int], list[StoredSample]]:
        """Every record by (chunk key, j), first written first."""
        import pyarrow.parquet as pq

        out: dict[tuple[str, int], list[StoredSample]] = {}
        for seg in self.segments():
            try:
                cols = pq.read_table(seg, columns=list(COLUMNS)).to_pydict()
            except Exception as e:  # pyarrow raises several types; a segment it cannot read is recomputed
                warnings.warn(f"sample store: ignoring unreadable segment {seg}: {e}")
                continue
            for key, j, cap, ids, text, fin, lq, lp in zip(*(cols[c] for c in COLUMNS)):
                out.setdefault((key, j), []).append(StoredSample(tuple(ids), text, fin, lq, lp, cap))
        return out

    def find(self, keys: Sequence[str], num_samples: int, cap: int) -> dict[Slot, StoredSample]:
        """The stored samples of slots (i, j), j < ``num_samples``, valid under ``cap`` (drawn under
        it preferred, else the first written)."""
        records = self.read() if self.path.is_dir() else {}
        found: dict[Slot, StoredSample] = {}
        for i, key in enumerate(keys):
            for j in range(num_samples):
                valid = [r for r in records.get((key, j), ()) if r.valid_for(cap)]
                if valid:
                    found[(i, j)] = next((r for r in valid if r.cap == cap), valid[0])
        return found

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the bucket's lock; remove what dead writers left (only lock holders write)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                for tmp in self.path.glob("seg-*.parquet.tmp*"):
                    tmp.unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write(self, keys: Sequence[str], samples: dict[Slot, StoredSample]) -> Optional[Path]:
        """One new segment holding ``samples`` (call under :meth:`locked`)."""
        if not samples:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        slots = sorted(samples)
        rows = [samples[s] for s in slots]
        table = pa.table({
            "key": pa.array([keys[i] for i, _ in slots], pa.string()),
            "j": pa.array([j for _, j in slots], pa.int32()),
            "cap": pa.array([r.cap for r in rows], pa.int32()),
            "token_ids": pa.array([list(r.token_ids) for r in rows], pa.list_(pa.int32())),
            "text": pa.array([r.text for r in rows], pa.string()),
            "finished": pa.array([r.finished for r in rows], pa.bool_()),
            "log_q": pa.array([r.logprob_sum for r in rows], pa.float64()),
            "log_p": pa.array([r.log_p for r in rows], pa.float64()),
        })
        path = self.path / f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
        return path

    def fill(self, keys: Sequence[str], num_samples: int, cap: int,
             compute: Callable[[dict[int, list[int]]], dict[Slot, StoredSample]]) -> tuple[dict[Slot, StoredSample], set[Slot]]:
        """Samples 0..num_samples-1 of every chunk: the stored ones, and ``compute(missing)`` for the
        rest (``missing``: chunk position -> its missing indices), stored before the lock is let go.
        Returns every slot's sample and the slots computed here."""
        found = self.find(keys, num_samples, cap)
        if len(found) == len(keys) * num_samples:
            return found, set()
        with self.locked():
            found = self.find(keys, num_samples, cap)  # another writer may have filled them meanwhile
            missing = missing_slots(len(keys), num_samples, found)
            new = compute(missing) if missing else {}
            self.write(keys, new)
        return {**found, **new}, set(new)


def missing_slots(num_chunks: int, num_samples: int, found: dict[Slot, Any]) -> dict[int, list[int]]:
    """Chunk position -> the indices below ``num_samples`` not in ``found`` (chunks missing none left out)."""
    out = {i: [j for j in range(num_samples) if (i, j) not in found] for i in range(num_chunks)}
    return {i: js for i, js in out.items() if js}


def index_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices as runs (first, count) of consecutive ones: ``[0, 1, 2, 5]`` -> ``[(0, 3), (5, 1)]``."""
    runs: list[tuple[int, int]] = []
    for j in sorted(indices):
        if runs and runs[-1][0] + runs[-1][1] == j:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((j, 1))
    return runs


def marker_stamp(stage_dir: Path) -> Optional[str]:
    """When the stage in ``stage_dir`` finished (its completion marker), to tell a recomputed
    checkpoint from the one its key first named; None without a marker."""
    marker = Path(stage_dir) / MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return f"{record.get('ended_at')}:{record.get('job_id')}"
