"""The one typed config for streamrl (STYLE.md §5).

Every field says its unit and where its value comes from: "issue #2" (the project's contract),
"paper Eq.N", "seed code" (the authors' released code), or "ops" (an operational choice made here).
Unknown keys are errors everywhere (`extra="forbid"`). Secrets never live in YAML: the SASL password
and SSL key password are read from the environment (see `KafkaConfig.secrets_from_env`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TopicName = Literal["impressions", "clicks", "orders", "items", "rewards", "dlq"]
Compression = Literal["zstd", "lz4", "gzip", "snappy", "none"]


class TopicSettings(Section):
    """One topic's settings, used when streamrl creates it (`ensure_topics`) and by the producers
    streamrl runs on it; a field left out falls back to the `kafka.topics` default."""

    partitions: int | None = Field(None, ge=1)  # ops
    replication_factor: int | None = Field(None, ge=1)  # ops: 3 on a production cluster
    retention_ms: int | None = Field(None, ge=-1)  # ops: None = the broker's default; -1 keeps forever
    compression: Compression | None = None  # ops: codec of the messages streamrl produces here
    max_message_bytes: int | None = Field(None, ge=1024)  # ops: topic max.message.bytes (None: broker's)


class ResolvedTopic(BaseModel):
    name: str
    partitions: int
    replication_factor: int
    compression: Compression
    configs: dict[str, str]  # topic configs sent with CreateTopics


class TopicsConfig(Section):
    impressions: str = "streamrl.impressions"  # issue #2 contract, key = request_id
    clicks: str = "streamrl.clicks"  # issue #2 contract, key = request_id
    orders: str = "streamrl.orders"  # issue #2 contract, key = request_id
    items: str = "streamrl.items"  # issue #2 contract, key = item_id
    rewards: str = "streamrl.rewards"  # output: reward records, JSON batches (docs/architecture.md)
    dlq: str = "streamrl.dlq"  # output: dead letters with reason and provenance
    # Defaults for every topic `ensure_topics` creates; `settings.<topic>` overrides them per topic.
    partitions: int = Field(4, ge=1)  # ops: impressions, clicks and orders must keep equal counts
    replication_factor: int = Field(1, ge=1)  # ops: 1 suits the local broker; 3 in production
    compression: Compression = "zstd"  # ops: codec of what streamrl produces (rewards, dlq, simulator)
    settings: dict[TopicName, TopicSettings] = {}  # ops: per topic, e.g. rewards: {retention_ms: …}

    def resolve(self, name: str) -> ResolvedTopic:
        """The effective settings of the topic called `name` (defaults for a name not configured here)."""
        logical = next((t for t in get_args(TopicName) if getattr(self, t) == name), None)
        own = (self.settings.get(logical) if logical else None) or TopicSettings()
        codec = own.compression or self.compression
        # the broker keeps what streamrl's producers send as it is (no recompression)
        configs: dict[str, str] = {"compression.type": "uncompressed" if codec == "none" else codec}
        if own.retention_ms is not None:
            configs["retention.ms"] = str(own.retention_ms)
        if own.max_message_bytes is not None:
            configs["max.message.bytes"] = str(own.max_message_bytes)
        return ResolvedTopic(
            name=name,
            partitions=own.partitions or self.partitions,
            replication_factor=own.replication_factor or self.replication_factor,
            compression=codec,
            configs=configs,
        )


OAUTH_TOKEN_ENV = "STREAMRL_KAFKA_OAUTH_TOKEN"
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI", "AWS_MSK_IAM"]
SASL_PACKAGES = {"GSSAPI": "gssapi", "AWS_MSK_IAM": "botocore"}  # what kafka-python imports for them


class KafkaConfig(Section):
    """Connection settings, passed through to kafka-python. Point at production here."""

    bootstrap_servers: str = "127.0.0.1:9092"  # ops: host:port[,host:port]
    client_id: str = "streamrl"  # ops
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # ops: the SASL mechanisms kafka-python supports; GSSAPI needs the `gssapi` package, AWS_MSK_IAM
    # `botocore` (installed by the operator, checked at start)
    sasl_mechanism: SaslMechanism | None = None
    sasl_plain_username: str | None = None  # ops; the password comes from $STREAMRL_KAFKA_SASL_PASSWORD
    # ops: OAUTHBEARER reads the access token from this file at every (re)authentication, so the
    # platform's refresher (a sidecar, a workload-identity agent) keeps it fresh; else a fixed token
    # from $STREAMRL_KAFKA_OAUTH_TOKEN
    sasl_oauth_token_file: str | None = None
    sasl_kerberos_service_name: str = "kafka"  # ops: GSSAPI
    sasl_kerberos_domain_name: str | None = None  # ops: GSSAPI
    ssl_cafile: str | None = None  # ops: path to CA bundle
    ssl_certfile: str | None = None  # ops: client certificate (PEM)
    ssl_keyfile: str | None = None  # ops: client key; its password from $STREAMRL_KAFKA_SSL_PASSWORD
    ssl_check_hostname: bool = True  # ops
    join_group: str = "streamrl-joiner"  # ops: consumer group of the joiner members
    learn_group: str = "streamrl-learner"  # ops: the learner's own consumer group on rewards
    group_instance_id: str | None = None  # ops: static membership; a restarted member takes its
    #                                        partitions back without waiting for the session timeout
    session_timeout_ms: int = Field(10000, ge=1000)  # ops: member liveness (BROKER.md: 6000 in tests)
    heartbeat_interval_ms: int = Field(2000, ge=100)  # ops
    topics: TopicsConfig = TopicsConfig()

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConfig:
        m = self.sasl_mechanism
        if m and not self.security_protocol.startswith("SASL_"):
            raise ValueError(
                f"kafka.sasl_mechanism {m} needs kafka.security_protocol SASL_SSL (or SASL_PLAINTEXT), "
                f"not {self.security_protocol}"
            )
        if m == "AWS_MSK_IAM" and self.security_protocol != "SASL_SSL":
            raise ValueError("kafka.sasl_mechanism AWS_MSK_IAM needs kafka.security_protocol SASL_SSL")
        if self.security_protocol.startswith("SASL_") and not m:
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_mechanism")
        if m in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not self.sasl_plain_username:
            raise ValueError(
                f"kafka.sasl_mechanism {m} needs kafka.sasl_plain_username "
                "(the password comes from $STREAMRL_KAFKA_SASL_PASSWORD)"
            )
        if m == "OAUTHBEARER" and not (self.sasl_oauth_token_file or os.environ.get(OAUTH_TOKEN_ENV)):
            raise ValueError(
                "kafka.sasl_mechanism OAUTHBEARER needs a token: set kafka.sasl_oauth_token_file (a file "
                f"your platform keeps fresh) or ${OAUTH_TOKEN_ENV}"
            )
        if m in SASL_PACKAGES and importlib.util.find_spec(SASL_PACKAGES[m]) is None:
            raise ValueError(
                f"kafka.sasl_mechanism {m} needs the Python package {SASL_PACKAGES[m]!r}, not installed "
                f"here: pip install {SASL_PACKAGES[m]}"
            )
        return self

    def client_kwargs(self) -> dict[str, object]:
        """kafka-python keyword arguments shared by consumers, producers and admin clients (the
        OAUTHBEARER token provider is added by stream/kafka_io.py, the one module that imports kafka)."""
        kw: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            kw["sasl_plain_username"] = self.sasl_plain_username
            kw["sasl_plain_password"] = os.environ.get("STREAMRL_KAFKA_SASL_PASSWORD")
        if self.sasl_mechanism == "GSSAPI":
            kw["sasl_kerberos_service_name"] = self.sasl_kerberos_service_name
            kw["sasl_kerberos_domain_name"] = self.sasl_kerberos_domain_name
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                kw[name] = getattr(self, name)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw["ssl_check_hostname"] = self.ssl_check_hostname
            if os.environ.get("STREAMRL_KAFKA_SSL_PASSWORD"):
                kw["ssl_password"] = os.environ["STREAMRL_KAFKA_SSL_PASSWORD"]
        return kw


class CtrConfig(Section):
    """Calibrated posterior CTR (paper §3.4.1 R_CTR; formula in rewards/ctr.py)."""

    prior_ctr: float = Field(0.05, gt=0.0, lt=1.0)  # ops: global prior mean before any data
    global_strength: float = Field(100.0, ge=0.0)  # ops: pseudo-impressions behind prior_ctr
    item_strength: float = Field(20.0, ge=0.0)  # ops: pseudo-impressions shrinking item → global
    query_item_strength: float = Field(10.0, ge=0.0)  # ops: shrinking (query,item) → item
    half_life_s: float = Field(3 * 86400.0, gt=0.0)  # ops: exponential decay of counts, event time
    clip_eps: float = Field(1e-3, gt=0.0, lt=0.5)  # paper: "clipped to (0, 1)": [eps, 1-eps]
    max_entries: int = Field(2_000_000, ge=1000)  # ops: (query,item) pairs kept; weakest pruned


class JoinConfig(Section):
    """Join semantics of issue #2 (docs/architecture.md, "Join semantics")."""

    window_s: float = Field(600.0, gt=0.0)  # issue #2: attribution window after the impression
    allowed_lateness_s: float = Field(30.0, ge=0.0)  # issue #2: watermark = max ts - this
    idle_finalize_s: float = Field(60.0, gt=0.0)  # issue #2: wall-clock idle flush of open state
    orphan_ttl_s: float = Field(120.0, ge=0.0)  # issue #2: event time a click waits for its impression
    max_open_requests: int = Field(500_000, ge=1)  # issue #2: bound; oldest finalised early
    history_len: int = Field(20, ge=0)  # issue #2: clicked item_ids carried in a record
    max_users: int = Field(1_000_000, ge=1)  # ops: users whose history is remembered (LRU)
    # Event bounds (issue #14; docs/operations.md "Bounds"): past them an event is dead-lettered with
    # the bound named, never a crash, and never moves the watermark.
    max_event_bytes: int = Field(65_536, ge=256)  # security: one event's encoded size
    max_depth: int = Field(16, ge=4)  # security: JSON nesting (the contract needs 3)
    max_query_chars: int = Field(1_024, ge=1)  # security: an impression's query
    max_items: int = Field(500, ge=1)  # security: items shown in one impression
    max_event_skew_s: float = Field(300.0, gt=0.0)  # events ahead of the clock (wall; replay: the log's)
    max_event_age_s: float = Field(0.0, ge=0.0)  # events behind the wall clock, live; 0 = no bound
    v_click: float = 3.0  # seed code value for a click (the paper's prose has 3/4 reversed)
    v_order: float = 4.0  # seed code value for an order
    ctr: CtrConfig = CtrConfig()


