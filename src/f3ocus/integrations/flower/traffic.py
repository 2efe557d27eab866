"""Bytes on the wire: the serialized size of Flower messages, without serializing the arrays.

Flower sends a ``Message`` as its protobuf (``flwr.common.serde.message_to_proto``). Protobuf writes a
nested message field as tag, varint length, payload, so the size is a sum over the tree:

$$
|\\text{field}| = |\\text{tag}| + |\\text{varint}(n)| + n, \\qquad
|\\text{Array}| = |\\text{header}| + 1 + |\\text{varint}(b)| + b,
$$

with $b$ the array's data bytes. :func:`message_nbytes` adds these up and serializes only the small
parts (metadata, config and metric records, array headers); :func:`message_nbytes_reference` serializes
the whole message. Tests check that the two agree exactly. gRPC framing and TLS are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import Array as ProtoArray

__all__ = [
    "message_nbytes",
    "message_nbytes_reference",
    "nbytes_with_content",
    "recorddict_nbytes",
    "arrayrecord_nbytes",
]


def _varint(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field(payload: int) -> int:
    """A length-delimited field with a one-byte tag (field numbers < 16)."""
    return 1 + _varint(payload) + payload


def _string(text: str) -> int:
    n = len(text.encode("utf-8"))
    return _field(n) if n else 0


def arrayrecord_nbytes(record: ArrayRecord) -> int:
    """Serialized size of an ``ArrayRecord`` (``ProtoArrayRecord``)."""
    total = 0
    for key, array in record.items():
        header = ProtoArray(dtype=array.dtype, shape=array.shape, stype=array.stype).ByteSize()
        data = len(array.data)
        size = header + (_field(data) if data else 0)
        total += _field(_string(key) + _field(size))
    return total


def _record_nbytes(record: ArrayRecord | MetricRecord | ConfigRecord) -> int:
    if isinstance(record, ArrayRecord):
        return arrayrecord_nbytes(record)
    if isinstance(record, MetricRecord):
        return serde.metric_record_to_proto(record).ByteSize()
    return serde.config_record_to_proto(record).ByteSize()


def recorddict_nbytes(content: RecordDict | Mapping) -> int:
    """Serialized size of a ``RecordDict``."""
    total = 0
    for key, record in content.items():
        total += _field(_string(key) + _field(_record_nbytes(record)))
    return total


def message_nbytes(message: Message) -> int:
    """Serialized size in bytes of ``message`` as Flower sends it (metadata, content, error)."""
    total = _field(serde.metadata_to_proto(message.metadata).ByteSize())
    if message.has_error():
        total += _field(serde.error_to_proto(message.error).ByteSize())
    elif message.has_content():
        total += _field(recorddict_nbytes(message.content))
    return total


def message_nbytes_reference(message: Message) -> int:
    """The same by serializing the whole message (slow for large models; the tests' reference)."""
    return serde.message_to_proto(message).ByteSize()


def nbytes_with_content(message: Message, content: Mapping) -> int:
    """Size of ``message`` had it carried ``content`` (a mapping key -> record) instead of its own."""
    return _field(serde.metadata_to_proto(message.metadata).ByteSize()) + _field(recorddict_nbytes(content))
