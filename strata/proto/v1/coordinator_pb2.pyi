from strata.proto.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("name", "num_samples", "num_eval_samples", "device", "version", "members", "inner_rounds", "lora_rank", "dashboard_url")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    INNER_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_URL_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_samples: int
    num_eval_samples: int
    device: str
    version: str
    members: int
    inner_rounds: int
    lora_rank: int
    dashboard_url: str
    def __init__(self, name: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_eval_samples: _Optional[int] = ..., device: _Optional[str] = ..., version: _Optional[str] = ..., members: _Optional[int] = ..., inner_rounds: _Optional[int] = ..., lora_rank: _Optional[int] = ..., dashboard_url: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("worker_id", "federation", "task_kind", "num_labels", "labels", "max_seq_len", "lora", "initial_hash", "init_seed", "assets_hash", "dashboard_url")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    TASK_KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    INITIAL_HASH_FIELD_NUMBER: _ClassVar[int]
    INIT_SEED_FIELD_NUMBER: _ClassVar[int]
    ASSETS_HASH_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_URL_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    federation: str
    task_kind: str
    num_labels: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_seq_len: int
    lora: LoraAdapter
    initial_hash: str
    init_seed: int
    assets_hash: str
    dashboard_url: str
    def __init__(self, worker_id: _Optional[str] = ..., federation: _Optional[str] = ..., task_kind: _Optional[str] = ..., num_labels: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., max_seq_len: _Optional[int] = ..., lora: _Optional[_Union[LoraAdapter, _Mapping]] = ..., initial_hash: _Optional[str] = ..., init_seed: _Optional[int] = ..., assets_hash: _Optional[str] = ..., dashboard_url: _Optional[str] = ...) -> None: ...

class LoraAdapter(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "targets", "modules_to_save", "base_hash", "aggregation")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MODULES_TO_SAVE_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: float
    dropout: float
    targets: _containers.RepeatedScalarFieldContainer[str]
    modules_to_save: _containers.RepeatedScalarFieldContainer[str]
    base_hash: str
    aggregation: str
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., targets: _Optional[_Iterable[str]] = ..., modules_to_save: _Optional[_Iterable[str]] = ..., base_hash: _Optional[str] = ..., aggregation: _Optional[str] = ...) -> None: ...

