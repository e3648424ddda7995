"""File paths as they leave the command line (stdout, output files, messages): printable UTF-8 text that maps back
to the exact file name.

A file name is a sequence of bytes on POSIX systems, not always valid UTF-8, and may hold newlines or other
control characters. Python represents invalid bytes as lone surrogates (``os.fsdecode``), which cannot be written
as UTF-8 (``UnicodeEncodeError``) and are not valid in JSON. :func:`encode_path` escapes such names with
backslashes, reversibly:

- ``\\\\`` for a backslash,
- ``\\n``, ``\\r``, ``\\t`` for newline, carriage return and tab,
- ``\\xHH`` (two lowercase hex digits) for each byte that is not part of valid UTF-8, and for each byte of
  any other control character (U+0000–U+001F, U+007F–U+009F);
- every other character, ASCII or not, as it is: ordinary paths are unchanged (on Windows, where ``\\`` is the
  separator, it is doubled too).

:func:`decode_path` reverses it: ``os.fsencode(decode_path(encode_path(p))) == os.fsencode(p)`` for every path.
In Python: ``from effnetv2.path_escape import decode_path; open(decode_path(line), "rb")``.
"""

from __future__ import annotations

import os
import re
from typing import Union

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNNAMED = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\"}
_HEX = re.compile(r"[0-9a-fA-F]{2}")


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def encode_path(path: Union[str, bytes, os.PathLike]) -> str:
    """``path`` as printable UTF-8 text, escaped as the module says (unchanged for ordinary paths)."""
    text = os.fsencode(path).decode("utf-8", "surrogateescape")  # invalid bytes -> U+DC80..U+DCFF
    parts = []
    for ch in text:
        if ch in _NAMED:
            parts.append(_NAMED[ch])
        elif 0xDC80 <= ord(ch) <= 0xDCFF:
            parts.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif _is_control(ch):
            parts.extend(f"\\x{byte:02x}" for byte in ch.encode("utf-8"))
        else:
            parts.append(ch)
    return "".join(parts)


def decode_path(text: str) -> str:
    """The path (``str``, as ``os.fsdecode`` gives it) that :func:`encode_path` turned into ``text``.

    Raises ``ValueError`` on a backslash that starts no escape of :func:`encode_path`.
    """
    data = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            data += ch.encode("utf-8")
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in _UNNAMED:
            data += _UNNAMED[code]
            i += 2
        elif code == "x" and _HEX.fullmatch(text[i + 2 : i + 4]):
            data.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raise ValueError(
                f"invalid escape {text[i : i + 4]!r} at position {i} of an escaped path; "
                "expected \\\\, \\n, \\r, \\t or \\xHH"
            )
    return os.fsdecode(bytes(data))
