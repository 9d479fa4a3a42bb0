"""`pcfg:PATH`: a probabilistic context-free grammar in NLTK's `PCFG.fromstring` notation.

    # a^n b^n
    S -> 'a' S 'b' [0.6] | 'a' 'b' [0.4]

The first rule's left-hand side is the start symbol; quoted items are terminals, each one token (a
terminal may be a word like 'the'); bare names are nonterminals; `#` starts a comment; a line that
starts with `|` continues the previous left-hand side. Strings are written with their tokens joined by
single spaces when any terminal is longer than one character, else concatenated.

Truth: `log_prob` is the inside algorithm (sums over every derivation, so ambiguous grammars are
scored right), vectorised over all spans of one length and over strings of the same length, in log
space so long strings neither underflow nor overflow. An Earley recogniser gives the legal next
tokens and rejects an invalid string at its first wrong token. The entropy floor is the derivation
entropy from the expected rule counts (a linear system) when no sampled string has a second
derivation, else a Monte-Carlo estimate from exact string probabilities with its standard error.
"""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import LOG2E, Entropy, Language, check_lengths, symbol_problem
from .earley import Earley, OverBudget
from .lengths import GrammarTables, TableLengths

TOL = 1e-6
EARLEY_BUDGET = 200_000  # item operations before a string goes to the inside pass undecided
MAX_INSIDE = 3_000  # tokens: the inside pass is cubic in the length
_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|\[[^\]]*\]|->|\||[^\s'"\[\]|]+""")
_NT = "\x00"  # internal prefix: a nonterminal named like a terminal never collides with it


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def parse_grammar(text: str, where: str) -> tuple[str, list[tuple[str, tuple[str, ...], float, int]]]:
    """-> (start, [(lhs, rhs, probability, line)]) with nonterminals prefixed by `_NT`."""
    rules: list[tuple[str, tuple[str, ...], float, int]] = []
    lhs = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        toks = _TOKEN.findall(line)
        if "".join(toks).replace(" ", "") != line.replace(" ", "").replace("\t", ""):
            raise UserError(f"{where} line {no}: cannot read {line!r} (an unclosed quote or bracket?)")
        if toks[0] == "|":
            if lhs is None:
                raise UserError(f"{where} line {no}: a continuation '|' before any rule")
            body = toks  # leading '|' separates nothing before it
        else:
            if len(toks) < 2 or toks[1] != "->" or not re.fullmatch(r"[^\s'\"\[\]|]+", toks[0]):
                raise UserError(f"{where} line {no}: cannot parse {line!r}; write e.g. S -> 'a' S 'b' [0.6] | 'a' 'b' [0.4]")
            lhs = _NT + toks[0]
            body = toks[2:]
        alts, cur = [], []
        for t in body + ["|"]:
            if t == "|":
                if cur:
                    alts.append(cur)
                cur = []
            else:
                cur.append(t)
        if not alts:
            raise UserError(f"{where} line {no}: {lhs[1:]} has no right-hand side")
        for alt in alts:
            if not alt[-1].startswith("["):
                raise UserError(f"{where} line {no}: {' '.join(alt)!r} has no probability; end each alternative "
                                "with [p], e.g. 'a' S [0.5]")
            try:
                p = float(alt[-1][1:-1])
            except ValueError:
                raise UserError(f"{where} line {no}: {alt[-1]} is not a probability") from None
            if not 0 <= p <= 1:
                raise UserError(f"{where} line {no}: probability {p} is outside [0, 1]")
            items = alt[:-1]
            if not items:
                raise UserError(f"{where} line {no}: an empty right-hand side for {lhs[1:]}; empty rules are not "
                                "supported, rewrite the grammar without them")
            rhs = []
            for it in items:
                if it[0] in "'\"":
                    if len(it) < 3 or " " in it[1:-1]:
                        raise UserError(f"{where} line {no}: terminal {it} must be a non-empty token without spaces")
                    bad = symbol_problem(it[1:-1])
                    if bad:
                        raise UserError(f"{where} line {no}: terminal {it} {bad}")
                    rhs.append(it[1:-1])
                elif it.startswith("[") or it == "->":
                    raise UserError(f"{where} line {no}: misplaced {it!r} in {line!r}")
                else:
                    rhs.append(_NT + it)
            rules.append((lhs, tuple(rhs), p, no))
    if not rules:
        raise UserError(f"{where}: no rules; write one per line, e.g. S -> 'a' S 'b' [0.6] | 'a' 'b' [0.4]")
    return rules[0][0], rules


def expectation_matrix(rules) -> tuple[list[str], np.ndarray]:
    """(nonterminals, M) with M[A, B] = expected number of B's in one expansion of A."""
    nts = sorted({r[0] for r in rules})
    idx = {a: i for i, a in enumerate(nts)}
    M = np.zeros((len(nts), len(nts)))
    for l, r, p, *_ in rules:
        for x in r:
            if x.startswith(_NT):
                M[idx[l], idx[x]] += p
    return nts, M


def length_moments(rules, start: str) -> tuple[float, float]:
    """(mean, standard deviation) of the number of terminals a derivation from `start` yields: the
    first two moments of a multi-type branching process, each a linear system in the expectation
    matrix (so a near-critical recursion shows its heavy tail before anything is sampled)."""
    nts, M = expectation_matrix(rules)
    idx = {a: i for i, a in enumerate(nts)}
    n = len(nts)
    t = np.zeros(n)
    for l, r, p, *_ in rules:
        t[idx[l]] += p * sum(not x.startswith(_NT) for x in r)
    A = np.eye(n) - M
    m = np.linalg.solve(A, t)
    c = np.zeros(n)
    for l, r, p, *_ in rules:
        mu = np.array([m[idx[x]] if x.startswith(_NT) else 1.0 for x in r])
        c[idx[l]] += p * (sum(not x.startswith(_NT) for x in r) + mu.sum() ** 2 - (mu ** 2).sum())
    s2 = np.linalg.solve(A, c)
    mean = float(m[idx[start]])
    return mean, float(np.sqrt(max(s2[idx[start]] - mean * mean, 0.0)))


def _lse(x: np.ndarray, axis) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - m), axis=axis)) + np.squeeze(m, axis=axis)


