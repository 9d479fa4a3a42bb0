"""Typed, frozen run configuration with a JSON round trip (`schema_version`) and dotted overrides."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import UserError

SCHEMA_VERSION = 1
# cosine-time: the cosine fitted to --max-time (step.HorizonFit); the same as cosine without one.
SCHEDULES = ("cosine-time", "cosine", "constant")


@dataclass(frozen=True)
class DataConfig:
    name: str = "brackets"  # dataset spec: `ndfa`, `brackets:p=0.4375`, `toy`, `imdb`
    n_train: int = 150_000  # synthetic: drawn with random.Random(seed) -> the course's list at seed 0
    n_val: int = 5_000
    n_test: int = 5_000
    seed: int = 0
    imdb: str | None = None  # archive / folder / course pickle; else $SEQGEN_IMDB
    char: bool = True  # imdb: characters (else words)
    voc: int | None = None  # imdb: keep the K most frequent tokens
    keep_br: bool = False  # imdb: keep `<br />` instead of '\n'
    chunk: int | None = None  # train on windows of at most this many tokens (long IMDb reviews; text streams)
    split: str = "0.9,0.05,0.05"  # text:PATH: contiguous train,val,test fractions of the stream
    carry_state: bool = True  # text:PATH, imdb: carry the LSTM state from one window to the next (truncated BPTT)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 0  # set from the dataset's vocabulary
    embed: int = 32
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 (bf16 matmul inputs; fp32 params, accumulation and state)
    unroll: int = 0  # lax.scan unroll factor; 0 lets lstm.resolve pick one for the platform
    backend: str = "auto"  # auto | scan | pallas | cudnn (seqgen_jax/lstm: the table and resolve)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-3
    schedule: str = "cosine-time"  # cosine-time | cosine | constant (seqgen_jax/step.py)
    warmup_steps: int = 50
    epochs: int = 3
    max_tokens: int = 10_000  # token budget per batch, padding included
    clip: float = 5.0
    adam_b2: float = 0.999  # Adam's second-moment decay (--set train.adam_b2=0.99)
    seed: int = 0
    max_time: float | None = None  # seconds; checkpoint and stop when reached
    log_every: int = 50
    keep: int = 3  # latest checkpoints kept (the best one is kept apart)
    max_buckets: int = 12
    eval_samples: int = 200  # per-epoch samples for validity (synthetic datasets)
    devices: str = "all"  # all | N: data-parallel over a 1-D mesh
    eval_every: int = 0  # text streams: also score val every N steps (0 = after each epoch only)
    sample_every: int = 0  # print a short sample every N steps (0 = never)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, d: dict) -> "RunConfig":
        if not isinstance(d, dict):
            raise UserError(f"config.json holds {type(d).__name__}, not a run configuration; the run directory is damaged")
        v = d.get("schema_version")
        if v != SCHEMA_VERSION:
            raise UserError(f"config.json schema_version {v!r} is not {SCHEMA_VERSION}; this run was written "
                            "by another seqgen_jax version")
        try:
            cfg = cls(DataConfig(**d["data"]), ModelConfig(**d["model"]), TrainConfig(**d["train"]))
        except (KeyError, TypeError) as e:
            raise UserError(f"config.json does not match the schema (missing or unknown {e}); the run directory "
                            "is damaged") from None
        for section in (cfg.data, cfg.model, cfg.train):
            for f in fields(section):
                v = getattr(section, f.name)
                if not _has_type(v, f.type):
                    raise UserError(f"config.json: {type(section).__name__}.{f.name} = {v!r} is not {f.type}; "
                                    "the run directory is damaged")
        return cfg

    def override(self, **dotted: Any) -> "RunConfig":
        """`cfg.override(**{"model.hidden": 128, "train.lr": 0.01})`."""
        parts = {"data": self.data, "model": self.model, "train": self.train}
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in parts or name not in {f.name for f in fields(parts[section])}:
                raise UserError(f"unknown setting {key!r}; use section.field, e.g. model.hidden")
            parts[section] = replace(parts[section], **{name: value})
        return replace(self, **parts)


DURATIONS = ("train.max_time",)  # seconds, also written 90s / 30m / 2h


def parse_setting(cfg: RunConfig, key: str, text: str) -> Any:
    """`--set model.hidden=300`: the text typed from the field's annotation ('int', 'float | None', ...)."""
    section, _, name = key.partition(".")
    parts = {"data": cfg.data, "model": cfg.model, "train": cfg.train}
    f = {x.name: x for x in fields(parts[section])}.get(name) if section in parts else None
    if f is None:
        raise UserError(f"unknown setting {key!r}; use section.field, e.g. model.hidden (fields: "
                        f"{', '.join(x.name for x in fields(parts.get(section, cfg.model)))})")
    kinds = [a.strip() for a in str(f.type).split("|")]
    t = text.strip()
    if "None" in kinds and t.lower() in ("none", "null"):
        return None
    if key in DURATIONS:  # written as on the command line: 90s, 30m, 2h
        return parse_duration(t)
    for kind in kinds:
        try:
            if kind == "bool" and t.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                return t.lower() in ("true", "1", "yes", "on")
            if kind == "int":
                return int(t)
            if kind == "float":
                return float(t)
            if kind == "str":
                return text
        except ValueError:
            continue
    raise UserError(f"--set {key}={text}: expected {f.type}")