class JoinerConfig(Section):
    """The long-lived `streamrl join` process (the Kafka edge of the join)."""

    commit_interval_s: float = Field(2.0, gt=0.0)  # ops: produce+flush+commit cadence
    max_batch_records: int = Field(500, ge=1)  # ops: reward records per output message
    # ops: and bytes per output message, under the rewards topic's max.message.bytes (Kafka's 1 MB default)
    max_batch_bytes: int = Field(900_000, ge=10_000)
    recovery_lookback_s: float = Field(3600.0, ge=0.0)  # ops: rewards-topic span re-read on start
    poll_timeout_ms: int = Field(200, ge=1)  # ops
    max_poll_records: int = Field(10_000, ge=1)  # ops: bigger polls cost kafka-python less per event
    poison_tries: int = Field(3, ge=1)  # ops: a message that keeps raising is dead-lettered after this


class ArchiveConfig(Section):
    """Rolling Parquet archive of the rewards topic (stream/archive.py)."""

    dir: str = "runs/local/archive"  # ops: where part files land
    roll_records: int = Field(50_000, ge=1)  # ops: records per part file, at most
    roll_s: float = Field(30.0, gt=0.0)  # ops: a part file is closed at least this often


MAX_WEIGHT = 1000.0  # reward weights, w_item, C&O values: far above any sane setting, far below overflow
MAX_BONUS = 100.0  # a promotion's bonus per component (the paper's example is +1 relevance)


