from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TensorHeader(_message.Message):
    __slots__ = ("name", "shape", "dtype", "encoding", "payload_bytes", "crc32", "block_bytes", "block_elements", "group_elements", "topk_fraction")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    encoding: str
    payload_bytes: int
    crc32: int
    block_bytes: _containers.RepeatedScalarFieldContainer[int]
    block_elements: int
    group_elements: int
    topk_fraction: float
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., encoding: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., crc32: _Optional[int] = ..., block_bytes: _Optional[_Iterable[int]] = ..., block_elements: _Optional[int] = ..., group_elements: _Optional[int] = ..., topk_fraction: _Optional[float] = ...) -> None: ...
