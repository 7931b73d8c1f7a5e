"""One typed config: defaults, overrides, refusals that name the field, secrets from the env."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrl.configs import ConfigError, load_config


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


def test_the_production_example_is_valid_and_keeps_secrets_out(monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "production.example.yaml"
    monkeypatch.setenv("STREAMRL_KAFKA_SASL_PASSWORD", "from-env")
    cfg = load_config(path)
    assert cfg.kafka.security_protocol == "SASL_SSL" and cfg.learn.relevance.source == "http"
    assert cfg.kafka.client_kwargs()["sasl_plain_password"] == "from-env"
    import yaml

    def keys(node: object) -> list[str]:
        if isinstance(node, dict):
            return [k for k, v in node.items() for k in (str(k), *keys(v))]
        return []

    assert not [k for k in keys(yaml.safe_load(path.read_text())) if "password" in k.lower()]
    assert cfg.metrics.host == "127.0.0.1" and cfg.serving.host == "127.0.0.1"


def test_push_needs_a_trigger_and_a_valid_cron(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="push"):
        load_config(overrides=["push.every_s=null"])
    with pytest.raises(ConfigError, match="cron"):
        load_config(overrides=["push.cron=not a cron"])
    assert load_config(overrides=["push.cron='*/10 * * * *'"]).push.cron == "*/10 * * * *"


def test_cli_prints_its_version() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "streamrl", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"streamrl {version('streamrl')}"


def test_each_process_gets_its_own_port() -> None:
    import re

    import pytest

    from streamrl.configs import ConfigError, load_config

    load_config()  # the defaults: 9100 supervisor, 9101 joiner, 9102 learner, 8500 serving
    clash = "port 9102 is both joiner 1 (metrics.joiner_port + 1) and metrics.learner_port"
    with pytest.raises(ConfigError, match=re.escape(clash)):
        load_config(overrides=["run.joiners=2"])  # what the production example used to ship
    with pytest.raises(ConfigError, match=re.escape("metrics.supervisor_port and serving.port")):
        load_config(overrides=["serving.port=9100"])
    load_config(overrides=["run.joiners=2", "metrics.joiner_port=9111"])
    load_config(overrides=["run.joiners=2", "metrics.joiner_port=0"])  # no joiner endpoints: no clash
    load_config(path=Path(__file__).resolve().parents[1] / "configs" / "production.example.yaml")


def test_sasl_settings_are_checked_and_oauthbearer_gets_a_token_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamrl.stream import kafka_io

    monkeypatch.delenv("STREAMRL_KAFKA_OAUTH_TOKEN", raising=False)
    sasl = ["kafka.security_protocol=SASL_SSL"]
    with pytest.raises(ConfigError, match="OAUTHBEARER needs a token"):
        load_config(overrides=[*sasl, "kafka.sasl_mechanism=OAUTHBEARER"])
    with pytest.raises(ConfigError, match=r"needs kafka\.security_protocol SASL_SSL"):
        load_config(overrides=["kafka.sasl_mechanism=PLAIN", "kafka.sasl_plain_username=u"])
    with pytest.raises(ConfigError, match=r"needs kafka\.sasl_plain_username"):
        load_config(overrides=[*sasl, "kafka.sasl_mechanism=SCRAM-SHA-512"])
    with pytest.raises(ConfigError, match=r"needs kafka\.sasl_mechanism"):
        load_config(overrides=sasl)
    with pytest.raises(ConfigError, match="pip install gssapi"):
        load_config(overrides=[*sasl, "kafka.sasl_mechanism=GSSAPI"])
    # a token file is re-read at each authentication: the platform's refresher keeps it fresh
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    cfg = load_config(
        overrides=[*sasl, "kafka.sasl_mechanism=OAUTHBEARER", f"kafka.sasl_oauth_token_file={token}"]
    )
    provider = kafka_io.client_kwargs(cfg.kafka)["sasl_oauth_token_provider"]
    assert provider.token() == "tok-1"
    token.write_text("tok-2")
    assert provider.token() == "tok-2"
    # or a fixed token from the environment, never from the config file
    monkeypatch.setenv("STREAMRL_KAFKA_OAUTH_TOKEN", "env-token")
    cfg = load_config(overrides=[*sasl, "kafka.sasl_mechanism=OAUTHBEARER"])
    assert kafka_io.client_kwargs(cfg.kafka)["sasl_oauth_token_provider"].token() == "env-token"
    assert "env-token" not in cfg.model_dump_json()


def test_topic_settings_resolve_per_topic_and_bound_the_reward_batches() -> None:
    cfg = load_config(
        overrides=[
            "kafka.topics.replication_factor=3",
            "kafka.topics.settings.rewards.partitions=12",
            "kafka.topics.settings.rewards.compression=lz4",
            "kafka.topics.settings.dlq.retention_ms=-1",
        ]
    )
    t = cfg.kafka.topics
    r = t.resolve(t.rewards)
    assert (r.partitions, r.replication_factor, r.compression) == (12, 3, "lz4")
    assert t.resolve(t.dlq).configs == {"compression.type": "zstd", "retention.ms": "-1"}
    other = t.resolve("someone.elses.topic")  # defaults
    assert (other.partitions, other.replication_factor, other.compression) == (4, 3, "zstd")
    # a reward message must fit the rewards topic's max.message.bytes
    with pytest.raises(ConfigError, match=r"max_batch_bytes 900000 must stay 64 KiB under"):
        load_config(overrides=["kafka.topics.settings.rewards.max_message_bytes=900000"])
    ok = load_config(overrides=["kafka.topics.settings.rewards.max_message_bytes=1048588"])
    assert ok.joiner.max_batch_bytes == 900_000
    with pytest.raises(ConfigError, match="compression"):
        load_config(overrides=["kafka.topics.compression=brotli"])
