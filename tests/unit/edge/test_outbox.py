"""The durable outbox: ids, durability across reopen and crash, the cap, acks, threads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxFull, StationRequest, clock_first_id

CAP = 1 << 20


def _open(path: Path, *, max_bytes: int = CAP, sync: str = "full", first_id: int = 1) -> Outbox:
    return Outbox(path, max_bytes=max_bytes, sync=sync, first_id=first_id)


def test_append_returns_increasing_ids_and_pending_reads_them_in_order(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.db", sync="normal")
    ids = [box.append(f"m{i}".encode()) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert box.pending(limit=10) == [(i, f"m{k}".encode()) for k, i in enumerate(ids)]
    assert box.pending(limit=2, after=ids[1]) == [(ids[2], b"m2"), (ids[3], b"m3")]
    assert box.depth() == 5


def test_ack_deletes_up_to_the_id_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = _open(path, sync="normal")
    ids = box.append_many([b"a", b"b", b"c"])
    assert box.ack(ids[1]) == 2
    assert box.ack(ids[1]) == 0  # a repeated ack deletes nothing more
    assert box.depth() == 1
    assert box.ack(ids[2]) == 1
    assert box.depth() == 0 and box.pending(limit=5) == []
    later = box.append(b"d")
    box.close()
    # Even after every row was deleted and the file reopened, ids keep growing.
    reopened = _open(path, sync="normal")
    last = reopened.append(b"e")
    assert ids[2] < later < last
    reopened.close()


def test_results_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = _open(path)
    ids = box.append_many([b"x", b"y"])
    box.ack(ids[0])
    box.close()
    reopened = _open(path)
    assert reopened.pending(limit=10) == [(ids[1], b"y")]
    assert reopened.depth() == 1
    reopened.close()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_an_append_that_returned_survives_sigkill(tmp_path: Path, sync: str) -> None:
    """A process killed right after append returned: the row is in the file (both modes)."""
    path = tmp_path / "o.db"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from edge.outbox import Outbox\n"
        f"box = Outbox(Path({str(path)!r}), max_bytes=1 << 20, sync={sync!r})\n"
        "ids = [box.append(b'result-%d' % i) for i in range(3)]\n"
        "print(ids[-1], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    last = int(done.stdout.strip())
    box = _open(path)
    rows = box.pending(limit=10)
    assert [m for _, m in rows] == [b"result-0", b"result-1", b"result-2"]
    assert rows[-1][0] == last
    box.close()


def test_first_id_applies_to_a_new_file_only(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = _open(path, first_id=1_000_000)
    assert box.append(b"a") == 1_000_000
    box.close()
    reopened = _open(path, first_id=5)  # an existing file keeps its own counter
    assert reopened.append(b"b") == 1_000_001
    reopened.close()


def test_a_recreated_outbox_continues_above_the_lost_one(tmp_path: Path) -> None:
    """The node seeds ids from the clock, so losing the file cannot make the fab drop
    new results as duplicates of old sequences."""
    path = tmp_path / "o.db"
    box = _open(path, first_id=clock_first_id())
    old = box.append_many([b"a"] * 100)
    box.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    recreated = _open(path, first_id=clock_first_id())
    assert recreated.append(b"b") > old[-1]
    recreated.close()


def test_append_at_the_cap_raises_outbox_full_and_ack_makes_room(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.db", max_bytes=1 << 16, sync="normal")
    message = b"r" * 1000
    stored: list[int] = []
    with pytest.raises(OutboxFull, match="cap"):
        for _ in range(200):
            stored.append(box.append(message))
    assert 30 < len(stored) < 65  # ~64 KiB of pages, less the schema's
    assert box.size_bytes() <= box.max_bytes
    # Nothing was dropped to make room.
    assert [i for i, _ in box.pending(limit=500)] == stored
    with pytest.raises(OutboxFull):
        box.append_many([message, message])  # all or nothing: none of the two stored
    assert box.depth() == len(stored)
    box.ack(stored[len(stored) // 2])
    box.append(message)
    box.close()


def test_append_many_is_all_or_nothing_when_one_insert_fails(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = _open(path, sync="normal")
    box.append(b"before")
    # Make SQLite refuse one particular row, as a failing disk write would refuse any.
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.message = X'626164'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        box.append_many([b"ok", b"bad", b"ok too"])
    assert [m for _, m in box.pending(limit=10)] == [b"before"]
    assert box.depth() == 1
    box.close()


def test_concurrent_appends_and_acks_from_threads_lose_nothing(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.db", sync="normal")
    per_thread, threads = 50, 4
    ids: list[list[int]] = [[] for _ in range(threads)]
    acked: list[int] = []
    start = threading.Barrier(threads + 1)

    def writer(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            ids[k].append(box.append(f"{k}-{i}".encode()))

    def acker() -> None:
        start.wait()
        for _ in range(20):
            rows = box.pending(limit=5)
            if rows:
                acked.append(box.ack(rows[-1][0]))

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    workers.append(threading.Thread(target=acker))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    every = [i for chunk in ids for i in chunk]
    assert len(set(every)) == per_thread * threads
    for chunk in ids:
        assert chunk == sorted(chunk)
    left = box.pending(limit=1000)
    assert box.depth() == len(left) == per_thread * threads - sum(acked)
    assert {i for i, _ in left} <= set(every)
    box.close()


def test_bad_arguments_and_use_after_close(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        _open(tmp_path / "a.db", sync="sometimes")
    with pytest.raises(ValueError, match="64 KiB"):
        _open(tmp_path / "b.db", max_bytes=1000)
    box = _open(tmp_path / "c.db")
    with pytest.raises(ValueError, match="limit"):
        box.pending(limit=0)
    box.close()
    box.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        box.append(b"x")


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = _open(path)
    box.append(b"x")
    assert os.path.exists(f"{path}-wal")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    box.close()


def _request(wafer: str, at: int, answer: bytes = b"answer") -> StationRequest:
    return StationRequest(wafer_id=wafer, tested_at_us=at, answer=answer)


def test_a_remembered_station_request_is_stored_once_and_answered(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.db", sync="normal")
    first = box.append_many([b"r1"], requests=[_request("W", 100, b"first")])
    # The same request again (a retry racing the first call) and twice in one call.
    again = box.append_many(
        [b"r2", b"r3", b"r4", b"r5"],
        requests=[_request("W", 100), _request("W", 101), _request("W", 101), None],
    )
    assert again[0] == first[0] and again[1] == again[2] and again[3] > again[1] > first[0]
    assert [m for _, m in box.pending(limit=10)] == [b"r1", b"r3", b"r5"]
    assert box.depth() == 3
    assert box.answers([("W", 100), ("W", 999)]) == {("W", 100): (first[0], b"first")}
    box.ack(again[3])  # delivered to the fab: the answer is still remembered
    assert box.answers([("W", 100)]) == {("W", 100): (first[0], b"first")}
    box.close()
    reopened = _open(tmp_path / "o.db", sync="normal")
    assert reopened.answers([("W", 101)]) == {("W", 101): (again[1], b"answer")}
    reopened.close()


def test_station_requests_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    now = [1_000_000.0]
    box = Outbox(
        tmp_path / "o.db",
        max_bytes=CAP,
        sync="normal",
        request_retention_s=60,
        clock=lambda: now[0],
    )
    (first,) = box.append_many([b"old"], requests=[_request("W", 1)])
    now[0] += 61
    assert box.answers([("W", 1)]) == {}
    (second,) = box.append_many([b"new"], requests=[_request("W", 1)])
    assert second > first  # forgotten: the same key is a new result
    box.close()


def test_an_outbox_made_before_station_requests_gains_their_table(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, message BLOB NOT NULL)"
    )
    conn.execute("INSERT INTO outbox (message) VALUES (x'01')")
    conn.commit()
    conn.close()
    box = _open(path, sync="normal")
    assert box.depth() == 1
    assert box.append_many([b"m"], requests=[_request("W", 5)]) == [2]
    assert box.answers([("W", 5)]) == {("W", 5): (2, b"answer")}
    box.close()