class RewardWeightsConfig(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # paper Eq.10; released code: 1.0 each. Bounded (issue #14): a weight of 1e308 overflows the reward
    click_order: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    ctr: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    relevance: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)


class RelevanceConfig(Section):
    """Where R_Rel of generated items outside the impression comes from (rewards/relevance.py)."""

    source: Literal["catalog", "table", "http"] = "catalog"  # ops: catalog rule needs no data
    path: str | None = None  # table: Parquet (query, item_id, tier), e.g. a world's relevance.parquet
    url: str | None = None  # http: POST {"query","item_ids"} -> {"tiers"}
    timeout_s: float = Field(1.0, gt=0.0)  # http: after this, the catalog rule answers (counted)

    @model_validator(mode="after")
    def _needs(self) -> RelevanceConfig:
        if self.source == "table" and not self.path:
            raise ValueError("relevance.source 'table' needs relevance.path")
        if self.source == "http" and not self.url:
            raise ValueError("relevance.source 'http' needs relevance.url")
        return self


class ModelConfig(Section):
    pretrained_path: str | None = None  # ops: a local HF checkpoint; None = build from the shape below
    hidden: int = Field(128, ge=8)  # ops: tiny default that trains on a 2-core CPU
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=8)


class WarmStartConfig(Section):
    """SFT on logged records before RL (the paper's order: SFT first, then RL anchored to it).

    The streaming learner runs it once, when its run folder has no checkpoint yet: it reads the
    records (a Parquet folder, or a look-back on the rewards topic), takes `steps` SFT steps, saves a
    checkpoint, and only then continues with `learn.algo`. Neither source set = no warm start."""

    records: str | None = None  # ops: a folder of reward-record Parquet files (`streamrl replay` output)
    lookback_s: float | None = Field(None, gt=0.0)  # ops: or the rewards topic's last this many seconds
    steps: int = Field(300, ge=1)  # measured (docs/benchmarks.md): SFT steps of B prompts
    lr: float = Field(3e-4, gt=0.0)  # measured: the SFT learning rate (learn.lr is RL's)

    @property
    def enabled(self) -> bool:
        return bool(self.records) or self.lookback_s is not None


