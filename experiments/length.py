"""Does it generalise? Train on strings of length <= 40, test on 41-200, against the exact truth.

    python experiments/length.py [--quick] [--out out] [--seeds N] [--only NAME ...]

Four languages: Dyck-1 (the course's brackets), Dyck-2 (`languages/dyck2.cfg`), a^n b^n
(`languages/anbn.cfg`) and parity (`languages/parity.json`, an even number of a's). Each is trained
with `--train-lengths 1-40` (train and validation strings drawn from the process conditioned on that
range) as one sweep of several seeds (members trained together, `seqgen sweep`), then every member's
best checkpoint is evaluated `--by-length` on test strings drawn per length, 41-200 (each length
drawn exactly from P(s | |s| = n), so rare lengths are tested as often as common ones), and on the
in-range validation split. Per language, summary.md gives (mean ± standard deviation over seeds):
the KL gap in range, the KL gap per token on 41-200, the share of long test strings whose every greedy
next symbol is legal, and the valid rate of the model's own long samples; length.png plots the gap
against length with the training range shaded.

Unlike the Chomsky-hierarchy benchmark (transduction: an input string in, an output string out,
scored by per-position accuracy), this is generation with known truth: the model is scored on the
probability it gives to strings of the true process (KL to the true conditional distribution at every
length), on its next-symbol legality, and on the validity of what it generates itself.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LANGS = {
    "dyck1": "brackets",
    "dyck2": f"pcfg:{ROOT / 'experiments/languages/dyck2.cfg'}",
    "anbn": f"pcfg:{ROOT / 'experiments/languages/anbn.cfg'}",
    "parity": f"pfsa:{ROOT / 'experiments/languages/parity.json'}",
}
FULL = {"data.n_train": 20_000, "data.n_val": 1000, "train.epochs": 10, "model.embed": 32, "model.hidden": 64,
        "train.lr": 0.01, "train.max_tokens": 4000, "data.test_per_length": 50, "data.test_lengths": "41-200"}
QUICK = {**FULL, "data.n_train": 5000, "data.n_val": 500, "train.epochs": 5, "data.test_per_length": 20}
GAP_NATS = 0.05  # DuSell & Chiang's "within 0.05 nats" of the true distribution, per token


def evaluate_member(run_dir: Path, samples: int) -> dict:
    import seqgen_jax as sg

    run = sg.load(run_dir, "best")
    test = run.evaluate(split="test", samples=samples, temperatures=(0.0, 1.0), max_len=260, by_length=True)
    val = run.evaluate(split="val", samples=200, temperatures=(1.0,), max_len=260)
    rows = [r for r in test["by_length"] if r.get("kl_bits_per_token") is not None]
    tok = sum(r["n_tokens"] for r in rows)
    long_samples = [(r["n_samples"], r["sample_valid_rate"]) for r in test["by_length"] if r["n_samples"]]
    n_long = sum(n for n, _ in long_samples)
    within = [r["length"] for r in rows if r["kl_bits_per_token"] * math.log(2) <= GAP_NATS]
    first_out = next((r["length"] for r in rows if r["kl_bits_per_token"] * math.log(2) > GAP_NATS), None)
    return {"member": run_dir.name, "in_range_kl_bits_per_token": val["kl_bits_per_token"],
            "in_range_valid_rate_1": val["valid_rate"]["1.0"],
            "long_kl_bits_per_token": sum(r["kl_bits_per_token"] * r["n_tokens"] for r in rows) / max(tok, 1),
            "long_greedy_legal_rate": float(np.mean([r["greedy_legal_rate"] for r in rows])),
            "long_samples": n_long,
            "long_sample_valid_rate": (sum(n * v for n, v in long_samples) / n_long) if n_long else None,
            "lengths_within_gap": len(within), "lengths_tested": len(rows), "first_length_beyond_gap": first_out,
            "by_length": test["by_length"]}


def pm(xs, d=4) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    a = np.array(xs, float)
    return f"{a.mean():.{d}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{d}f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 training strings, 5 epochs, 2 seeds, 20 test "
                    "strings per length: about 15 minutes on 2 CPU cores")
    ap.add_argument("--out", default="out")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per language (default 3; 2 with --quick)")
    ap.add_argument("--only", nargs="*", choices=list(LANGS), help="these languages only")
    args = ap.parse_args(argv)
    import seqgen_jax as sg

    settings = QUICK if args.quick else FULL
    seeds = args.seeds or (2 if args.quick else 3)
    out = Path(args.out) / ("length-quick" if args.quick else "length")
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    t0 = time.time()
    for name in args.only or LANGS:
        spec = LANGS[name]
        d = out / name
        cfg = sg.config(spec, **settings, **{"data.train_lengths": "1-40", "train.eval_samples": 100})
        t = time.time()
        if not (d / "sweep.json").exists():
            sg.sweep(cfg, {}, seeds=seeds, run_dir=d, resume=(d / "sweep-plan.json").exists(),
                     log=lambda s: print(f"[{name}] {s}", flush=True))
        train_s = time.time() - t
        members = sorted(p for p in d.iterdir() if p.is_dir())
        evals = [evaluate_member(m, 500) for m in members]
        results[name] = {"dataset": spec, "seeds": seeds, "train_seconds": round(train_s, 1), "members": evals}
        print(f"[{name}] in-range KL {pm([e['in_range_kl_bits_per_token'] for e in evals])}, 41-200 KL "
              f"{pm([e['long_kl_bits_per_token'] for e in evals])} bits/token", flush=True)
    summary = {"settings": settings, "seeds": seeds, "gap_nats": GAP_NATS, "seconds": round(time.time() - t0, 1),
               "command": "python experiments/length.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "languages": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_md(out, summary)
    plot(out, results)
    print(f"wrote {out / 'summary.md'} in {time.time() - t0:.0f}s")


def write_md(out: Path, s: dict) -> None:
    lines = ["# Length generalisation: train on lengths 1-40, test on 41-200", "",
             f"`{s['command']}`; {s['seeds']} seeds per language (mean ± standard deviation over seeds), "
             f"{s['seconds']:.0f} s in all. KL in bits per token against the exact truth; 'within gap' counts "
             f"the tested lengths whose KL is at most {s['gap_nats']} nats per token.", "",
             "| language | in-range KL | 41-200 KL | greedy legal (41-200) | long samples valid | lengths within gap "
             "| first length beyond gap |", "|---|---|---|---|---|---|---|"]
    for name, r in s["languages"].items():
        e = r["members"]
        lines.append(f"| {name} | {pm([x['in_range_kl_bits_per_token'] for x in e])} | "
                     f"{pm([x['long_kl_bits_per_token'] for x in e])} | "
                     f"{pm([x['long_greedy_legal_rate'] for x in e], 3)} | "
                     f"{pm([x['long_sample_valid_rate'] for x in e], 3)} (n={sum(x['long_samples'] for x in e)}) | "
                     f"{pm([x['lengths_within_gap'] for x in e], 1)} of {e[0]['lengths_tested']} | "
                     f"{', '.join(str(x['first_length_beyond_gap']) for x in e)} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for e in r["members"]:
            rows = [x for x in e["by_length"] if x.get("kl_bits_per_token") is not None]
            ax.plot([x["length"] for x in rows], [x["kl_bits_per_token"] * math.log(2) for x in rows], lw=1,
                    label=e["member"])
        ax.axvspan(1, 40, color="g", alpha=0.12)
        ax.axhline(GAP_NATS, color="k", ls=":", lw=0.8)
        ax.set(title=name, xlabel="length", ylabel="KL gap (nats/token)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "length.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
