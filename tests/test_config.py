"""One typed config: defaults, overrides, refusals that name the field, secrets from the env."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import ConfigError, load_config


def test_default_file_loads_with_documented_values() -> None:
    cfg = load_config()
    assert cfg.join.window_s == 600 and cfg.join.allowed_lateness_s == 30
    assert cfg.join.v_click == 3.0 and cfg.join.v_order == 4.0
    assert cfg.kafka.topics.rewards == "streamrl.rewards" and cfg.kafka.topics.dlq == "streamrl.dlq"
    assert cfg.metrics.host == "127.0.0.1"


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(overrides=["join.window_s=60", "kafka.topics.partitions=8"])
    assert cfg.join.window_s == 60.0 and cfg.kafka.topics.partitions == 8


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("join:\n  window: 5\n", "join.window"),
        ("join:\n  window_s: 0\n", "join.window_s"),
        ("kafka:\n  security_protocol: TLS\n", "kafka.security_protocol"),
        ("nonsense: 1\n", "nonsense"),
        ("- a list\n", "mapping"),
        ("join: [\n", "not valid YAML"),
    ],
)
def test_bad_files_are_refused_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert field in str(info.value) and str(path) in str(info.value)


def test_sasl_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(
        overrides=[
            "kafka.security_protocol=SASL_SSL",
            "kafka.sasl_mechanism=PLAIN",
            "kafka.sasl_plain_username=svc",
        ]
    )
    monkeypatch.setenv("STREAMRL_KAFKA_SASL_PASSWORD", "s3cret")
    kw = cfg.kafka.client_kwargs()
    assert kw["sasl_plain_password"] == "s3cret" and kw["security_protocol"] == "SASL_SSL"
    assert "s3cret" not in cfg.model_dump_json()