class LearnConfig(Section):
    """The TPMA-GRPO learner (rl/learner.py states the objective and every deviation)."""

    algo: Literal["tpma", "grpo", "sft"] = "tpma"  # paper §3.4; sft = the baseline
    tensorboard: bool = True  # ops: step and push curves in RUN_DIR/tensorboard (needs tensorboardX)
    batch_prompts: int = Field(16, ge=1)  # B
    group_size: int = Field(8, ge=1)  # G rollouts per prompt (paper: GRPO group)
    temperature: float = Field(1.0, gt=0.0)  # measured (docs/benchmarks.md sweep): rollout temperature
    constrained: bool = True  # measured: decode only real items (prefix trie), as serving does
    prompts: Literal["engaged", "all"] = "engaged"  # seed code: only requests with a click/order
    lr: float = Field(1e-4, gt=0.0)  # measured (docs/benchmarks.md sweep): AdamW, RL after a warm start
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)  # ops: global gradient-norm clip before each optimiser step
    # ops: learning-rate schedule over optimiser steps: linear warm-up for warmup_steps, then constant
    # or cosine down to lr * lr_min_ratio at decay_steps (restart-safe: a function of the step count)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int = Field(10_000, ge=1)  # cosine only: steps from the end of warm-up to the floor
    lr_min_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine only
    # ops: prompts per micro-batch; the B prompts of a step are rolled out and back-propagated in
    # chunks of this many (their G rollouts each) and the gradients accumulated, so peak memory is
    # set by micro_batch x G, not B x G; the gradient equals the one-batch gradient (tested). None = B
    micro_batch: int | None = Field(None, ge=1)
    # ops: ranks of the learner under `streamrl run` (torchrun --nproc-per-node; one per GPU, gloo on
    # CPUs); batch_prompts is the global batch, a multiple of it. rl/distributed.py says how it splits
    world_size: int = Field(1, ge=1)
    # ops: streaming: items that appear on the items topic get SIDs while the learner runs (no rebuild,
    # no re-IDs; rl/catalog_watch.py); the codebook is versioned and travels with checkpoints and pushes
    follow_items: bool = True
    max_restarts: int = Field(3, ge=0)  # ops: torchrun restarts the whole group this often after a rank dies
    # measured (docs/benchmarks.md sweep): per-token mean CE on the first target SID; seed code: 0.1
    sft_weight: float = Field(1.0, ge=0.0)
    # measured: k3 KL to the frozen reference (seed code: 0); > 0 needs an anchor (init_from, the
    # warm start, a resumed checkpoint or model.pretrained_path), else the learner refuses to start
    beta: float = Field(0.05, ge=0.0)
    clip_eps: float = Field(0.2, gt=0.0)  # Eq.12, grpo only
    w_item: float = 1.0  # Eq.17; seed code default 0 (deviation 1)
    # Eq.14; None = the seed code's rule for the codebook's L (rl/advantages.py `position_weights`)
    position_weights: tuple[float, ...] | None = None
    init_from: str | None = None  # ops: start RL from this checkpoint (same codebook), e.g. an SFT run
    warm_start: WarmStartConfig = WarmStartConfig()
    rewards: RewardWeightsConfig = RewardWeightsConfig()
    relevance: RelevanceConfig = RelevanceConfig()
    model: ModelConfig = ModelConfig()
    history_len: int = Field(5, ge=0)  # recent items' SIDs in the prompt
    device: Literal["auto", "cpu", "cuda"] = "auto"
    buffer_size: int = Field(20_000, ge=1)  # ops: streaming: recent records kept for sampling
    buffer_max_age_s: float = Field(3600.0, gt=0)  # ops: streaming: records older (event time) leave
    # ops: streaming: a record leaves the buffer after this many samples; on a quiet stream the learner
    # then idles (streamrl_learner_idle_seconds_total) instead of overfitting a few records. None = no cap
    max_reuse: int | None = Field(8, ge=1)
    run_dir: str = "runs/local/learner"  # ops: checkpoints/, heldout.parquet (`--run-dir` overrides)
    sids_dir: str = "runs/local/sids"  # ops: the `streamrl sids build` folder (`--sids` overrides)


