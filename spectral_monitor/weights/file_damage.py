"""Where a weights file is damaged: checks that read a file's structure and checksums without
unpickling it, so that a damaged or truncated file is reported as such, with the byte offset or
the archive member where reading fails, and never mistaken for a well-formed file that holds
objects other than tensors.

- ``torch.save``'s zip archive: every member must lie inside the file and match its CRC-32
  (``torch.load`` does not check them: flipped bytes in a tensor load silently); a file cut
  short has no zip directory at its end.
- A pickle (the archive's ``data.pkl``, or a legacy ``torch.save`` file): its opcodes must parse
  up to ``STOP`` (:mod:`pickletools` reads them without running anything).
- safetensors: the JSON header and every tensor's byte range must lie inside the file.
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from pathlib import Path

__all__ = ["pickle_damage", "safetensors_damage", "zip_damage"]

_LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30
_CHUNK = 1 << 24


def _member_start(handle: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The byte offset in the file where a member's data begin (after its local header)."""
    fp = handle.fp
    assert fp is not None
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER_SIZE)
    if len(header) < _LOCAL_HEADER_SIZE or not header.startswith(_LOCAL_HEADER):
        return -1
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length


def _last_member_begun(path: Path) -> tuple[str, int] | None:
    """The name and offset of the last local header in a zip file without a directory."""
    data = path.read_bytes()
    position = data.rfind(_LOCAL_HEADER)
    while position >= 0:
        header = data[position : position + _LOCAL_HEADER_SIZE]
        if len(header) == _LOCAL_HEADER_SIZE:
            (name_length,) = struct.unpack("<H", header[26:28])
            raw = data[position + _LOCAL_HEADER_SIZE : position + _LOCAL_HEADER_SIZE + name_length]
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                name = ""
            if name and name.isprintable():
                return name, position
        position = data.rfind(_LOCAL_HEADER, 0, position)
    return None


def zip_damage(path: Path) -> str | None:
    """What is wrong with a zip archive (``torch.save``'s format), or None when every member
    lies inside the file and matches its checksum.

    A member stored with CRC 0 (written without checksums) is not checked.
    """
    size = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        last = _last_member_begun(path)
        where = (
            f"; reading stops in member {last[0]}, which begins at byte {last[1]}" if last else ""
        )
        return f"truncated or damaged at its end: no zip directory in its {size} bytes{where}"
    with archive:
        for info in archive.infolist():
            start = _member_start(archive, info)
            if start < 0:
                return (
                    f"damaged: member {info.filename} has no valid header at byte "
                    f"{info.header_offset}"
                )
            end = start + info.compress_size
            if end > size:
                return (
                    f"truncated: member {info.filename} (bytes {start}..{end}) runs past the end "
                    f"of the file ({size} bytes)"
                )
            if info.CRC == 0 and info.file_size > 0:
                continue
            try:
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                why = "checksum mismatch" if "CRC" in str(error) else str(error)
                return (
                    f"damaged: member {info.filename} (bytes {start}..{end}) does not read back "
                    f"({why})"
                )
    return None


def pickle_damage(data: bytes, count: int = 1) -> str | None:
    """Where ``count`` consecutive pickles in ``data`` stop parsing, or None when they parse
    (opcodes only: nothing is imported or run).

    Returns:
        ``"at byte N: why"`` (N from the start of ``data``), or None.
    """
    position = 0
    for _ in range(count):
        last = position
        try:
            for opcode, _arg, pos in pickletools.genops(data[position:]):
                last = position + (pos or 0)
                if opcode.name == "STOP":
                    position = last + 1
                    break
            else:
                return f"at byte {last}: the pickle ends before its STOP opcode (truncated)"
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as error:
            return f"after byte {last}: {str(error).splitlines()[0] if str(error) else error}"
    return None


def safetensors_damage(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout, or None when its header parses and every
    tensor's bytes lie inside the file (the format has no checksums: flipped data bytes cannot be
    seen)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, fewer than the 8 of the header length"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"truncated: the header claims bytes 8..{8 + length} of a file of {size} bytes"
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        position = getattr(error, "pos", None)
        where = f" at byte {8 + position}" if isinstance(position, int) else ""
        return f"damaged: the JSON header does not parse{where}"
    if not isinstance(header, dict):
        return "damaged: the header is not a JSON object"
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return f"damaged: tensor {name} has no valid data_offsets"
        end = 8 + length + int(offsets[1])
        if end > size:
            return (
                f"truncated: tensor {name} (bytes {8 + length + int(offsets[0])}..{end}) runs "
                f"past the end of the file ({size} bytes)"
            )
    return None