class BaseRequest(_message.Message):
    __slots__ = ("worker_id", "file", "offset")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    file: str
    offset: int
    def __init__(self, worker_id: _Optional[str] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BaseFile(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BaseManifest(_message.Message):
    __slots__ = ("base_hash", "files")
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    base_hash: str
    files: _containers.RepeatedCompositeFieldContainer[BaseFile]
    def __init__(self, base_hash: _Optional[str] = ..., files: _Optional[_Iterable[_Union[BaseFile, _Mapping]]] = ...) -> None: ...

class BaseChunk(_message.Message):
    __slots__ = ("manifest", "data")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    manifest: BaseManifest
    data: bytes
    def __init__(self, manifest: _Optional[_Union[BaseManifest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("worker_id", "wait_seconds")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait_seconds: int
    def __init__(self, worker_id: _Optional[str] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("local_epochs", "max_steps", "batch_size", "learning_rate", "weight_decay", "max_seq_len", "seed", "prox_mu")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROX_MU_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    max_steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    max_seq_len: int
    seed: int
    prox_mu: float
    def __init__(self, local_epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_seq_len: _Optional[int] = ..., seed: _Optional[int] = ..., prox_mu: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "round", "model_version", "model_hash", "deadline_unix", "config", "encoding", "total_rounds", "topk_fraction", "blocks", "local_blocks", "residual_keep", "lowrank_rank")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Task.Kind]
        WAIT: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        DONE: _ClassVar[Task.Kind]
    KIND_UNSPECIFIED: Task.Kind
    WAIT: Task.Kind
    TRAIN: Task.Kind
    DONE: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_KEEP_FIELD_NUMBER: _ClassVar[int]
    LOWRANK_RANK_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    round: int
    model_version: int
    model_hash: str
    deadline_unix: float
    config: TrainingConfig
    encoding: str
    total_rounds: int
    topk_fraction: float
    blocks: _containers.RepeatedScalarFieldContainer[str]
    local_blocks: _containers.RepeatedScalarFieldContainer[str]
    residual_keep: float
    lowrank_rank: int
    def __init__(self, kind: _Optional[_Union[Task.Kind, str]] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., model_hash: _Optional[str] = ..., deadline_unix: _Optional[float] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., encoding: _Optional[str] = ..., total_rounds: _Optional[int] = ..., topk_fraction: _Optional[float] = ..., blocks: _Optional[_Iterable[str]] = ..., local_blocks: _Optional[_Iterable[str]] = ..., residual_keep: _Optional[float] = ..., lowrank_rank: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("worker_id", "have_version", "include_assets", "have_hash")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ASSETS_FIELD_NUMBER: _ClassVar[int]
    HAVE_HASH_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    have_version: int
    include_assets: bool
    have_hash: str
    def __init__(self, worker_id: _Optional[str] = ..., have_version: _Optional[int] = ..., include_assets: _Optional[bool] = ..., have_hash: _Optional[str] = ...) -> None: ...

class FileHeader(_message.Message):
    __slots__ = ("name", "size", "crc32")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    crc32: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("version", "model_hash", "num_tensors", "num_files", "kind", "base_version")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ModelHeader.Kind]
        SNAPSHOT: _ClassVar[ModelHeader.Kind]
        UPDATES: _ClassVar[ModelHeader.Kind]
        CURRENT: _ClassVar[ModelHeader.Kind]
    KIND_UNSPECIFIED: ModelHeader.Kind
    SNAPSHOT: ModelHeader.Kind
    UPDATES: ModelHeader.Kind
    CURRENT: ModelHeader.Kind
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_FILES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_hash: str
    num_tensors: int
    num_files: int
    kind: ModelHeader.Kind
    base_version: int
    def __init__(self, version: _Optional[int] = ..., model_hash: _Optional[str] = ..., num_tensors: _Optional[int] = ..., num_files: _Optional[int] = ..., kind: _Optional[_Union[ModelHeader.Kind, str]] = ..., base_version: _Optional[int] = ...) -> None: ...

class VersionMark(_message.Message):
    __slots__ = ("version", "model_hash", "num_tensors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_hash: str
    num_tensors: int
    def __init__(self, version: _Optional[int] = ..., model_hash: _Optional[str] = ..., num_tensors: _Optional[int] = ...) -> None: ...

class ModelEnd(_message.Message):
    __slots__ = ("num_tensors", "num_files")
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_FILES_FIELD_NUMBER: _ClassVar[int]
    num_tensors: int
    num_files: int
    def __init__(self, num_tensors: _Optional[int] = ..., num_files: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "file", "tensor", "data", "end", "mark")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MARK_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    file: FileHeader
    tensor: _tensor_pb2.TensorHeader
    data: bytes
    end: ModelEnd
    mark: VersionMark
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., file: _Optional[_Union[FileHeader, _Mapping]] = ..., tensor: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[ModelEnd, _Mapping]] = ..., mark: _Optional[_Union[VersionMark, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("worker_id", "round", "base_version", "base_hash", "num_samples", "train_loss", "train_accuracy", "train_seconds", "num_steps", "num_tensors", "local_epsilon", "local_delta", "lora_rank")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPSILON_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DELTA_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    base_version: int
    base_hash: str
    num_samples: int
    train_loss: float
    train_accuracy: float
    train_seconds: float
    num_steps: int
    num_tensors: int
    local_epsilon: float
    local_delta: float
    lora_rank: int
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., base_version: _Optional[int] = ..., base_hash: _Optional[str] = ..., num_samples: _Optional[int] = ..., train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., train_seconds: _Optional[float] = ..., num_steps: _Optional[int] = ..., num_tensors: _Optional[int] = ..., local_epsilon: _Optional[float] = ..., local_delta: _Optional[float] = ..., lora_rank: _Optional[int] = ...) -> None: ...

class UpdateEnd(_message.Message):
    __slots__ = ("num_tensors",)
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    num_tensors: int
    def __init__(self, num_tensors: _Optional[int] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "tensor", "data", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    tensor: _tensor_pb2.TensorHeader
    data: bytes
    end: UpdateEnd
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., tensor: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[UpdateEnd, _Mapping]] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("accepted", "received_bytes", "raw_bytes", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    received_bytes: int
    raw_bytes: int
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., received_bytes: _Optional[int] = ..., raw_bytes: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("worker_id", "round", "model_version", "split", "num_samples", "loss", "accuracy")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    model_version: int
    split: str
    num_samples: int
    loss: float
    accuracy: float
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., split: _Optional[str] = ..., num_samples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ...) -> None: ...

class MetricsAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