class CheckpointConfig(Section):
    """When the streaming learner saves (then commits its offsets); issue #5. Either trigger saves."""

    every_steps: int | None = Field(50, ge=1)  # ops: steps between checkpoints; null = time only
    every_s: float | None = Field(60.0, gt=0.0)  # ops: seconds between checkpoints; null = steps only
    keep_last: int = Field(5, ge=1)  # ops: retention; every pushed checkpoint is kept as well


class PushConfig(Section):
    """Scheduled pushes to serving through the gate (checkpoints/push.py); issue #5."""

    enabled: bool = True  # ops: the learner schedules pushes (`streamrl push` works either way)
    every_s: float | None = Field(120.0, gt=0.0)  # ops: push period; ignored when cron is set
    cron: str | None = None  # ops: crontab string (5 fields, UTC), e.g. "*/10 * * * *"
    # ops: the minimum absolute held-out HR@10 drop refused (only when also significant at alpha)
    max_regression: float = Field(0.02, ge=0.0)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # ops: level of the gate's exact McNemar test (two-sided)
    # ops: paired held-out requests (engaged records, at most eval_records) below which the gate does
    # not compare HR@10 (a note says so); above eval_records it never compares
    min_heldout: int = Field(100, ge=1)
    # measured (docs/benchmarks.md): a candidate whose distinct top-1 SIDs over the held-out prompts
    # are this share of the distinct queries among them, or fewer, has collapsed: refused (0 = off)
    min_distinct_top1: float = Field(0.05, ge=0.0, le=1.0)
    heldout_percent: float = Field(5.0, ge=0.0, lt=100.0)  # ops: engaged records kept aside (by request)
    heldout_max: int = Field(500, ge=1)  # ops: newest held-out records kept for the gate
    eval_records: int = Field(200, ge=1)  # ops: held-out records evaluated per model at a push
    eval_beam: int = Field(16, ge=1)  # ops: beam width of the gate's evaluation (top-10 from it)
    notify_url: str | None = None  # ops: POST here after a push, e.g. http://127.0.0.1:8500/reload
    verify_timeout_s: float = Field(10.0, gt=0.0)  # ops: wait for the server to report the version

    @model_validator(mode="after")
    def _trigger(self) -> PushConfig:
        if self.enabled and self.every_s is None and not self.cron:
            raise ValueError("push.enabled needs push.every_s or push.cron")
        if self.cron:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"push.cron {self.cron!r}: {exc}") from exc
        return self


