"""A strict zip reader: one parse of an archive's bytes, so what is checked is what is loaded.

Zip readers disagree on malformed archives: with two members of the same name Python's :mod:`zipfile` reads
the last and PyTorch's miniz-based reader may read the first; a local header may name another file than its
central-directory entry; a declared size may lie. Any such disagreement lets an archive show a checker one
thing and a loader another. So :func:`read_members` walks the central directory itself and refuses
everything a well-formed archive never holds:

* duplicate names; names that are absolute, hold ``..``, ``.`` or empty components, backslashes or NUL;
* a local header that disagrees with its central entry (name, method, flags, sizes, CRC), or a data
  descriptor that disagrees; members that overlap, or lie outside the file or inside the central directory;
* compression other than stored or deflate; the encryption flags; trailing or leading junk; multi-disk zips;
* declared sizes over :class:`ZipLimits` (absolute, and relative to the file's size, checked *before*
  anything is inflated), and a member whose inflated bytes differ from its declared size or CRC-32.

Inflation is bounded (``zlib.decompressobj`` with ``max_length``), so a zip bomb costs at most its declared
size, which the limits cap. :func:`write_stored` rebuilds a canonical archive (unique names, stored) from
the verified members, so a second reader (torch's) sees exactly those bytes and nothing else.
"""

from __future__ import annotations

import io
import itertools
import struct
import zipfile
import zlib
from dataclasses import dataclass

_LOCAL = 0x04034B50
_CENTRAL = 0x02014B50
_END = 0x06054B50
_END64 = 0x06064B50
_END64_LOCATOR = 0x07064B50
_DESCRIPTOR = 0x08074B50
_ZIP64_EXTRA = 0x0001
_STORED, _DEFLATED = 0, 8
#: General-purpose flag bits a plain archive may set: deflate speed (1, 2), data descriptor (3), UTF-8
#: names (11). Encryption (0, 6), patched data (5) and a masked central directory (13) are refused.
_ALLOWED_FLAGS = 0b0000_1000_0000_1110
_DESCRIPTOR_FLAG = 0b1000
_FULL32 = 0xFFFFFFFF


class ZipRefused(ValueError):
    """The bytes are not an archive this reader vouches for; the message names the first problem found."""


@dataclass(frozen=True)
class ZipLimits:
    """How much an archive may inflate to. Weights are stored uncompressed, so a real archive's members
    add up to about its file size; ``ratio`` is generous for compressed JSON and still stops a bomb."""

    max_members: int = 10_000
    max_total_bytes: int = 64 << 30
    ratio: int = 8
    slack_bytes: int = 1 << 20

    def total_cap(self, file_size: int) -> int:
        return min(self.max_total_bytes, self.ratio * file_size + self.slack_bytes)


@dataclass(frozen=True)
class _Entry:
    name: str
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    offset: int


def read_members(raw: bytes, limits: ZipLimits = ZipLimits()) -> dict[str, bytes]:
    """The verified ``{name: bytes}`` of the zip archive ``raw``, in central-directory order."""
    view = memoryview(raw)
    directory_start, directory_end, count = _find_central_directory(view)
    if count > limits.max_members:
        raise ZipRefused(f"it holds {count} members (at most {limits.max_members})")
    entries = _central_entries(view, directory_start, directory_end, count)
    total = sum(entry.size for entry in entries)
    cap = limits.total_cap(len(raw))
    if total > cap:  # checked before inflating anything: a bomb is refused by its declared sizes
        raise ZipRefused(f"its members would inflate to {total} bytes, over the limit of {cap} for its size")
    spans = [_local_span(view, entry, directory_start) for entry in entries]
    _refuse_overlaps(spans, entries)
    return {
        entry.name: _inflate(view, entry, start) for entry, (start, _, _) in zip(entries, spans, strict=True)
    }


