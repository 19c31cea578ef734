"""Kafka topics as inputs: the settings of a consumer, and a message's value as items.

A message value is one event of the topic's format — a Segment message, a Mixpanel export
row, a Miso record — or a batch envelope of it (Segment ``{"batch": [...]}``, Miso
``{"data": [...]}``), read by that format's source. An event the source cannot key (a
Segment message without ``messageId``) is keyed by where it sits in Kafka,
``kafka:<topic>:<partition>:<offset>`` (and its place in a batch), so a message
delivered again after a crash or a rebalance is a duplicate, not a second send.

Settings come from the command line or ``KAFKA_*``; the SASL password never appears in
a repr, a log line or an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapter.sources import Item, Source
from adapter.sources.jsonvalues import ReadError, parse_document

__all__ = ["KAFKA_MISSING", "KafkaSettings", "kafka_client_missing", "message_items"]

FORMATS = ("segment", "mixpanel", "miso")


@dataclass(frozen=True)
class KafkaSettings:
    """Where to consume from, as whom, and what the messages are."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    group: str
    format: str
    dead_letter_topic: str | None = None
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        bootstrap_servers: str | None = None,
        topics: Sequence[str] | None = None,
        group: str | None = None,
        format: str | None = None,
        dead_letter_topic: str | None = None,
        env: Mapping[str, str] = os.environ,
    ) -> KafkaSettings:
        """Options given, else ``KAFKA_*``; ValueError naming what is missing or wrong."""
        servers = (bootstrap_servers or env.get("KAFKA_BOOTSTRAP_SERVERS", "")).strip()
        names = list(topics or [t for t in env.get("KAFKA_TOPICS", "").split(",")])
        names = [t.strip() for t in names if t and t.strip()]
        group = (group or env.get("KAFKA_GROUP", "")).strip()
        kind = (format or env.get("KAFKA_FORMAT", "")).strip().lower()
        missing = [
            name for name, value in (
                ("--bootstrap-servers (KAFKA_BOOTSTRAP_SERVERS)", servers),
                ("--topic (KAFKA_TOPICS)", names),
                ("--group (KAFKA_GROUP)", group),
                ("--format (KAFKA_FORMAT)", kind),
            ) if not value
        ]  # fmt: skip
        if missing:
            raise ValueError(f"set {', '.join(missing)}")
        if kind not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {kind!r}")
        return cls(
            servers,
            tuple(names),
            group,
            kind,
            dead_letter_topic or env.get("KAFKA_DEAD_LETTER_TOPIC") or None,
            env.get("KAFKA_SECURITY_PROTOCOL") or None,
            env.get("KAFKA_SASL_MECHANISM") or None,
            env.get("KAFKA_SASL_USERNAME") or None,
            env.get("KAFKA_SASL_PASSWORD") or None,
            env.get("KAFKA_SSL_CA_LOCATION") or None,
        )

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by the consumer and the dead-letter producer."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        for key, value in (
            ("security.protocol", self.security_protocol),
            ("sasl.mechanism", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password),
            ("ssl.ca.location", self.ssl_ca_location),
        ):
            if value:
                config[key] = value
        return config


KAFKA_MISSING = (
    "consuming Kafka needs the confluent-kafka package, which is not installed: "
    "pip install 'miso-adapter[kafka]' (or pip install confluent-kafka)"
)


def kafka_client_missing() -> str | None:
    """Why the Kafka client cannot be used here (not installed), or None."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return KAFKA_MISSING
    return None


def message_items(
    source: Source, topic: str, partition: int, offset: int, value: bytes | None
) -> list[Item]:
    """The items of one message's value, located ``topic/partition@offset``."""
    where = f"{topic}/{partition}@{offset}"
    if value is None:
        return [Item(where, None, ReadError("no value (a tombstone)"))]
    try:
        parsed = parse_document(value)
    except ValueError as exc:
        return [Item(where, None, ReadError(str(exc)))]
    items = list(source.items(where, parsed))
    place = f"kafka:{topic}:{partition}:{offset}"
    out = []
    for n, item in enumerate(items):
        key = item.key
        if key is None:  # no id of its own: its place in Kafka (and in its batch)
            key = place if len(items) == 1 else f"{place}:{n}"
        out.append(Item(item.where, key, item.event))
    return out
