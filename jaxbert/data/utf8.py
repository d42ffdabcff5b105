"""Text that may not be valid UTF-8: decoded with replacements, counted, warned once."""

from __future__ import annotations

import logging

logger = logging.getLogger("jaxbert")

_WARNED: set[str] = set()


def decode(raw: bytes, encoding: str = "utf-8") -> tuple[str, int]:
  """`raw` as text and how many undecodable byte sequences became U+FFFD."""
  try:
    return raw.decode(encoding), 0
  except UnicodeDecodeError:
    text = raw.decode(encoding, "replace")
    # U+FFFD already in the input survives "ignore": the difference is the replacements.
    return text, text.count("\ufffd") - raw.decode(encoding, "ignore").count("\ufffd")


def warn_undecodable(path: str, count: int) -> None:
  """Warns about `path`'s replaced bytes once per process (a file is read more than once)."""
  if count and path not in _WARNED:
    _WARNED.add(path)
    logger.warning("%s: %d undecodable byte sequence(s) replaced with U+FFFD "
                   "(the file is not valid UTF-8).", path, count)


# How much of a file `binary_problem` looks at, and the share of undecodable byte
# sequences above which it is not text. Text in a legacy 8-bit encoding (Latin-1,
# cp1252) has a few per cent, random or compressed bytes about 40 %.
SNIFF_BYTES = 1 << 20
_MAX_UNDECODABLE_SHARE = 0.25


def binary_problem(path: str) -> str | None:
  """Why the file at `path` is clearly not text (NUL bytes, or a high share of bytes
  that are not UTF-8 in its first megabyte), else None."""
  with open(path, "rb") as f:
    head = f.read(SNIFF_BYTES)
  if b"\0" in head:
    return (f"it holds NUL bytes (the first at byte {head.find(bytes(1))}): a binary file, or "
            "text in UTF-16/UTF-32 (convert it to UTF-8)")
  # A sequence cut at the end of the sample is not counted.
  _, bad = decode(head[:-4] if len(head) == SNIFF_BYTES else head)
  if head and bad > _MAX_UNDECODABLE_SHARE * len(head):
    return (f"{bad} of its first {len(head)} bytes are not UTF-8: a binary file, or text "
            "in another encoding (convert it to UTF-8)")
  return None