def write_stored(members: dict[str, bytes]) -> bytes:
    """A canonical archive of ``members``: one stored entry per name, nothing else."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _unpack(view: memoryview, fmt: str, at: int) -> tuple[int, ...]:
    if at < 0 or at + struct.calcsize(fmt) > len(view):
        raise ZipRefused(f"a header at byte {at} runs past the end of the file (truncated?)")
    return struct.unpack_from(fmt, view, at)


def _find_central_directory(view: memoryview) -> tuple[int, int, int]:
    """(start, end, member count) of the central directory, from the end-of-central-directory records."""
    end = _end_record_offset(view)
    _, disk, start_disk, on_disk, count, size, start, comment = _unpack(view, "<IHHHHIIH", end)
    if end + 22 + comment != len(view):
        raise ZipRefused("bytes follow its end-of-central-directory record")
    if disk or start_disk or on_disk != count:
        raise ZipRefused("it is a multi-disk (split) zip")
    directory_end = end
    has_locator = end >= 20 and struct.unpack_from("<I", view, end - 20)[0] == _END64_LOCATOR
    if has_locator or _FULL32 in (size, start) or count == 0xFFFF:  # torch's writer always adds zip64 records
        directory_end, count64, size64, start64 = _zip64_directory(view, end)
        for small, large in ((count, count64), (size, size64), (start, start64)):
            if small not in (large, _FULL32, 0xFFFF):
                raise ZipRefused("its zip64 end record disagrees with its end-of-central-directory record")
        count, size, start = count64, size64, start64
    if start + size != directory_end:
        raise ZipRefused("its central directory is not where its end record says")
    return start, directory_end, count


def _end_record_offset(view: memoryview) -> int:
    lowest = max(0, len(view) - 22 - 0xFFFF)
    tail = bytes(view[lowest:])
    at = tail.rfind(struct.pack("<I", _END))
    if at < 0 or len(tail) - at < 22:
        raise ZipRefused("it has no end-of-central-directory record (not a zip file, or truncated)")
    return lowest + at


def _zip64_directory(view: memoryview, end: int) -> tuple[int, int, int, int]:
    signature, disk, record, disks = _unpack(view, "<IIQI", end - 20)
    if signature != _END64_LOCATOR or disk or disks != 1 or record + 56 != end - 20:
        raise ZipRefused("its zip64 end-of-central-directory locator is malformed")
    fields = _unpack(view, "<IQHHIIQQQQ", record)
    if fields[0] != _END64 or fields[1] != 44 or fields[4] or fields[5] or fields[6] != fields[7]:
        raise ZipRefused("its zip64 end-of-central-directory record is malformed")
    return record, fields[7], fields[8], fields[9]


def _central_entries(view: memoryview, start: int, end: int, count: int) -> list[_Entry]:
    entries, names, at = [], set(), start
    for _ in range(count):
        entry, at = _central_entry(view, at, end)
        if entry.name in names:
            raise ZipRefused(f"it holds {entry.name!r} twice (readers disagree on which copy they read)")
        names.add(entry.name)
        entries.append(entry)
    if at != end:
        raise ZipRefused("its central directory holds more than its end record counts")
    return entries


def _central_entry(view: memoryview, at: int, end: int) -> tuple[_Entry, int]:
    fields = _unpack(view, "<IHHHHHHIIIHHHHHII", at)
    signature, flags, method, crc = fields[0], fields[3], fields[4], fields[7]
    compressed, size, name_len, extra_len, comment_len = (
        fields[8],
        fields[9],
        fields[10],
        fields[11],
        fields[12],
    )
    disk, offset = fields[13], fields[16]
    following = at + 46 + name_len + extra_len + comment_len
    if signature != _CENTRAL or following > end:
        raise ZipRefused(f"its central directory is malformed at byte {at}")
    if disk:
        raise ZipRefused("it is a multi-disk (split) zip")
    raw_name = bytes(view[at + 46 : at + 46 + name_len])
    name = _checked_name(raw_name)
    _check_method_and_flags(name, method, flags)
    extra = bytes(view[at + 46 + name_len : at + 46 + name_len + extra_len])
    size, compressed, offset = _zip64_values(extra, name, (size, compressed, offset))
    return _Entry(name, flags, method, crc, compressed, size, offset), following


def _checked_name(raw_name: bytes) -> str:
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZipRefused(f"a member name is not UTF-8 ({raw_name[:60]!r})") from exc
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ZipRefused(f"it holds a member named {name[:200]!r} (an absolute, traversing or empty path)")
    return name


def _check_method_and_flags(name: str, method: int, flags: int) -> None:
    if flags & 0b0100_0001:
        raise ZipRefused(f"its member {name!r} is encrypted")
    if flags & ~_ALLOWED_FLAGS:
        raise ZipRefused(f"its member {name!r} sets zip flags {flags:#06x} that a plain archive never sets")
    if method not in (_STORED, _DEFLATED):
        raise ZipRefused(f"its member {name!r} uses compression method {method} (only stored and deflate)")


def _zip64_values(extra: bytes, name: str, values: tuple[int, int, int]) -> tuple[int, int, int]:
    """(size, compressed size, offset), each saturated 32-bit value replaced from the zip64 extra field."""
    wanted = [value == _FULL32 for value in values]
    if not any(wanted):
        return values
    found = None
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == _ZIP64_EXTRA:
            found = extra[at + 4 : at + 4 + length]
        at += 4 + length
    if found is None or len(found) < 8 * sum(wanted):
        raise ZipRefused(f"its member {name!r} lacks the zip64 sizes its header points to")
    replaced, position = [], 0
    for value, needs in zip(values, wanted, strict=True):
        if needs:
            value = struct.unpack_from("<Q", found, position)[0]
            position += 8
        replaced.append(value)
    return replaced[0], replaced[1], replaced[2]


def _local_span(view: memoryview, entry: _Entry, directory_start: int) -> tuple[int, int, int]:
    """(data start, span start, span end) of ``entry``, after checking its local header against it."""
    fields = _unpack(view, "<IHHHHHIIIHH", entry.offset)
    signature, flags, method, crc, compressed, size, name_len, extra_len = (
        fields[0],
        fields[2],
        fields[3],
        fields[6],
        fields[7],
        fields[8],
        fields[9],
        fields[10],
    )
    name_at = entry.offset + 30
    if signature != _LOCAL:
        raise ZipRefused(f"its member {entry.name!r} points to no local header")
    if bytes(view[name_at : name_at + name_len]) != entry.name.encode("utf-8"):
        raise ZipRefused(f"its member {entry.name!r} has a local header naming another file")
    if method != entry.method or flags != entry.flags:
        raise ZipRefused(f"its member {entry.name!r} has a local header that disagrees on method or flags")
    extra = bytes(view[name_at + name_len : name_at + name_len + extra_len])
    data_start = name_at + name_len + extra_len
    data_end = data_start + entry.compressed_size
    if data_end > directory_start:
        raise ZipRefused(
            f"its member {entry.name!r} runs into the central directory (declared size too large)"
        )
    local = (size, compressed)
    if _FULL32 in local:
        local = _zip64_values(extra, entry.name, (size, compressed, 0))[:2]
    declared = (crc, *local)
    expected = (entry.crc, entry.size, entry.compressed_size)
    described = entry.flags & _DESCRIPTOR_FLAG
    if declared != expected and not (described and declared == (0, 0, 0)):
        raise ZipRefused(f"its member {entry.name!r} has a local header that disagrees on size or CRC")
    span_end = data_end + (_descriptor_length(view, entry, data_end) if described else 0)
    if span_end > directory_start:
        raise ZipRefused(f"its member {entry.name!r} runs into the central directory")
    return data_start, entry.offset, span_end


def _descriptor_length(view: memoryview, entry: _Entry, at: int) -> int:
    """The length of the data descriptor at ``at``, which must repeat the central entry's values."""
    has_signature = at + 4 <= len(view) and struct.unpack_from("<I", view, at)[0] == _DESCRIPTOR
    body = at + 4 if has_signature else at
    for fmt in ("<III", "<IQQ"):
        fits = body + struct.calcsize(fmt) <= len(view)
        if fits and struct.unpack_from(fmt, view, body) == (entry.crc, entry.compressed_size, entry.size):
            return body - at + struct.calcsize(fmt)
    raise ZipRefused(f"its member {entry.name!r} has a data descriptor that disagrees with its header")