def load_config_file(path: str, base: RunConfig) -> RunConfig:
    """`--config FILE.json`: a whole run configuration or any part of one, e.g.
    {"model": {"hidden": 64}, "train": {"lr": 0.01}}, laid over `base`."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--config {path}: cannot read it as JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(d, dict):
        raise UserError(f"--config {path}: expected an object like {{\"model\": {{\"hidden\": 64}}}}")
    dotted = {}
    for section, body in d.items():
        if section == "schema_version":
            continue
        if section not in ("data", "model", "train") or not isinstance(body, dict):
            raise UserError(f"--config {path}: unknown section {section!r}; use data, model and train")
        for k, v in body.items():
            dotted[f"{section}.{k}"] = v
    cfg = base.override(**dotted)
    for section in (cfg.data, cfg.model, cfg.train):
        for f in fields(section):
            v = getattr(section, f.name)
            if not _has_type(v, f.type):
                raise UserError(f"--config {path}: {type(section).__name__}.{f.name} = {v!r} is not {f.type}")
    return cfg


def _has_type(v, annotation: str) -> bool:
    """Field annotations are strings here (postponed evaluation): 'int', 'float | None', 'str', ..."""
    ok = {"int": lambda x: isinstance(x, int) and not isinstance(x, bool),
          "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
          "str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool), "None": lambda x: x is None}
    return any(ok.get(a.strip(), lambda x: True)(v) for a in str(annotation).split("|"))


def validate(cfg: RunConfig) -> None:
    """Ranges that would otherwise fail deep inside JAX, as one clear message each."""
    m, t = cfg.model, cfg.train
    checks = [
        (t.lr > 0, f"--lr {t.lr} must be > 0"),
        (t.clip > 0, f"--clip {t.clip} must be > 0"),
        (0 <= t.adam_b2 < 1, f"train.adam_b2 {t.adam_b2} must be in [0, 1), e.g. 0.999 (optax's default)"),
        (t.epochs >= 1, f"--epochs {t.epochs} must be >= 1"),
        (t.max_tokens >= 3, f"--max-tokens {t.max_tokens} must be >= 3 (a 1-symbol string with its "
                            "start and end markers)"),
        (m.embed >= 1 and m.hidden >= 1 and m.layers >= 1, "--embed, --hidden and --layers must be >= 1"),
        (0.0 <= m.dropout < 1.0, f"--dropout {m.dropout} must be in [0, 1)"),
        (m.precision in ("fp32", "bf16"), f"--precision {m.precision!r} must be fp32 or bf16"),
        (t.schedule in SCHEDULES, f"--schedule {t.schedule!r} must be one of {', '.join(SCHEDULES)}"),
        (t.max_time is None or t.max_time > 0, "--max-time must be positive"),
        (cfg.data.n_train >= 1, f"--n-train {cfg.data.n_train} must be >= 1"),
        (cfg.data.n_val >= 1, f"--n-val {cfg.data.n_val} must be >= 1"),
        (cfg.data.n_test >= 1, f"--n-test {cfg.data.n_test} must be >= 1 (eval scores the test split)"),
        (t.log_every >= 1, f"--log-every {t.log_every} must be >= 1"),
        (0 <= t.seed < 2 ** 32, f"--seed {t.seed} must be in [0, 2^32)"),
        (0 <= cfg.data.seed < 2 ** 32 - 2, f"--data-seed {cfg.data.seed} must be in [0, 2^32 - 2)"),
        (math.isfinite(t.lr) and math.isfinite(t.clip), "--lr and --clip must be finite numbers"),
        (m.embed <= 1 << 20 and m.hidden <= 1 << 20 and m.layers <= 64,
         "--embed and --hidden must be <= 1,048,576 and --layers <= 64"),
        (cfg.data.chunk is None or cfg.data.chunk >= 2, "--chunk must be >= 2"),
        (cfg.data.voc is None or cfg.data.voc >= 1, f"--voc {cfg.data.voc} must be >= 1"),
        (t.eval_every >= 0 and t.sample_every >= 0, "--eval-every and --sample-every must be >= 0 (0 = off)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if cfg.data.name.split(":")[0].lower() == "text":
        from .data.text import parse_split

        parse_split(cfg.data.split)
    from .lstm import check_name

    check_name(m.backend)


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '45' (seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            v = float(t[:-1]) * units[t[-1]]
        else:
            v = float(t)
    except ValueError:
        raise UserError(f"--max-time {text!r} is not a duration; write e.g. 90s, 30m or 2h") from None
    if v <= 0:
        raise UserError(f"--max-time {text!r} must be positive")
    return v
