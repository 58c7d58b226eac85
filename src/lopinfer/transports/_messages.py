"""Control messages: msgspec Structs in one tagged union, encoded as msgpack.

The transports define only what moving frames needs (``Error``, ``Bye``); the
application registers its own messages (``lopinfer.runtime.protocol``).

Decoding is schema-checked (msgspec validates every field's type) and never runs code
from the wire. Adding a message is one decorated class::

    @register_message
    class Infer(Message, tag="infer"):
        inference_id: int

Unknown fields are ignored so that a newer peer may add optional fields; unknown tags,
missing fields and wrong types are a :class:`~lopinfer.errors.ProtocolError`.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from ..errors import InputError, ProtocolError


class Message(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every control message; subclasses pick a unique ``tag``."""


_REGISTRY: dict[str, type[Message]] = {}
_decoder: msgspec.msgpack.Decoder | None = None
_encoder = msgspec.msgpack.Encoder()


def register_message(cls: type[Message]) -> type[Message]:
    """Add ``cls`` to the union of control messages (usable as a class decorator).

    Raises:
        InputError: ``cls`` is not a ``Message`` subclass or its tag is taken.
    """
    global _decoder
    if not (isinstance(cls, type) and issubclass(cls, Message)) or cls is Message:
        raise InputError(f"{cls!r} is not a Message subclass")
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise InputError(f"{cls.__name__} needs a string tag")
    if _REGISTRY.get(tag, cls) is not cls:
        raise InputError(f"message tag {tag!r} is already used by {_REGISTRY[tag].__name__}")
    _REGISTRY[tag] = cls
    _decoder = None
    return cls


def message_types() -> tuple[type[Message], ...]:
    """The registered control message classes."""
    return tuple(_REGISTRY.values())


@register_message
class Error(Message, tag="error"):
    """Either way: a request failed (``code`` is machine-readable, ``message`` one line).
    Codes name classes of the exception tree (``lopinfer.errors.REMOTE_CODES``)."""

    code: str
    message: str = ""


@register_message
class Bye(Message, tag="bye"):
    """Either way: the sender is closing the session."""

    reason: str = ""


def encode_message(msg: Message) -> bytes:
    """Encode a registered message as msgpack.

    Raises:
        InputError: ``msg`` is not an instance of a registered message class.
    """
    cls = type(msg)
    if not isinstance(msg, Message) or _REGISTRY.get(str(cls.__struct_config__.tag)) is not cls:
        raise InputError(f"{type(msg).__name__} is not a registered control message")
    return _encoder.encode(msg)


def decode_message(data: Any) -> Message:
    """Decode and validate a control message.

    Raises:
        ProtocolError: not msgpack, an unknown tag, or a field of the wrong type.
    """
    global _decoder
    if _decoder is None:
        _decoder = msgspec.msgpack.Decoder(Union[tuple(_REGISTRY.values())])  # noqa: UP007
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"bad control message: {exc}") from None
