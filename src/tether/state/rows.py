"""The ``uploads`` table's row layout, shared by the SQL state stores.

Both stores keep the same 17 columns in the same order; they differ only in how a final
upload's ``parts`` are stored (SQLite: one space-separated TEXT, PostgreSQL: ``text[]``),
which each passes in as a codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether.state.base import (
    UploadRecord,
    metadata_from_json,
    metadata_to_json,
    segments_from_json,
    segments_to_json,
)

COLUMNS = (
    "id, length, received, metadata, partial, parts, created_at, expires_at, epoch, tail, "
    "tail_epoch, segments, assembled, last_client, last_node, client_switches, node_switches"
)
COLUMN_COUNT = 17


def to_row(record: UploadRecord, encode_parts: Callable[[tuple[str, ...]], Any]) -> tuple[Any, ...]:
    return (
        record.id,
        record.length,
        record.offset,
        metadata_to_json(record.metadata),
        record.partial,
        None if record.parts is None else encode_parts(record.parts),
        record.created_at,
        record.expires_at,
        record.epoch,
        record.tail,
        record.tail_epoch,
        segments_to_json(record.segments),
        record.assembled,
        record.last_client,
        record.last_node,
        record.client_switches,
        record.node_switches,
    )


def from_row(row: tuple[Any, ...], decode_parts: Callable[[Any], tuple[str, ...]]) -> UploadRecord:
    parts = row[5]
    return UploadRecord(
        id=row[0],
        length=row[1],
        offset=row[2],
        metadata=metadata_from_json(row[3]),
        partial=bool(row[4]),
        parts=None if parts is None else decode_parts(parts),
        created_at=row[6],
        expires_at=row[7],
        epoch=row[8],
        tail=row[9],
        tail_epoch=row[10],
        segments=segments_from_json(row[11]),
        assembled=bool(row[12]),
        last_client=row[13],
        last_node=row[14],
        client_switches=row[15],
        node_switches=row[16],
    )