class ServingConfig(Section):
    """The serving layout and the reference server (`streamrl serve`); issue #5."""

    root: str = "runs/local/serving"  # ops: SERVING_ROOT
    model: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # ops: SERVING_ROOT/MODEL
    host: str = "127.0.0.1"  # security: loopback unless configured
    port: int = Field(8500, ge=0, le=65535)  # ops: 0 = any free port
    beam: int = Field(32, ge=1)  # ops: beam width of /search (results are the top k of it)
    max_k: int = Field(100, ge=1)  # ops: request bounds
    max_history: int = Field(50, ge=0)
    max_query_chars: int = Field(512, ge=1)
    max_query_tokens: int = Field(128, ge=1)  # security: over it 400 (prompts clip queries at 128 tokens)
    idle_timeout_s: float = Field(30.0, gt=0.0)  # security: an idle keep-alive connection is closed
    max_body_bytes: int = Field(65536, ge=256)
    poll_s: float = Field(0.5, gt=0.0)  # ops: how often the server re-reads policy.json and versions
    # Batching (serving/server.py): concurrent /search requests are decoded together by one thread.
    max_batch: int = Field(16, ge=1)  # ops: prompts per decoder batch
    batch_window_ms: float = Field(2.0, ge=0.0)  # ops: how long a lone request waits for company
    max_queue: int = Field(256, ge=1)  # ops: waiting requests past this get 503 at once
    request_timeout_s: float = Field(10.0, gt=0.0)  # ops: a /search not answered by then gets 504
    listen_backlog: int = Field(128, ge=1)  # ops: the socket's accept queue


class WeightsConfig(Section):
    """The versioned reward weights store (rewards/weights.py); issue #5."""

    dir: str = "runs/local/weights"  # ops
    poll_s: float = Field(1.0, gt=0.0)  # ops: the learner re-reads current.json at most this often


class RunConfig(Section):
    """`streamrl run`: the supervisor of the joiner and learner child processes (streamrl/supervisor.py)."""

    joiners: int = Field(1, ge=0)  # ops: joiner children (scale further with more hosts/partitions)
    learner: bool = True  # ops: run the learner child here (false: the learner lives on a GPU host)
    restart_backoff_s: float = Field(1.0, gt=0.0)  # ops: first restart delay of a crashed child
    restart_backoff_max_s: float = Field(30.0, gt=0.0)  # ops: doubling stops here
    healthy_after_s: float = Field(60.0, gt=0.0)  # ops: a child up this long starts over at the first delay
    drain_timeout_s: float = Field(25.0, gt=0.0)  # ops: SIGTERM → children drain; then SIGKILL


class MetricsConfig(Section):
    """/metrics (Prometheus) and /healthz (JSON) of each process (stream/metrics.py)."""

    host: str = "127.0.0.1"  # security: admin/metrics bind loopback unless configured
    supervisor_port: int = Field(9100, ge=0, le=65535)  # ops: `streamrl run`; 0 = no endpoint
    joiner_port: int = Field(9101, ge=0, le=65535)  # ops: `streamrl join`; 0 = no endpoint
    learner_port: int = Field(9102, ge=0, le=65535)  # ops: `streamrl learn`; 0 = no endpoint
    publish_s: float = Field(1.0, gt=0.0)  # ops: how often a process refreshes its snapshot
    # ops: /healthz answers 503 when the loop's last refresh is older than this (a hung loop); above the
    # longest pause a healthy loop takes (a learner step, a checkpoint with its push gate)
    stale_after_s: float = Field(300.0, gt=0.0)


