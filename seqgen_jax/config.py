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
    feed: str = "auto"  # auto | bucket | packed | stream: how an epoch is batched (seqgen_jax/feeds.py)
    content_hash: str | None = None  # text:PATH: sha256 of the corpus when trained (eval/--resume check it)
    train_lengths: str | None = None  # "A-B": train and validation strings only of these lengths (languages)
    test_lengths: str | None = None  # "C-D": test strings drawn per length, test_per_length of each
    test_per_length: int = 200


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
    fold: bool = True  # fold the embedding into the first layer's input projection (exact; off for ablations)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-3
    schedule: str = "cosine-time"  # cosine-time | cosine | constant (seqgen_jax/step.py)
    warmup_steps: int = 50
    epochs: int = 3
    max_tokens: int = 10_000  # token budget per batch, padding included
    clip: float = 5.0
    adam_b1: float = 0.9  # Adam's first-moment decay
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
    steps_per_call: int = 0  # train steps per device program (0 = by platform, feeds.AUTO_STEPS_PER_CALL)


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


def read_config_file(path: str) -> dict:
    """`--config FILE.json`: a whole run configuration or any part of one, e.g.
    {"model": {"hidden": 64}, "train": {"lr": 0.01}}, as dotted settings {"model.hidden": 64, ...}."""
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
        if section not in ("data", "model", "train"):
            raise UserError(f"--config {path}: unknown section {section!r}; use data, model and train")
        if not isinstance(body, dict):
            raise UserError(f"--config {path}: section {section!r} must be an object of settings, e.g. "
                            f"{{\"{section}\": {{...}}}}, not {type(body).__name__}")
        for k, v in body.items():
            dotted[f"{section}.{k}"] = v
    return dotted


def check_types(cfg: RunConfig, where: str) -> None:
    """Every field holds a value of its annotated type (a JSON file or a library call can put anything
    there)."""
    for section in (cfg.data, cfg.model, cfg.train):
        for f in fields(section):
            v = getattr(section, f.name)
            if not _has_type(v, f.type):
                raise UserError(f"{where}: {type(section).__name__}.{f.name} = {v!r} is not {f.type}")


