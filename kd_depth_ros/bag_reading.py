"""Opening and streaming bags for the converter, with recovery of truncated rosbag2 files.

:func:`open_reader` returns rosbags' ``AnyReader``; when a rosbag2 bag cannot be opened because a
storage file is cut short (the recorder was killed, the disk filled), it returns a
:class:`SalvageReader` over what is readable instead: for mcap every complete record up to the cut
(chunks whose bytes are all there), for sqlite3 every row whose pages are there (read from a patched
temporary copy; the bag is never modified). ``SalvageReader.recovery`` says how many messages were
recovered and lost, where the file ends, and which tools repair the bag itself.
"""
from __future__ import annotations

import mmap
import re
import shutil
import sqlite3
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kd_depth_ros.bag_topics import BagNotFoundError, BagReadError

MCAP_MAGIC = b"\x89MCAP0\r\n"
REPAIR_HINT = ("to repair the file itself: `mcap recover BAG.mcap -o fixed.mcap` (mcap CLI) or "
               "`sqlite3 BAG.db3 .recover | sqlite3 fixed.db3`, then `ros2 bag reindex` on the folder")


def bag_name(bag: Path) -> str:
    """Sequence-name prefix of a bag: its folder or file name without extension, safe characters only."""
    stem = bag.name if bag.is_dir() else bag.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "bag"


