"""A set of 64-bit fingerprints in 8 bytes each: a dry run's memory of the events it passed.

A Python ``set`` of ints costs about 70 bytes an entry (the int object and a sparse
table); a dry run of a few million distinct events kept its RSS growing by that much.
:class:`Fingerprints` keeps the numbers themselves in one flat array, open addressing
with linear probing, at most half full: 8 to 17 bytes an entry, and no object per entry.
"""

from __future__ import annotations

from array import array

__all__ = ["Fingerprints"]

_EMPTY = 0
_MIN_SLOTS = 1 << 16


class Fingerprints:
    """Which 64-bit numbers (``hash()`` of a key) were added; exact for the numbers.

    Two keys with the same 64-bit hash count as one, as they would in a ``set`` of
    their hashes: a collision among 2^64 values is not a concern.
    """

    __slots__ = ("_mask", "_slots", "_used")

    def __init__(self) -> None:
        self._slots = array("q", bytes(8 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def __contains__(self, number: int) -> bool:
        number = number or 1  # 0 marks an empty slot: 0 and 1 are one number here
        return self._slots[self._slot(number)] == number

    def add(self, number: int) -> bool:
        """Add ``number``; True when it was not there yet."""
        number = number or 1
        index = self._slot(number)
        if self._slots[index] == number:
            return False
        self._slots[index] = number
        self._used += 1
        if self._used * 2 > self._mask:
            self._grow()
        return True

    def _slot(self, number: int) -> int:
        """The slot holding ``number``, else the empty one where it would go."""
        slots, mask = self._slots, self._mask
        index = number & mask
        while True:
            found = slots[index]
            if found in (number, _EMPTY):
                return index
            index = (index + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        size = 2 * len(old)
        slots = array("q", bytes(8 * size))
        mask = size - 1
        for number in old:
            if number != _EMPTY:
                index = number & mask
                while slots[index] != _EMPTY:
                    index = (index + 1) & mask
                slots[index] = number
        self._slots, self._mask = slots, mask
