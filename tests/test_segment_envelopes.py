"""Segment envelopes: single messages, bare arrays and tracking-API batches."""

from __future__ import annotations

from adapter.sources.segment import iter_messages


def test_single_message():
    """A classic webhook body is one message."""
    assert list(iter_messages("", {"type": "track"})) == [("", {"type": "track"}, None)]


def test_bare_array_locates_items():
    """Each array item is located; a non-object item is an error naming its type."""
    out = list(iter_messages("line 2", [{"type": "page"}, "x", None]))
    assert out == [
        ("line 2, item 1", {"type": "page"}, None),
        ("line 2, item 2", None, "expected a Segment message (JSON object), got string"),
        ("line 2, item 3", None, "expected a Segment message (JSON object), got null"),
    ]


def test_batch_merges_shared_context_and_integrations():
    """Batch-level context/integrations are defaults; each item's own keys win."""
    body = {
        "batch": [
            {"type": "track", "context": {"locale": "de-DE"}},
            {"type": "track", "integrations": {"All": False}},
        ],
        "context": {"locale": "en-US", "library": {"name": "analytics-python"}},
        "integrations": {"All": True},
        "writeKey": "secret",
    }
    items = [m for _, m, _ in iter_messages("", body)]
    assert items == [
        {
            "type": "track",
            "context": {"locale": "de-DE", "library": {"name": "analytics-python"}},
            "integrations": {"All": True},
        },
        {
            "type": "track",
            "context": {"locale": "en-US", "library": {"name": "analytics-python"}},
            "integrations": {"All": False},
        },
    ]


def test_batch_must_be_a_list():
    """`batch` that is not an array is one error for the whole body."""
    assert list(iter_messages("", {"batch": {"type": "track"}})) == [
        ("", None, "'batch' must be an array of messages, got object")
    ]


def test_message_with_a_batch_property_is_still_a_message():
    """A message that happens to carry a `batch` key (and a type) is not unwrapped."""
    message = {"type": "track", "batch": 3}
    assert list(iter_messages("", message)) == [("", message, None)]