def open_reader(bag: Path):
    """An opened reader over one bag (rosbag2 folder / .db3 / .mcap file, or ROS 1 .bag): ``AnyReader``, or a
    :class:`SalvageReader` when a rosbag2 storage file is truncated. BagReadError when nothing is readable."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not bag.exists():
        raise BagNotFoundError(f"{bag}: bag not found")
    if bag.is_dir() and not (bag / "metadata.yaml").is_file():
        raise BagReadError(f"{bag}: not a rosbag2 folder (metadata.yaml missing; for a recording that was cut "
                           "short, `ros2 bag reindex` rebuilds it)")
    reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY))
    try:
        reader.open()
    except Exception as exc:  # rosbags, sqlite3, YAML, decompression... errors all mean an unreadable bag
        why = f"{type(exc).__name__}: {exc}"
        files = storage_files(bag)
        if not files:
            hint = "; for a ROS 1 bag cut short, `rosbag reindex` repairs it" if bag.suffix == ".bag" else ""
            raise BagReadError(f"{bag}: cannot open the bag (corrupt, truncated or not a bag?): {why}{hint}") from None
        salvage = SalvageReader(bag, files, why)
        if not salvage.recovered:
            salvage.close()
            raise BagReadError(f"{bag}: cannot open the bag ({why}) and no complete message could be recovered "
                               f"from {', '.join(p.name for p in files)} (corrupt or truncated?); "
                               f"{REPAIR_HINT}") from None
        return salvage
    return reader


@dataclass
class ReadFailure:
    """Set by :func:`read_messages` when reading stopped early: after how many messages, and why."""

    count: int = 0
    error: str | None = None


def read_messages(reader, connections: list, bag: Path, failure: ReadFailure | None = None
                  ) -> Iterator[tuple[str, str, Any]]:
    """(topic, msgtype, deserialised message) in log-time order. A read or decode failure raises BagReadError,
    or, given ``failure``, ends the stream there (what was read is kept) and is recorded in it."""
    iterator = reader.messages(connections=connections)
    count = 0
    while True:
        try:
            item = next(iterator, None)
            if item is None:
                return
            conn, _, raw = item
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # the reader's own errors vary by storage plugin
            text = f"{type(exc).__name__}: {exc}"
            if failure is not None:
                failure.count, failure.error = count, text
                return
            raise BagReadError(f"{bag}: reading failed after {count} messages (corrupt or truncated bag?): "
                               f"{text}") from None
        count += 1
        yield conn.topic, conn.msgtype, msg


# --------------------------------------------------------------------------- salvage
def storage_files(bag: Path) -> list[Path]:
    """The rosbag2 storage files (.mcap / .db3) of a bag folder in recording order, or the file itself."""
    if bag.is_file():
        return [bag] if bag.suffix in (".mcap", ".db3") else []
    names: list[str] = []
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        names = [str(n) for n in info.get("relative_file_paths") or []]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        pass
    files = [bag / n for n in names if (bag / n).is_file()]
    return files or sorted(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def expected_counts(bag: Path) -> dict[str, int]:
    """Messages per topic that metadata.yaml promises (empty when unknown)."""
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: int(t["message_count"]) for t in info["topics_with_message_count"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return {}


@dataclass
class _Conn:
    id: int
    topic: str
    msgtype: str


@dataclass
class _Topic:
    msgtype: str
    msgcount: int = 0
    connections: list = field(default_factory=list)


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4: pos + 4 + n]).decode(), pos + 4 + n


def _mcap_records(path: Path, cut: list) -> Iterator[tuple[int, memoryview]]:
    """(opcode, content) of every complete top-level or in-chunk record; ``cut[0]`` = the byte offset where
    reading stopped early (None when the data section ended properly)."""
    from rosbags.rosbag2.storage_mcap import decompress

    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        data = memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)) if size else memoryview(b"")
    if bytes(data[:8]) != MCAP_MAGIC:
        cut[0] = 0
        return
    pos = 8
    while True:
        if pos + 9 > len(data):
            cut[0] = pos
            return
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        content = data[pos + 9: pos + 9 + length]
        complete = pos + 9 + length <= len(data)
        if not complete:
            cut[0] = pos
            if op == 0x06:  # the last chunk is cut: an uncompressed one still holds whole records
                yield from _chunk_records(content, decompress, partial=True)
            return
        if op in (0x02, 0x0F):  # footer, data end: everything after is the summary
            return
        if op == 0x06:
            yield from _chunk_records(content, decompress)
        else:
            yield op, content
        pos += 9 + length


def _chunk_records(content: memoryview, decompress, partial: bool = False) -> Iterator[tuple[int, memoryview]]:
    """The complete records inside a chunk (of a cut one only when it is uncompressed); none from a damaged one."""
    try:
        _, _, size, crc = struct.unpack_from("<QQQI", content, 0)
        compression, at = _string(content, 28)
        (csize,) = struct.unpack_from("<Q", content, at)
        if partial:
            if compression:
                return
            raw = content[at + 8: at + 8 + csize]
        else:
            raw = memoryview(decompress(bytes(content[at + 8: at + 8 + csize]), compression, size, crc))
    except Exception:  # a damaged chunk: what follows may still be whole
        return
    inner = 0
    while inner + 9 <= len(raw):
        iop, ilen = raw[inner], struct.unpack_from("<Q", raw, inner + 1)[0]
        if inner + 9 + ilen > len(raw):
            return
        yield iop, raw[inner + 9: inner + 9 + ilen]
        inner += 9 + ilen


def _patched_sqlite(path: Path, tmp: Path) -> Path:
    """A copy of a (possibly truncated) .db3 that SQLite opens: whole pages only, header page count = pages."""
    copy = tmp / path.name
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as handle:
        head = handle.read(100)
        if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
            return copy
        page = struct.unpack(">H", head[16:18])[0]
        page = 65536 if page == 1 else page
        pages = copy.stat().st_size // page
        handle.truncate(pages * page)
        handle.seek(28)
        handle.write(struct.pack(">I", pages))
    return copy


class SalvageReader:
    """Reads the complete messages of (possibly truncated) rosbag2 storage files; AnyReader's interface as the
    converter uses it: ``topics``, ``connections``, ``messages(connections)``, ``deserialize``, ``close``."""

    def __init__(self, bag: Path, files: list[Path], open_error: str) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.bag, self.files, self.open_error = bag, files, open_error
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        self._tmp = Path(tempfile.mkdtemp(prefix="kd-depth-salvage-"))
        self.connections: list[_Conn] = []
        self.topics: dict[str, _Topic] = {}
        self._plans: list[tuple[Path, Any]] = []  # per file: what to stream
        self.problems: list[str] = []
        counts: Counter[str] = Counter()
        for path in files:
            try:
                if path.suffix == ".mcap":
                    self._scan_mcap(path, counts)
                else:
                    self._scan_sqlite(path, counts)
            except (OSError, sqlite3.Error, struct.error, ValueError, UnicodeDecodeError) as exc:
                self.problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc})")
        for conn in self.connections:
            topic = self.topics.setdefault(conn.topic, _Topic(conn.msgtype))
            topic.connections.append(conn)
            topic.msgcount = counts[conn.topic]
        self.counts = counts
        self.recovered = sum(counts.values())

    @property
    def recovery(self) -> str:
        """One line: what was recovered, what was lost (per topic, when metadata.yaml counts them) and where."""
        expected = expected_counts(self.bag)
        total, got = sum(expected.values()), sum(self.counts.values())
        lost = {t: n - self.counts[t] for t, n in expected.items() if n > self.counts[t]}
        text = f"truncated bag ({self.open_error}); recovered {got} complete messages, "
        text += f"{total - got} of {total} lost" if expected else "an unknown number lost (metadata.yaml has no counts)"
        if lost:
            text += " (" + ", ".join(f"{t} {n}" for t, n in sorted(lost.items())) + ")"
        return "; ".join([text, *self.problems, REPAIR_HINT])

    # ---- mcap
    def _scan_mcap(self, path: Path, counts: Counter) -> None:
        schemas: dict[int, str] = {}
        channels: dict[int, _Conn] = {}
        cut: list = [None]
        last_time, n = None, 0
        for op, rec in _mcap_records(path, cut):
            if op == 0x03:
                (sid,) = struct.unpack_from("<H", rec, 0)
                schemas[sid], _ = _string(rec, 2)
            elif op == 0x04:
                cid, sid = struct.unpack_from("<HH", rec, 0)
                topic, _ = _string(rec, 4)
                conn = _Conn(len(self.connections), topic, schemas.get(sid, ""))
                channels[cid] = conn
                self.connections.append(conn)
            elif op == 0x05:
                cid, _, log_time = struct.unpack_from("<HIQ", rec, 0)
                if cid in channels:
                    counts[channels[cid].topic] += 1
                    n += 1
                    last_time = log_time
        if cut[0] is not None:
            after = f", last complete message at log time {last_time / 1e9:.3f} s" if last_time is not None else ""
            self.problems.append(f"{path.name} ({path.stat().st_size} bytes) is cut inside the record starting at "
                                 f"byte {cut[0]} ({n} complete messages before the cut{after})")
        self._plans.append((path, channels))

    def _stream_mcap(self, path: Path, channels: dict[int, _Conn], wanted: set[int]):
        for op, rec in _mcap_records(path, [None]):
            if op == 0x05:
                cid, _, log_time, _ = struct.unpack_from("<HIQQ", rec, 0)
                conn = channels.get(cid)
                if conn is not None and conn.id in wanted:
                    yield conn, log_time, bytes(rec[22:])

    # ---- sqlite3
    def _scan_sqlite(self, path: Path, counts: Counter) -> None:
        db = sqlite3.connect(f"file:{_patched_sqlite(path, self._tmp)}?immutable=1", uri=True)
        topics = {}
        for tid, name, msgtype in db.execute("SELECT id, name, type FROM topics"):
            topics[tid] = _Conn(len(self.connections), name, msgtype)
            self.connections.append(topics[tid])
        rows, bad, ids = [], [], self._row_ids(db, sum(expected_counts(self.bag).values()))
        for rowid in ids:
            try:
                row = db.execute("SELECT topic_id, timestamp FROM messages WHERE id = ?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                bad.append(rowid)
                continue
            if row is not None and row[0] in topics:
                rows.append((row[1], rowid, topics[row[0]]))
                counts[topics[row[0]].topic] += 1
        if bad:
            self.problems.append(f"{path.name}: rows {bad[0]}..{bad[-1]} ({len(bad)} messages) are in missing pages")
        rows.sort(key=lambda r: (r[0], r[1]))
        self._plans.append((path, (db, rows, counts)))

    @staticmethod
    def _row_ids(db: sqlite3.Connection, expected: int) -> list[int]:
        """Message row ids to try: a full scan when the table is whole, else 1 .. the largest id found (or the
        message count metadata.yaml promises)."""
        try:
            return [r[0] for r in db.execute("SELECT id FROM messages ORDER BY id")]
        except sqlite3.DatabaseError:
            pass
        top = expected
        for query in ("SELECT max(id) FROM messages", "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"):
            try:
                top = max(top, int(db.execute(query).fetchone()[0] or 0))
            except (sqlite3.DatabaseError, TypeError):
                continue
        if not top:  # probe upwards until a long run of missing ids
            misses, rowid = 0, 0
            while misses < 1000:
                rowid += 1
                try:
                    found = db.execute("SELECT 1 FROM messages WHERE id = ?", (rowid,)).fetchone()
                except sqlite3.DatabaseError:
                    found = None
                misses = 0 if found else misses + 1
                top = rowid if found else top
        return list(range(1, top + 1))

    def _stream_sqlite(self, plan, wanted: set[int]):
        db, rows, counts = plan
        for log_time, rowid, conn in rows:
            if conn.id not in wanted:
                continue
            try:
                (data,) = db.execute("SELECT data FROM messages WHERE id = ?", (rowid,)).fetchone()
            except (sqlite3.DatabaseError, TypeError):  # its data pages are missing
                counts[conn.topic] -= 1
                self.problems.append(f"row {rowid} ({conn.topic}): data pages missing")
                continue
            yield conn, log_time, data

    # ---- AnyReader's interface
    def messages(self, connections: list | None = None) -> Iterator[tuple[_Conn, int, bytes]]:
        wanted = {c.id for c in (connections or self.connections)}
        for path, plan in self._plans:
            if path.suffix == ".mcap":
                yield from self._stream_mcap(path, plan, wanted)
            else:
                yield from self._stream_sqlite(plan, wanted)

    def deserialize(self, raw: bytes, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        for path, plan in self._plans:
            if path.suffix != ".mcap":
                plan[0].close()
        shutil.rmtree(self._tmp, ignore_errors=True)