class StreamrlConfig(Section):
    kafka: KafkaConfig = KafkaConfig()
    join: JoinConfig = JoinConfig()
    joiner: JoinerConfig = JoinerConfig()
    archive: ArchiveConfig = ArchiveConfig()
    learn: LearnConfig = LearnConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    push: PushConfig = PushConfig()
    serving: ServingConfig = ServingConfig()
    weights: WeightsConfig = WeightsConfig()
    run: RunConfig = RunConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _check(self) -> StreamrlConfig:
        if self.kafka.heartbeat_interval_ms * 3 > self.kafka.session_timeout_ms:
            raise ValueError("kafka.heartbeat_interval_ms must be at most a third of session_timeout_ms")
        self._own_ports()
        cap = self.kafka.topics.resolve(self.kafka.topics.rewards).configs.get("max.message.bytes")
        if cap and self.joiner.max_batch_bytes > int(cap) - 64 * 1024:
            raise ValueError(
                f"joiner.max_batch_bytes {self.joiner.max_batch_bytes} must stay 64 KiB under the rewards "
                f"topic's max.message.bytes {cap} (room for the message framing and headers)"
            )
        return self

    def _own_ports(self) -> None:
        """Each process of one host gets its own port (joiner i of `streamrl run` takes
        metrics.joiner_port + i): a clash is refused with both names (0 = no endpoint)."""
        m = self.metrics
        ports: dict[int, str] = {}
        named = [("metrics.supervisor_port", m.supervisor_port), ("serving.port", self.serving.port)]
        named += [
            (f"joiner {i} (metrics.joiner_port + {i})", m.joiner_port + i if m.joiner_port else 0)
            for i in range(max(self.run.joiners, 1))
        ]
        named.append(("metrics.learner_port", m.learner_port))
        for name, port in named:
            if not port:
                continue
            if port in ports:
                raise ValueError(
                    f"port {port} is both {ports[port]} and {name}: give each process its own port"
                )
            ports[port] = name


# -- reward weights and promotions (configs/rewards.yaml; versioned by rewards/weights.py) ----------


class PromotionMatch(Section):
    """Which items a promotion covers: any of the listed merchants, items or category prefixes."""

    merchant_ids: list[str] = []
    item_ids: list[str] = []
    category_prefix: list[str] = []  # e.g. [apparel, knit]: items whose category path starts so

    @model_validator(mode="after")
    def _not_empty(self) -> PromotionMatch:
        if not (self.merchant_ids or self.item_ids or self.category_prefix):
            raise ValueError("match is empty: give merchant_ids, item_ids or category_prefix")
        return self


class PromotionBonus(Section):
    """Added to the named reward components (unweighted) of matching items (paper §4.4: +1 relevance)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # a bonus promotes: negative values are refused (docs/operations.md), and so are absurd ones
    click_order: float = Field(0.0, ge=0.0, le=MAX_BONUS)
    ctr: float = Field(0.0, ge=0.0, le=MAX_BONUS)
    relevance: float = Field(0.0, ge=0.0, le=MAX_BONUS)


class Promotion(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")  # names metrics: no spaces
    match: PromotionMatch
    bonus: PromotionBonus
    start: AwareDatetime  # active from start (inclusive) to end (exclusive), on the record's event time
    end: AwareDatetime

    @model_validator(mode="after")
    def _window(self) -> Promotion:
        if self.end <= self.start:
            raise ValueError(f"promotion {self.name!r}: end {self.end} is not after start {self.start}")
        return self


class RewardsFile(Section):
    """The operator's live reward file: weights of Eq.10, w_item of Eq.17, C&O values, promotions."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    weights: RewardWeightsConfig = RewardWeightsConfig()
    w_item: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    v_click: float = Field(3.0, ge=0.0, le=MAX_WEIGHT)
    v_order: float = Field(4.0, ge=0.0, le=MAX_WEIGHT)
    promotions: list[Promotion] = Field([], max_length=1000)

    @model_validator(mode="after")
    def _unique_names(self) -> RewardsFile:
        names = [p.name for p in self.promotions]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"promotion names must be unique: {sorted(dup)}")
        return self