def _refuse_overlaps(spans: list[tuple[int, int, int]], entries: list[_Entry]) -> None:
    ordered = sorted((start, end, entry.name) for (_, start, end), entry in zip(spans, entries, strict=True))
    for (_, end, name), (start, _, other) in itertools.pairwise(ordered):
        if start < end:
            raise ZipRefused(f"its members {name!r} and {other!r} overlap")
    if ordered and ordered[0][0] != 0:
        raise ZipRefused("bytes precede its first member")


def _inflate(view: memoryview, entry: _Entry, start: int) -> bytes:
    stored = view[start : start + entry.compressed_size]
    if entry.method == _STORED:
        if entry.compressed_size != entry.size:
            raise ZipRefused(f"its stored member {entry.name!r} declares two different sizes")
        data = bytes(stored)
    else:
        data = _bounded_inflate(stored, entry)
    if zlib.crc32(data) != entry.crc:
        raise ZipRefused(f"its member {entry.name!r} fails its CRC-32 check (the file is corrupt)")
    return data


def _bounded_inflate(stored: memoryview, entry: _Entry) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:  # max_length: never more than one byte past the declared size, whatever the stream says
        data = inflater.decompress(stored, entry.size + 1)
    except zlib.error as exc:
        raise ZipRefused(f"its member {entry.name!r} is not a valid deflate stream ({exc})") from exc
    if len(data) != entry.size or not inflater.eof or inflater.unused_data:
        raise ZipRefused(f"its member {entry.name!r} does not inflate to its declared size")
    return data
