"""Property tests: any JSON a source can send translates without error into valid records."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from adapter.mapping import Translation
from adapter.testing.strategies import MESSAGES


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_any_message_translates_without_error(segment_translator, message):
    """No message shape makes the translator raise; what it emits is valid for Miso."""
    result = segment_translator.translate(message)
    assert isinstance(result, Translation)
    assert len(result.records) <= 1
    if not result.records:
        assert result.skipped
    for record in result.records:
        assert "user_id" in record or "anonymous_id" in record
        ip = record.get("context", {}).get("truncated_ip")
        assert ip is None or ip.endswith(".0"), f"full IP forwarded: {ip}"
