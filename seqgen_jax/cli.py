"""`seqgen` command line: argument parsing only. Each command builds typed configs and calls the
library; a UserError anywhere becomes one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import UserError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, ensure_ascii=False))
    else:
        for k, v in obj.items():
            if isinstance(v, float):
                v = f"{v:.6g}"
            print(f"{k}: {v}")


# ---------------------------------------------------------------- data / score / baseline
def cmd_data(a) -> None:
    from .data import build_dataset, course_strings, get_language, parse_spec
    from .config import DataConfig

    name, _ = parse_spec(a.name)
    if a.by_length and name in ("text", "imdb"):
        raise UserError(f"--by-length needs a language with a known truth; {name} is a text corpus")
    if name == "text":
        ds = build_dataset(DataConfig(name=a.name, seed=a.seed, char=a.unit != "word", split=a.split))
        st = ds.info["stream"]
        out = {"dataset": ds.spec, "unit": ds.info["unit"], "fractions": ds.info["fractions"],
               "n_train": len(st["train"]), "n_val": len(st["val"]), "n_test": len(st["test"]),
               "documents": ds.info["n_docs"], "vocab_size": len(ds.vocab),
               "unigram_bits_per_token": ds.info["unigram_bits_per_token"], "cache": ds.info["cache"]}
        if not a.stats:
            raise UserError("seqgen data text:PATH prints corpus statistics only; add --stats")
        _emit(out, a.json)
        return
    if name == "imdb":
        if not a.stats:
            raise UserError("seqgen data imdb prints corpus statistics only; add --stats")
        ds = build_dataset(DataConfig(name="imdb", imdb=a.imdb, seed=a.seed, n_train=10**9, n_test=10**9))
        _emit({"n_train": len(ds.train), "n_val": len(ds.val), "n_test": len(ds.test),
               "n_chars_train": int(ds.train.lengths.sum()), "vocab_size": len(ds.vocab),
               "cache": ds.info.get("cache")}, a.json)
        return
    lang = get_language(a.name)
    n = a.n if a.n is not None else (150_000 if (a.course or not a.stats) else 20_000)
    if a.stats and a.n is None:
        from .data.base import monte_carlo_n

        n = monte_carlo_n(lang, n)  # long strings: fewer of them for the length statistics
    strings = course_strings(lang, n, a.seed) if a.course else lang.strings(n, a.seed)
    if a.stats:
        e = lang.entropy()
        lengths = [len(lang.tokens(s)) for s in strings]
        out = {"dataset": lang.spec, **e.to_json(), "mean_length": sum(lengths) / len(lengths),
               "max_length_seen": max(lengths), "n": n, "alphabet": lang.render(lang.alphabet)}
        if a.by_length:
            out["by_length"] = lang.by_length(a.max_len)
            if not a.json:
                _emit({k: v for k, v in out.items() if k != "by_length"}, False)
                print("length  p_length      entropy_bits  exact  stderr")
                for r in out["by_length"]:
                    print(f"{r['length']:>6}  {r['p_length']:.6e}  {r['entropy_bits']:>12.6f}  {str(r['exact']):>5}  "
                          f"{r['stderr']:.2g}")
                return
        _emit(out, a.json)
        return
    if a.by_length:
        raise UserError("--by-length goes with --stats: seqgen data NAME --stats --by-length --max-len N")
    text = "\n".join(strings) + "\n"
    if a.out:
        from pathlib import Path

        from .io import atomic_write_text

        if Path(a.out).is_dir():
            raise UserError(f"--out {a.out} is a directory; give a file name, e.g. {Path(a.out) / 'strings.txt'}")
        atomic_write_text(a.out, text)
    else:
        sys.stdout.write(text)


def cmd_score(a) -> None:
    from .data import get_language, spec_family

    lang = get_language(a.name)
    try:
        with open(a.file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {a.file}: {e}") from None
    rows = []
    alphabet = set(lang.alphabet)
    for no, s in enumerate(lines, 1):
        bad = sorted(set(lang.tokens(s)) - alphabet)
        if bad and spec_family(a.name) in ("pcfg", "pfsa"):
            raise UserError(f"{a.file} line {no}: symbol(s) {' '.join(map(repr, bad[:5]))} are not in the "
                            f"alphabet of {lang.spec} ({' '.join(lang.alphabet[:20])})")
    for s, lp in zip(lines, lang.log2_probs(lines)):
        lp = float(lp)
        rows.append({"text": s, "valid": lp > -math.inf, "log2_prob": lp if lp > -math.inf else None})
    valid = [r["log2_prob"] for r in rows if r["valid"]]
    summary = {"dataset": lang.spec, "n": len(rows), "valid_rate": len(valid) / max(len(rows), 1),
               "mean_log2_prob_valid": sum(valid) / len(valid) if valid else None}
    if a.json:
        print(json.dumps({**summary, "lines": rows}, indent=2))
        return
    for r in rows:
        lp = f"{r['log2_prob']:.4f}" if r["valid"] else "-inf"
        print(f"{'valid' if r['valid'] else 'INVALID'}\t{lp}\t{r['text']}")
    _emit(summary, False)


def cmd_baseline(a) -> None:
    from .data import get_language
    from .data.ngram import NGram

    if a.order < 0 or a.order > 8:
        raise UserError(f"--order {a.order} must be between 0 and 8")
    if not 0 < a.alpha < math.inf:
        raise UserError(f"--alpha {a.alpha} must be a finite number > 0 (the course's smoothing is 0.01)")
    lang = get_language(a.name)
    train = lang.strings(a.n_train, a.seed)
    test = lang.strings(a.n_test, a.seed + 1)
    bits = NGram(train, a.order, alpha=a.alpha, alphabet=lang.alphabet).bits_per_symbol(test)
    _emit({"dataset": lang.spec, "order": a.order, "alpha": a.alpha, "n_train": a.n_train,
           "n_test": a.n_test, "bits_per_char": bits}, a.json)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqgen", description="Fast character-level LSTM sequence "
                                "generators in JAX, measured against the true process.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="print strings or statistics of a dataset")
    d.add_argument("name", help="dataset spec: ndfa, brackets[:p=..], toy, pcfg:FILE, pfsa:FILE, imdb, text:PATH")
    d.add_argument("--n", type=_positive_int, default=None, help="number of strings (default 150,000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--course", action="store_true", help="the course's list: seeded draws sorted by length")
    d.add_argument("--out", help="write the strings to this file instead of stdout")
    d.add_argument("--stats", action="store_true", help="entropy floor and length statistics")
    d.add_argument("--json", action="store_true")
    d.add_argument("--by-length", action="store_true", help="with --stats: P(length) and the entropy given "
                   "the length, per length up to --max-len")
    d.add_argument("--max-len", type=_positive_int, default=40, help="longest length for --by-length (default 40)")
    d.add_argument("--imdb", help="IMDb archive or folder (else $SEQGEN_IMDB)")
    d.add_argument("--unit", choices=("char", "word"), default="char", help="text:PATH tokens")
    d.add_argument("--split", default="0.9,0.05,0.05", help="text:PATH train,val,test fractions")
    d.set_defaults(func=cmd_data)

    s = sub.add_parser("score", help="validity and true log2-probability of each line of a file")
    s.add_argument("name")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)

    b = sub.add_parser("baseline", help="the course's n-gram Markov baseline in bits per character")
    b.add_argument("name")
    b.add_argument("--order", type=int, required=True)
    b.add_argument("--alpha", type=float, default=0.01, help="additive smoothing (the course's 0.01)")
    b.add_argument("--n-train", type=_positive_int, default=150_000)
    b.add_argument("--n-test", type=_positive_int, default=10_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_baseline)

    from . import cli_run

    cli_run.add_commands(sub)
    return p


def _quiet_background_threads() -> None:
    """Background checkpoint threads may still hold exceptions that Python would print at exit
    ("Exception ignored in ...", "Event loop is closed"); the one line already said what went wrong."""
    import threading

    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"seqgen {args.cmd}: error: {e}", file=sys.stderr)
        _quiet_background_threads()
        return 2
    except KeyboardInterrupt:
        print(f"seqgen {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do; it is not a full disk.
        _quiet_stdout()
        return 0
    except IsADirectoryError as e:
        _quiet_background_threads()
        print(f"seqgen {args.cmd}: error: {e.filename} is a directory where seqgen expects a file; move it "
              "away (a damaged run directory?)", file=sys.stderr)
        return 2
    except OSError as e:
        # Disk full, a missing or read-only folder: one line; atomic writes have left no partial file.
        _quiet_background_threads()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"seqgen {args.cmd}: error: {e.strerror or e}{where}; free space or choose another path",
              file=sys.stderr)
        return 2
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so Python's own flush at exit does not fail on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
