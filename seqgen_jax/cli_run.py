"""`seqgen train | sample | eval` (kept apart so `seqgen data` never imports JAX)."""
from __future__ import annotations

import argparse
import json
import math

from .errors import UserError
from .config import SCHEDULES
from .feeds import FEEDS
from .lstm import NAMES


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train an LSTM on a dataset into a run directory")
    t.add_argument("name", help="dataset spec: ndfa, brackets[:p=..], toy, pcfg:FILE, pfsa:FILE, imdb, text:PATH")
    t.add_argument("--run-dir", help="run directory (default runs/NAME)")
    _run_settings(t)
    g = t.add_argument_group("multi-host (JAX's own runtime)")
    g.add_argument("--coordinator", help="host:port of process 0")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    t.set_defaults(func=cmd_train)


def _add_sweep(sub) -> None:
    w = sub.add_parser("sweep", help="train a grid of settings x seeds, members of one shape as one program")
    w.add_argument("name", help="dataset spec, as for train")
    w.add_argument("--run-dir", help="sweep directory: one run directory per member in it (default runs/sweep)")
    w.add_argument("--seeds", type=int, default=1, help="seeds per grid cell (the --seed, +1, ...)")
    w.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="values to sweep, e.g. --grid train.lr=0.001,0.003 (repeatable: the product)")
    _run_settings(w)
    w.set_defaults(func=cmd_sweep)


def _run_settings(t) -> None:
    """The settings of a run, shared by train and sweep."""
    g = t.add_argument_group("model (defaults: the dataset's preset, see README)")
    g.add_argument("--embed", type=int)
    g.add_argument("--hidden", type=int)
    g.add_argument("--layers", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--precision", choices=("fp32", "bf16"))
    g.add_argument("--unroll", type=int, help="lax.scan unroll factor (0 = by backend)")
    g.add_argument("--backend", choices=NAMES, help="LSTM implementation (seqgen_jax/lstm); auto picks per platform")
    g = t.add_argument_group("training")
    g.add_argument("--lr", type=float)
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="cosine-time (default): cosine decay that ends by --max-time; cosine; constant")
    g.add_argument("--epochs", type=int)
    g.add_argument("--max-tokens", type=int, help="token budget per batch, padding included")
    g.add_argument("--clip", type=float, help="global gradient-norm clip (default 5)")
    g.add_argument("--seed", type=int, help="model initialisation, shuffling and dropout seed")
    g.add_argument("--max-time", help="stop and checkpoint after this long, e.g. 90s, 30m")
    g.add_argument("--log-every", type=int)
    g.add_argument("--devices", help="all (default) or N local devices for data parallelism")
    g.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    g = t.add_argument_group("data")
    g.add_argument("--n-train", type=int)
    g.add_argument("--n-val", type=int)
    g.add_argument("--n-test", type=int)
    g.add_argument("--data-seed", type=int, help="synthetic data seed (0 = the course's list)")
    g.add_argument("--imdb", help="IMDb archive, folder or course pickle (else $SEQGEN_IMDB)")
    g.add_argument("--chunk", type=int, help="train on windows of at most this many tokens (text and packed: "
                   "default 64)")
    g.add_argument("--feed", choices=FEEDS, help="how an epoch is batched: auto (default), bucket (length buckets), "
                   "packed (strings end to end, one shape), stream (text)")
    g.add_argument("--steps-per-call", type=int, help="train steps per device program (0 = by platform)")
    g.add_argument("--unit", choices=("char", "word"), help="text:PATH / imdb tokens: characters or whitespace words")
    g.add_argument("--voc", type=int, help="keep the K most frequent tokens of the training split, the rest .unk")
    g.add_argument("--split", help="text:PATH: contiguous train,val,test fractions (default 0.9,0.05,0.05)")
    g.add_argument("--carry-state", action=argparse.BooleanOptionalAction, default=None,
                   help="text:PATH and imdb: carry the LSTM state across windows (truncated BPTT; default on)")
    g.add_argument("--train-lengths", help="languages: train and validate only on strings of lengths A-B, e.g. 1-40")
    g.add_argument("--test-lengths", help="languages: test strings drawn per length C-D, e.g. 41-200")
    g.add_argument("--test-per-length", type=int, help="test strings per length with --test-lengths (default 200)")
    g.add_argument("--eval-every", type=int, help="also score val every N steps")
    g.add_argument("--sample-every", type=int, help="print a short sample every N steps")
    g = t.add_argument_group("any setting")
    g.add_argument("--config", help="a run configuration as JSON, whole or in part: {\"model\": {\"hidden\": 64}}")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any config field by its dotted name, e.g. --set model.hidden=300 (repeatable; wins over flags)")


