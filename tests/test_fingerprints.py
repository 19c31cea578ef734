"""The dry run's memory of dedup keys: a set of 64-bit numbers in a flat array."""

from __future__ import annotations

import random
import sys

from adapter.fingerprints import Fingerprints


def test_add_says_whether_a_number_is_new_like_a_set():
    """Across growth, with negative numbers, zero and repeats, it answers as a set does."""
    rng = random.Random(7)
    numbers = [rng.getrandbits(64) - 2**63 for _ in range(150_000)]
    # 0 marks an empty slot and is kept as 1: the two are one number here.
    numbers += [*numbers[:5_000], 0, -1, 0, 2**63 - 1, -(2**63)]
    fingerprints, reference = Fingerprints(), set()
    for number in numbers:
        was_new = number not in reference
        reference.add(number)
        assert fingerprints.add(number) is was_new
    assert len(fingerprints) == len(reference)
    assert all(number in fingerprints for number in reference)
    assert 1 in fingerprints and not fingerprints.add(1)  # 0's stand-in
    assert not any(rng.getrandbits(62) + 2 in fingerprints for _ in range(10_000))


def test_colliding_slots_are_probed_past():
    """Numbers that land on the same slot are all kept and found."""
    fingerprints = Fingerprints()
    same_slot = [n << 20 | 5 for n in range(1, 200)]
    assert all(fingerprints.add(n) for n in same_slot)
    assert not any(fingerprints.add(n) for n in same_slot)
    assert all(n in fingerprints for n in same_slot) and (5 << 1) not in fingerprints


def test_a_million_hashes_take_about_17_bytes_each():
    """The table is a flat array at most half full: no object per entry."""
    fingerprints = Fingerprints()
    for key in range(1_000_000):
        fingerprints.add(hash(f"mixpanel:{key}"))
    assert len(fingerprints) == 1_000_000
    assert sys.getsizeof(fingerprints._slots) <= 18 * 1_000_000
