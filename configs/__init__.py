"""Typed configuration (pydantic) and the YAML files that hold its values."""

from streamrl.configs.loader import ConfigError, load_config
from streamrl.configs.schema import (
    ArchiveConfig,
    CtrConfig,
    JoinConfig,
    JoinerConfig,
    KafkaConfig,
    StreamrlConfig,
    TopicsConfig,
)

__all__ = [
    "ArchiveConfig",
    "ConfigError",
    "CtrConfig",
    "JoinConfig",
    "JoinerConfig",
    "KafkaConfig",
    "StreamrlConfig",
    "TopicsConfig",
    "load_config",
]
