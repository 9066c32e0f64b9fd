"""Data errors and the per-reason counts of skipped samples.

A *stream* error (missing shard, stream that yields nothing, unusable tokenizer) stops the run at start with a
one-line :class:`DataError`. A *sample* error (corrupt image, empty caption, ...) never stops it: the sample is
skipped and counted in a :class:`SkipStats` under one of ``SkipStats.REASONS``.
"""
from __future__ import annotations

from typing import Mapping, Optional


class DataError(ValueError):
    """A data source is unusable; the one-line message names the stream and the shard/tokenizer at fault.

    ``rank_local``: found by this rank alone (its share of a stream has no usable sample), so this rank must
    print it; errors every rank finds alike (a missing shard) are printed by rank 0 only.
    """

    def __init__(self, message: str, rank_local: bool = False):
        super().__init__(message)
        self.rank_local = rank_local


class SampleError(Exception):
    """One sample cannot be used; ``reason`` is one of :attr:`SkipStats.REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SkipStats:
    """Counts of skipped samples (or tar-level read errors) per reason, for one stream on one rank."""

    CORRUPT_IMAGE = "corrupt_image"  # undecodable / truncated image bytes, or an unsupported image format
    EMPTY_MEMBER = "empty_member"  # a zero-byte jpg/png/webp/txt/cls member
    BAD_UTF8 = "bad_utf8"  # txt member is not UTF-8
    EMPTY_TEXT = "empty_text"  # caption/document is blank or tokenises to nothing
    MISSING_KEY = "missing_key"  # a member the stream kind needs is absent (pair without txt, image without jpg)
    BAD_LABEL = "bad_label"  # cls member is not a non-negative integer
    UNKNOWN_EXTENSION = "unknown_extension"  # a member whose extension is not handled (never decoded: .pyd, .pth...)
    BROKEN_TAR = "broken_tar"  # tar-level read error (truncated/corrupt archive, failing pipe:) — counted per event
    UNREADABLE_SHARD = "unreadable_shard"  # a shard vanished or cannot be opened after the start-up check
    REASONS = (CORRUPT_IMAGE, EMPTY_MEMBER, BAD_UTF8, EMPTY_TEXT, MISSING_KEY, BAD_LABEL, UNKNOWN_EXTENSION,
               BROKEN_TAR, UNREADABLE_SHARD)

    def __init__(self, counts: Optional[Mapping[str, int]] = None):
        self._counts: dict[str, int] = {}
        if counts:
            self.update(counts)

    def add(self, reason: str, n: int = 1) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + int(n)

    def update(self, other: "SkipStats | Mapping[str, int]") -> "SkipStats":
        items = other.as_dict().items() if isinstance(other, SkipStats) else other.items()
        for reason, n in items:
            self.add(reason, n)
        return self

    def __add__(self, other: "SkipStats") -> "SkipStats":
        return SkipStats(self._counts).update(other)

    def __getitem__(self, reason: str) -> int:
        return self._counts.get(reason, 0)

    def __eq__(self, other) -> bool:
        if isinstance(other, SkipStats):
            return self.as_dict() == other.as_dict()
        return NotImplemented

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        """Non-zero counts, sorted by reason (JSON-serialisable)."""
        return {k: v for k, v in sorted(self._counts.items()) if v}

    def copy(self) -> "SkipStats":
        return SkipStats(self._counts)

    def __repr__(self) -> str:
        return f"SkipStats({self.as_dict()})"