def _has_type(v, annotation: str) -> bool:
    """Field annotations are strings here (postponed evaluation): 'int', 'float | None', 'str', ..."""
    ok = {"int": lambda x: isinstance(x, int) and not isinstance(x, bool),
          "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
          "str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool), "None": lambda x: x is None}
    return any(ok.get(a.strip(), lambda x: True)(v) for a in str(annotation).split("|"))


def validate(cfg: RunConfig, where: str = "the configuration") -> None:
    """Every field checked once, whatever route it came by (flags, --set, --config, a library call):
    types, then ranges that would otherwise fail deep inside JAX or orbax, each as one clear line."""
    check_types(cfg, where)
    d, m, t = cfg.data, cfg.model, cfg.train
    checks = [
        (t.lr > 0, f"--lr {t.lr} must be > 0"),
        (t.clip > 0, f"--clip {t.clip} must be > 0"),
        (0 <= t.adam_b2 < 1, f"train.adam_b2 {t.adam_b2} must be in [0, 1), e.g. 0.999 (optax's default)"),
        (0 <= t.adam_b1 < 1, f"train.adam_b1 {t.adam_b1} must be in [0, 1), e.g. 0.9 (optax's default)"),
        (t.epochs >= 1, f"--epochs {t.epochs} must be >= 1"),
        (t.max_tokens >= 3, f"--max-tokens {t.max_tokens} must be >= 3 (a 1-symbol string with its "
                            "start and end markers)"),
        (m.embed >= 1 and m.hidden >= 1 and m.layers >= 1, "--embed, --hidden and --layers must be >= 1"),
        (0.0 <= m.dropout < 1.0, f"--dropout {m.dropout} must be in [0, 1)"),
        (m.precision in ("fp32", "bf16"), f"--precision {m.precision!r} must be fp32 or bf16"),
        (m.unroll >= 0, f"--unroll {m.unroll} must be >= 0 (0 lets the backend choose)"),
        (t.schedule in SCHEDULES, f"--schedule {t.schedule!r} must be one of {', '.join(SCHEDULES)}"),
        (t.max_time is None or (t.max_time > 0 and math.isfinite(t.max_time)), "--max-time must be positive"),
        (t.warmup_steps >= 0, f"train.warmup_steps {t.warmup_steps} must be >= 0"),
        (d.n_train >= 1, f"--n-train {d.n_train} must be >= 1"),
        (d.n_val >= 1, f"--n-val {d.n_val} must be >= 1"),
        (d.n_test >= 1, f"--n-test {d.n_test} must be >= 1 (eval scores the test split)"),
        (t.log_every >= 1, f"--log-every {t.log_every} must be >= 1"),
        (t.keep >= 1, f"train.keep {t.keep} must be >= 1 (the latest checkpoints kept; 0 would delete each one "
                      "as it is written)"),
        (t.max_buckets >= 1, f"train.max_buckets {t.max_buckets} must be >= 1"),
        (t.eval_samples >= 1, f"train.eval_samples {t.eval_samples} must be >= 1 (samples per epoch for the "
                              "valid rates)"),
        (t.steps_per_call >= 0, f"train.steps_per_call {t.steps_per_call} must be >= 0 (0 = by platform)"),
        (t.devices == "all" or (t.devices.isdigit() and int(t.devices) >= 1),
         f"--devices {t.devices!r} must be 'all' or a number >= 1"),
        (0 <= t.seed < 2 ** 32, f"--seed {t.seed} must be in [0, 2^32)"),
        (0 <= d.seed < 2 ** 32 - 2, f"--data-seed {d.seed} must be in [0, 2^32 - 2)"),
        (math.isfinite(t.lr) and math.isfinite(t.clip), "--lr and --clip must be finite numbers"),
        (m.embed <= 1 << 20 and m.hidden <= 1 << 20 and m.layers <= 64,
         "--embed and --hidden must be <= 1,048,576 and --layers <= 64"),
        (d.chunk is None or d.chunk >= 2, "--chunk must be >= 2"),
        (d.voc is None or d.voc >= 1, f"--voc {d.voc} must be >= 1"),
        (t.eval_every >= 0 and t.sample_every >= 0, "--eval-every and --sample-every must be >= 0 (0 = off)"),
        (d.chunk is None or t.max_tokens >= d.chunk,
         f"--max-tokens {t.max_tokens} is below --chunk {d.chunk}: a batch holds at least one window; raise "
         f"--max-tokens to {d.chunk} or more, or lower --chunk"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    for flag, text in (("--train-lengths", d.train_lengths), ("--test-lengths", d.test_lengths)):
        if text is not None:
            parse_lengths(text, flag)
    if d.test_per_length < 1:
        raise UserError(f"--test-per-length {d.test_per_length} must be >= 1")
    from .data.spec import dataset_kind
    from .feeds import resolve_feed

    if (d.train_lengths or d.test_lengths) and dataset_kind(d.name) != "language":
        raise UserError("--train-lengths and --test-lengths apply to languages with a known truth, not text corpora")
    if dataset_kind(d.name) == "text":
        from .data.text import parse_split

        parse_split(d.split)
    resolve_feed(d.feed, dataset_kind(d.name), carry_state=d.carry_state, platform="cpu")
    from .lstm import check_name

    check_name(m.backend)


def parse_lengths(text: str, flag: str = "--train-lengths") -> tuple[int, int]:
    """'1-40' -> (1, 40): a range of string lengths (symbols, the end marker not counted)."""
    lo, sep, hi = str(text).partition("-")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        a = b = -1
    if not sep or a < 0 or b < a:
        raise UserError(f"{flag} {text!r} must be a range A-B of lengths with 0 <= A <= B, e.g. 1-40")
    return a, b


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