FLAG_TO_FIELD = {
    "embed": "model.embed", "hidden": "model.hidden", "layers": "model.layers", "dropout": "model.dropout",
    "precision": "model.precision", "unroll": "model.unroll", "backend": "model.backend",
    "lr": "train.lr", "schedule": "train.schedule", "epochs": "train.epochs", "max_tokens": "train.max_tokens",
    "clip": "train.clip", "seed": "train.seed", "log_every": "train.log_every", "devices": "train.devices",
    "n_train": "data.n_train", "n_val": "data.n_val", "n_test": "data.n_test", "data_seed": "data.seed",
    "imdb": "data.imdb", "chunk": "data.chunk", "voc": "data.voc", "split": "data.split",
    "carry_state": "data.carry_state", "eval_every": "train.eval_every", "sample_every": "train.sample_every",
    "feed": "data.feed", "steps_per_call": "train.steps_per_call", "train_lengths": "data.train_lengths",
    "test_lengths": "data.test_lengths", "test_per_length": "data.test_per_length",
}


def config_from_args(a):
    """(RunConfig, the settings given) from the preset of the dataset, then --config, flags and --set
    (later ones win), as dotted settings applied once."""
    import os

    from .config import parse_duration, parse_setting, read_config_file
    from .data import absolute_spec
    from .presets import preset_config

    a.name = absolute_spec(a.name)
    cfg = preset_config(a.name)
    given: dict = {}
    if a.config:
        filed = read_config_file(a.config)
        named = filed.pop("data.name", None)
        if named is not None and (not isinstance(named, str) or absolute_spec(named) != a.name):
            raise UserError(f"--config {a.config} trains {named!r} but the command line names {a.name!r}; give one "
                            "dataset: drop data.name from the file or name the same dataset")
        given.update(filed)
    given.update({FLAG_TO_FIELD[k]: v for k, v in vars(a).items() if k in FLAG_TO_FIELD and v is not None})
    if a.unit is not None:
        given["data.char"] = a.unit == "char"
    if a.max_time is not None:
        given["train.max_time"] = parse_duration(a.max_time)
    for item in a.set:
        key, eq, text = item.partition("=")
        if not eq:
            raise UserError(f"--set {item!r} must be SECTION.FIELD=VALUE, e.g. model.hidden=300")
        key = key.strip()
        if key == "data.name":
            raise UserError("--set data.name: give the dataset as the positional argument")
        given[key] = parse_setting(cfg, key, text)
    if given.get("data.imdb"):  # a relative path must keep working from another folder
        given["data.imdb"] = os.path.abspath(os.path.expanduser(given["data.imdb"]))
    return cfg.override(**given), given  # validated once, by train() or sweep()


def cmd_train(a) -> None:
    cfg, given = config_from_args(a)
    from . import parallel

    if a.coordinator is None and (a.num_processes is not None or a.process_id is not None):
        raise UserError("--num-processes and --process-id need --coordinator host:port (or a SLURM launch)")
    if a.coordinator is not None:
        import socket

        host, _, port = a.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--coordinator {a.coordinator!r} must be host:port, e.g. node0:12345")
        try:
            socket.getaddrinfo(host, int(port))
        except OSError:
            raise UserError(f"--coordinator host {host!r} cannot be resolved; use process 0's host name or address") from None
    if a.num_processes is not None and not (a.num_processes >= 1 and 0 <= (a.process_id or 0) < a.num_processes):
        raise UserError(f"--process-id {a.process_id} must be in [0, --num-processes {a.num_processes})")
    try:
        parallel.maybe_initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"cannot start the multi-host runtime with --coordinator {a.coordinator}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    from .train import default_run_dir, train

    # Settings not given on the command line come from the run itself on --resume; only the length of
    # the run (--epochs, --max-time) and where the IMDb archive is (--imdb) may change.
    flags = {v: "--" + k.replace("_", "-") for k, v in FLAG_TO_FIELD.items()}
    rec = train(cfg, a.run_dir, resume=a.resume, given=given, name_of=lambda k: flags.get(k, "--set " + k))
    if rec:
        print(f"run directory: {a.run_dir if a.run_dir is not None else default_run_dir(cfg)}")


