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