class PCFG(TableLengths, Language):
    name = "pcfg"

    def __init__(self, path: str | None = None, text: str | None = None):
        self.path = path
        where = f"pcfg:{path}" if path else "grammar"
        if text is None:
            try:
                text = Path(path).expanduser().read_text(encoding="utf-8")
            except FileNotFoundError:
                raise UserError(f"{where}: no such file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"{where}: cannot read it ({e})") from None
        self.start, rules = parse_grammar(text, where)
        self._validate(rules, where)
        self.rules = [(l, r, p) for l, r, p, _ in rules if p > 0]
        self.nts = sorted({l for l, _, _ in self.rules} | {self.start})
        self.alphabet = tuple(sorted({x for _, r, _ in self.rules for x in r if not x.startswith(_NT)}))
        self.char = all(len(x) == 1 for x in self.alphabet)
        self.by_lhs: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for l, r, p in self.rules:
            self.by_lhs.setdefault(l, []).append((r, p))
        # For sampling: per nonterminal, cumulative probabilities and right-hand sides pre-reversed
        # onto a stack, nonterminals as ints (a derivation is a tight loop without string tests).
        nt_id = {a: i for i, a in enumerate(self.by_lhs)}
        self._nt_names = list(self.by_lhs)
        self._sampler = []
        for a in self._nt_names:
            cum, rhss, acc = [], [], 0.0
            for r, p in self.by_lhs[a]:
                acc += p
                cum.append(acc)
                rhss.append((tuple(nt_id[x] if x.startswith(_NT) else x for x in reversed(r)), math.log(p)))
            cum[-1] = 1.0 + 1e-12  # rounding never falls off the end
            self._sampler.append((cum, rhss))
        self._start_id = nt_id[self.start]
        self.earley = Earley([(l, r) for l, r, _ in self.rules], self.start)
        self._build_inside()
        self._entropy = None
        self._lt = None  # length tables, built on first use
        self._unamb = None

    @property
    def spec(self) -> str:
        return f"pcfg:{self.path}"

    # ---- checks ----
    def _validate(self, rules, where: str) -> None:
        first_line = {}
        sums: dict[str, float] = {}
        for l, r, p, no in rules:
            first_line.setdefault(l, no)
            sums[l] = sums.get(l, 0.0) + p
        for l, s in sums.items():
            if abs(s - 1.0) > TOL:
                raise UserError(f"{where} line {first_line[l]}: the probabilities of {l[1:]}'s rules sum to {s:.6g}, not 1")
        for l, r, p, no in rules:
            for x in r:
                if x.startswith(_NT) and x not in sums:
                    raise UserError(f"{where} line {no}: nonterminal {x[1:]} is used but has no rules (quote it if "
                                    "it is a terminal: '" + x[1:] + "')")
        start = rules[0][0]
        reach, frontier = {start}, [start]
        while frontier:
            a = frontier.pop()
            for l, r, p, _ in rules:
                if l == a and p > 0:
                    for x in r:
                        if x.startswith(_NT) and x not in reach:
                            reach.add(x)
                            frontier.append(x)
        for l in sums:
            if l not in reach:
                raise UserError(f"{where} line {first_line[l]}: nonterminal {l[1:]} cannot be reached from the start "
                                f"symbol {start[1:]}; remove it or use it")
        # Generating nonterminals: those with a rule whose nonterminals all generate.
        gen, changed = set(), True
        while changed:
            changed = False
            for l, r, p, _ in rules:
                if p > 0 and l not in gen and all(not x.startswith(_NT) or x in gen for x in r):
                    gen.add(l)
                    changed = True
        if start not in gen:
            raise UserError(f"{where}: the language is empty: {start[1:]} derives no finite string")
        nts, M = expectation_matrix(rules)
        rho = max(abs(np.linalg.eigvals(M))) if len(nts) else 0.0
        if rho >= 1 - 1e-9:
            raise UserError(f"{where}: the grammar does not terminate with probability 1 (spectral radius of its "
                            f"expectation matrix {rho:.6f} >= 1); lower the probabilities of recursive rules")
        check_lengths(where, *length_moments(rules, start))

    # ---- sampling ----
    def sample(self, rng: random.Random) -> str:
        return self.render(self._derive(rng)[0])

    def _derive(self, rng: random.Random, stack: list | None = None) -> tuple[list[str], float]:
        """(tokens, log probability of the derivation drawn); one rng.random() per expansion, leftmost
        first, from the start symbol (or from a given stack of reversed symbols)."""
        out, lp = [], 0.0
        stack = [self._start_id] if stack is None else stack
        table, rand, pop, push = self._sampler, rng.random, stack.pop, stack.extend
        while stack:
            x = pop()
            if x.__class__ is str:
                out.append(x)
                continue
            cum, rhss = table[x]
            u = rand()
            k = 0
            while u >= cum[k]:
                k += 1
            rhs, lpk = rhss[k]
            lp += lpk
            push(rhs)
        return out, lp

    # ---- exact probabilities ----
    def _build_inside(self) -> None:
        """Binarise: terminals inside longer rules get preterminals, rules longer than 2 are chained
        through fresh nonterminals, unit rules A -> B are folded into a closure (I - U)^-1."""
        nts = list(self.nts)
        lex: dict[str, dict[str, float]] = {}  # terminal -> {nt: p}
        binary: list[tuple[str, str, str, float]] = []
        unary: list[tuple[str, str, float]] = []

        def pre(t: str) -> str:
            name = "\x01" + t
            if name not in nts:
                nts.append(name)
                lex.setdefault(t, {})[name] = 1.0
            return name

        fresh = 0
        for l, r, p in self.rules:
            if len(r) == 1:
                if r[0].startswith(_NT):
                    unary.append((l, r[0], p))
                else:
                    lex.setdefault(r[0], {})[l] = lex.get(r[0], {}).get(l, 0.0) + p
                continue
            syms = [x if x.startswith(_NT) else pre(x) for x in r]
            head, prob = l, p
            while len(syms) > 2:
                fresh += 1
                name = f"\x02{fresh}"
                nts.append(name)
                binary.append((head, syms[0], name, prob))
                head, prob, syms = name, 1.0, syms[1:]
            binary.append((head, syms[0], syms[1], prob))
        idx = {a: i for i, a in enumerate(nts)}
        N = len(nts)
        U = np.zeros((N, N))
        for a, b, p in unary:
            U[idx[a], idx[b]] += p
        with np.errstate(divide="ignore"):
            # (A, B): A =>* B by unit rules; clipped, as rounding can leave -1e-17 where the sum is 0
            self._log_ustar = np.log(np.maximum(np.linalg.inv(np.eye(N) - U), 0.0))
            self._log_ustar[~np.isfinite(self._log_ustar)] = -np.inf
            self._lex = {t: np.log(np.array([d.get(a, 0.0) for a in nts])) for t, d in lex.items()}
        self._bin_b = np.array([idx[b] for _, b, _, _ in binary], np.int64)
        self._bin_c = np.array([idx[c] for _, _, c, _ in binary], np.int64)
        self._bin_logp = np.log(np.array([p for *_, p in binary]))
        P = np.full((len(binary), N), -np.inf)  # rule -> its left-hand side
        for k, (a, *_rest) in enumerate(binary):
            P[k, idx[a]] = self._bin_logp[k]
        self._bin_to_lhs = P
        self._N, self._start_idx = N, idx[self.start]

    def _closure(self, raw: np.ndarray) -> np.ndarray:
        """raw (..., N) -> (..., N): add what unit-rule chains above each nonterminal contribute."""
        return _lse(raw[..., None, :] + self._log_ustar, axis=-1)

    def _inside_batch(self, tokens: list[list[str]]) -> np.ndarray:
        """Natural-log inside probability of the start symbol over each sequence (all the same length n)."""
        b, n, N = len(tokens), len(tokens[0]), self._N
        chart = np.full((b, n, n + 1, N), -np.inf)  # chart[:, i, l] = span of length l from i
        neg = np.full(N, -np.inf)
        for s, toks in enumerate(tokens):
            for i, t in enumerate(toks):
                chart[s, i, 1] = self._lex.get(t, neg)
        chart[:, :, 1] = self._closure(chart[:, :, 1])
        R = len(self._bin_logp)
        for l in range(2, n + 1):
            m = n - l + 1
            if R == 0:
                break
            k = np.arange(1, l)
            i = np.arange(m)
            left = chart[:, i[:, None], k[None, :]]  # (b, m, l-1, N): span (i, k)
            right = chart[:, i[:, None] + k[None, :], (l - k)[None, :]]  # span (i + k, l - k)
            both = left[..., self._bin_b] + right[..., self._bin_c]  # (b, m, l-1, R)
            per_rule = _lse(both, axis=2)  # (b, m, R)
            raw = _lse(per_rule[..., :, None] + self._bin_to_lhs, axis=-2)  # (b, m, N)
            chart[:, :m, l] = self._closure(raw)
        return chart[:, 0, n, self._start_idx]

    def log_probs(self, strings: list[str], drawn: bool = False) -> np.ndarray:
        """Natural-log probabilities of many strings: the Earley pass rejects invalid ones at their
        first wrong token, the valid ones go through the inside pass in batches of one length.
        `drawn`: the strings were sampled from this grammar, so the Earley pass is skipped."""
        out = np.full(len(strings), -np.inf)
        by_len: dict[int, list[int]] = {}
        toks = [self.tokens(s) for s in strings]
        for j, t in enumerate(toks):
            if not t or not all(x in self._lex for x in t):
                continue
            try:
                if drawn:
                    raise OverBudget
                if not self.earley.recognise(t, EARLEY_BUDGET)[0]:
                    continue
            except OverBudget:
                pass  # long and highly ambiguous: the inside pass decides
            if len(t) > MAX_INSIDE:
                raise UserError(f"a string of {len(t):,} tokens is too long to score exactly (the inside algorithm "
                                f"is cubic; limit {MAX_INSIDE:,} tokens)")
            by_len.setdefault(len(t), []).append(j)
        for n, js in by_len.items():
            per = max(1, int(4e6 // (n * (n + 1) * self._N)))  # bound the chart's memory
            for a in range(0, len(js), per):
                part = js[a:a + per]
                out[part] = self._inside_batch([toks[j] for j in part])
        return out

    def log_prob(self, s: str) -> float:
        return float(self.log_probs([s])[0])

    def log2_probs(self, strings: list[str]) -> np.ndarray:
        return self.log_probs(strings) * LOG2E

    def accepts(self, s: str) -> bool:
        return bool(self.log_probs([s])[0] > -math.inf)

    def prefix_table(self, s: str):
        return self.earley.prefix_table(self.tokens(s))

    def next_symbols(self, prefix: str):
        return self.prefix_table(prefix)[-1]

    # ---- entropy ----
    def expected_counts(self) -> dict[str, float]:
        nts, M = expectation_matrix(self.rules)
        idx = {a: i for i, a in enumerate(nts)}
        e = np.zeros(len(nts))
        e[idx[self.start]] = 1.0
        c = np.linalg.solve((np.eye(len(nts)) - M).T, e)
        return {a: float(c[idx[a]]) for a in nts}

    def derivation_entropy(self) -> tuple[float, float]:
        """(bits per derivation, tokens per string including the end)."""
        c = self.expected_counts()
        bits = tokens = 0.0
        for a, alts in self.by_lhs.items():
            bits -= c[a] * sum(p * math.log2(p) for _, p in alts)
            tokens += c[a] * sum(p * sum(not x.startswith(_NT) for x in r) for r, p in alts)
        return bits, tokens + 1.0

    # ---- truth by length
    def _length_tables(self, N: int) -> GrammarTables:
        if self._lt is None or self._lt.N < N:
            self._lt = GrammarTables(self.rules, self.start, max(N, 2 * self._lt.N if self._lt else N))
        return self._lt

    def unambiguous(self) -> bool:
        """Proven unambiguous (left-factored, the grammar is LL(1)); False means not proven."""
        if self._unamb is None:
            from .lengths import ll1_after_left_factoring

            self._unamb = ll1_after_left_factoring(self.rules, self.start)
        return self._unamb

    def _exact_entropy_at(self, tables: GrammarTables, n: int) -> float | None:
        # One derivation per string, proven: the derivation entropy at that length is the string's.
        return tables.derivation_entropy_bits(n) if self.unambiguous() else None

    def strings_of_length(self, n: int, cap: int) -> list[str] | None:
        """Every string of length n in the language, or None when there are more than `cap`."""
        got = self._length_tables(n).strings(n, cap)
        return None if got is None else [self.render(t) for t in got]

    # ---- entropy
    def entropy(self, n: int = 20_000, seed: int = 12345) -> Entropy:
        """The floor. Exact (the derivation entropy) when the grammar is proven unambiguous; else a
        Monte-Carlo estimate of H(S) from exact string probabilities, stratified by the start symbol's
        rule (so a rule of probability 1e-4 still gets thousands of strings), with its standard error and
        the derivation entropy as an upper bound."""
        if self._entropy is None:
            bits, tokens = self.derivation_entropy()
            if self.unambiguous():
                self._entropy = Entropy(bits, tokens, exact=True)
            else:
                self._entropy = self._stratified_entropy(n, seed, bits, tokens)
        return self._entropy

    # Strings up to this long are scored exactly (the inside pass is cubic); longer ones by a bound:
    # P(s) <= P(|s| = n) from the length tables up to LENGTH_TABLE, beyond by P(|s| > LENGTH_TABLE).
    EXACT_SCORE = 300
    LENGTH_TABLE = 4000

    def _stratified_entropy(self, n: int, seed: int, deriv_bits: float, tokens: float) -> Entropy:
        from .base import MIN_PER_STRATUM, Progress, monte_carlo_n

        rng = random.Random(seed)
        n = monte_carlo_n(self, n)
        roots = self._sampler[self._start_id][1]
        cum = self._sampler[self._start_id][0]
        probs = np.diff(np.concatenate([[0.0], np.minimum(cum, 1.0)]))
        strata, bound, drawn = [], 0, 0
        tick = Progress("the entropy floor: strings scored", n)
        for k, (rhs, _) in enumerate(roots):
            m = max(MIN_PER_STRATUM, int(round(n * probs[k])))
            toks = [self._derive_from(rng, rhs) for _ in range(m)]
            strata.append((probs[k], self._bits(toks), np.array([len(t) + 1 for t in toks], float)))
            bound += sum(len(t) > self.EXACT_SCORE for t in toks)
            drawn += m
            tick(drawn)
        # The stratified ratio estimator of bits per token: bits and tokens of a string go together
        # (long strings carry more bits), so the ratio is far tighter than the bits alone.
        hb = sum(p * b.mean() for p, b, _ in strata)
        ht = sum(p * t.mean() for p, _, t in strata)
        r = hb / ht
        var = sum(p ** 2 * ((b - r * t).var(ddof=1) if len(b) > 1 else 0.0) / len(b) for p, b, t in strata)
        return Entropy(r * tokens, tokens, False, float(math.sqrt(var)) / ht,
                       upper_bits_per_token=deriv_bits / tokens, bound_share=bound / max(drawn, 1))

    def _derive_from(self, rng: random.Random, root_rhs) -> list[str]:
        """A derivation whose first expansion is the start symbol's rule with (reversed) `root_rhs`."""
        return self._derive(rng, list(root_rhs))[0]

    def _bits(self, toks: list[list[str]]) -> np.ndarray:
        """-log2 P(s) of sampled strings: exact up to EXACT_SCORE tokens, a lower bound beyond."""
        out = np.empty(len(toks))
        short = [i for i, t in enumerate(toks) if len(t) <= self.EXACT_SCORE]
        if short:
            out[short] = -self.log_probs([self.render(toks[i]) for i in short], drawn=True) * LOG2E
        long = [i for i, t in enumerate(toks) if len(t) > self.EXACT_SCORE]
        if long:
            t = self._length_tables(min(self.LENGTH_TABLE, max(len(toks[i]) for i in long)))
            tail = max(1.0 - sum(t.p_length(k) for k in range(t.N + 1)), 1e-300)
            for i in long:
                L = len(toks[i])
                p = t.p_length(L) if L <= t.N else tail
                out[i] = -math.log2(max(p, 1e-300))
        return out