def cmd_sweep(a) -> None:
    from .config import parse_setting
    from .sweeps import sweep

    cfg, _ = config_from_args(a)
    grid = {}
    for item in a.grid:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not text.strip():
            raise UserError(f"--grid {item!r} must be SECTION.FIELD=V1,V2,..., e.g. --grid train.lr=0.001,0.003")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid")
        try:
            grid[key] = [parse_setting(cfg, key, v) for v in text.split(",")]
        except UserError as e:
            raise UserError(str(e).replace("--set ", "--grid ", 1)) from None
    sweep(cfg, grid, a.seeds, a.run_dir, resume=a.resume)


def cmd_sample(a) -> None:
    from .api import load

    from .sample import check_sampling_args

    if a.top_k is not None and a.top_k < 1:
        raise UserError(f"--top-k {a.top_k} must be >= 1 (leave it out to sample from every token)")
    check_sampling_args(a.n, a.temperature, a.top_k or 0, a.max_len)
    _check_seed(a.seed)
    run = load(a.run, a.checkpoint)
    rows = run.sample_records(a.n, a.temperature, a.top_k or 0, a.prompt, a.max_len, a.seed)
    for row in rows:
        print(row["text"] if a.format == "text" else json.dumps(row, ensure_ascii=False))


def _limit(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'all'") from None


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        ts = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--temperatures {text!r} must be comma-separated numbers, e.g. 0,0.5,1") from None
    if not ts or any(not 0 <= t < math.inf for t in ts):
        raise UserError(f"--temperatures {text!r} must be finite numbers >= 0")
    return ts


def _show(v) -> str:
    """One value of `eval`'s figures as text: per-temperature dicts, intervals, tables, numbers."""
    if isinstance(v, dict):
        return "  ".join(f"T={t}: {_show(x)}" for t, x in v.items())
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            return f"{len(v)} rows (see --json)"
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return "-" if v is None else str(v)


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2 ** 32:
        raise UserError(f"--seed {seed} must be in [0, 2^32)")


def cmd_eval(a) -> None:
    from .api import load

    temps = _temperatures(a.temperatures)
    if a.samples < 1:
        raise UserError(f"--samples {a.samples} must be >= 1")
    if a.max_len < 1:
        raise UserError(f"--max-len {a.max_len} must be >= 1")
    if isinstance(a.limit, int) and a.limit < 1:
        raise UserError(f"--limit {a.limit} must be >= 1 (or all)")
    _check_seed(a.seed)
    out = load(a.run, a.checkpoint).evaluate(split=a.split, samples=a.samples, temperatures=temps,
                                            max_len=a.max_len, seed=a.seed, limit=a.limit, imdb=a.imdb,
                                            allow_changed_corpus=a.allow_changed_corpus, by_length=a.by_length)
    out["run"] = a.run
    if a.json:
        from .io import json_safe

        print(json.dumps(json_safe(out), indent=2, allow_nan=False))
    else:
        for k, v in out.items():
            print(f"{k}: {_show(v)}")


def add_commands(sub) -> None:
    _add_train(sub)
    _add_sweep(sub)
    s = sub.add_parser("sample", help="draw samples from a trained run (restores its orbax checkpoint)")
    s.add_argument("run", help="run directory")
    s.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    s.add_argument("--n", type=int, default=10)
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely (default: all)")
    s.add_argument("--prompt", default="", help="symbols to continue after .start")
    s.add_argument("--max-len", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=("text", "jsonl"), default="text")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="score a trained run against held-out data and the true process")
    e.add_argument("run")
    e.add_argument("--checkpoint", default="latest")
    e.add_argument("--split", choices=("val", "test"), default="test")
    e.add_argument("--limit", type=_limit, help="score N held-out sequences drawn at random with --seed (stratified "
                   "by label for IMDb), or 'all' (IMDb: every one of the 25,000 official test reviews, "
                   "whatever the run's --n-test); a text corpus: a random excerpt of N tokens")
    e.add_argument("--samples", type=int, default=1000)
    e.add_argument("--temperatures", default="0,0.5,1")
    e.add_argument("--max-len", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--imdb", help="IMDb runs: where the archive is now (else the trained path, else $SEQGEN_IMDB)")
    e.add_argument("--by-length", action="store_true", help="languages: the figures per string length too "
                   "(KL gap, legal greedy predictions, valid samples) and by_length.png")
    e.add_argument("--allow-changed-corpus", action="store_true",
                   help="text runs: evaluate even though the corpus file changed since training")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
