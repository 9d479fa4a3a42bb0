"""`pfsa:PATH`: a probabilistic finite-state automaton written as JSON, with its exact truth.

    {"start": "q0",
     "states": {"q0": {"final": 0.2, "arcs": [["a", "q1", 0.4], ["b", "q0", 0.4]]},
                "q1": {"final": 1.0, "arcs": []}}}

At each state the final probability plus its arcs' probabilities sum to 1. Several arcs may carry the
same symbol (nondeterministic): a string's probability sums over its paths (the forward algorithm).
The entropy floor is exact for a deterministic automaton (the entropy of each state's choice, weighted
by its expected visits), otherwise a Monte-Carlo estimate with its standard error.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import Entropy, Language, check_lengths, entropy_by_monte_carlo, symbol_problem

TOL = 1e-6


class PFSA(Language):
    name = "pfsa"

    def __init__(self, path: str):
        self.path = path
        doc = _load_json(path)
        where = f"pfsa:{path}"
        if not isinstance(doc, dict) or not isinstance(doc.get("states"), dict) or not doc["states"]:
            raise UserError(f"{where}: expected {{\"start\": NAME, \"states\": {{NAME: {{\"final\": p, \"arcs\": "
                            "[[symbol, target, p], ...]}}, ...}}}")
        states = list(doc["states"])
        self.states = states
        idx = {q: i for i, q in enumerate(states)}
        start = doc.get("start", states[0])
        if not isinstance(start, str):
            raise UserError(f"{where}: \"start\" must be a state name (a string), not {json.dumps(start)[:40]}")
        if start not in idx:
            raise UserError(f"{where}: start state {start!r} is not among the states {states[:5]}")
        self.start = idx[start]
        arcs: list[tuple[int, str, int, float]] = []
        final = np.zeros(len(states))
        for q, body in doc["states"].items():
            if not isinstance(body, dict):
                raise UserError(f"{where}: state {q!r} must be an object with \"final\" and \"arcs\"")
            f = body.get("final", 0.0)
            if not _prob(f):
                raise UserError(f"{where}: state {q!r} has final probability {f!r}; it must be a number in [0, 1]")
            final[idx[q]] = f
            total = float(f)
            body_arcs = body.get("arcs", [])
            if not isinstance(body_arcs, list):
                raise UserError(f"{where}: state {q!r} has \"arcs\": {json.dumps(body_arcs)[:40]}; write a list of "
                                "[symbol, target, probability] (or [] for none)")
            for a in body_arcs:
                if not (isinstance(a, list) and len(a) == 3 and isinstance(a[0], str) and a[0]
                        and isinstance(a[1], str) and _prob(a[2])):
                    raise UserError(f"{where}: state {q!r} has arc {a!r}; write [symbol, target, probability]")
                if a[1] not in idx:
                    raise UserError(f"{where}: state {q!r} has an arc to undefined state {a[1]!r}")
                bad = symbol_problem(a[0])
                if bad:
                    raise UserError(f"{where}: state {q!r}: symbol {a[0]!r} {bad}")
                arcs.append((idx[q], a[0], idx[a[1]], float(a[2])))
                total += float(a[2])
            if abs(total - 1.0) > TOL:
                raise UserError(f"{where}: state {q!r}: final + arc probabilities sum to {total:.6g}, not 1")
        self.final = final
        self.alphabet = tuple(sorted({a[1] for a in arcs}))
        self.char = all(len(x) == 1 for x in self.alphabet)
        sym = {x: i for i, x in enumerate(self.alphabet)}
        S = len(states)
        self.A = np.zeros((len(self.alphabet), S, S))  # A[x, q, r] = P(emit x and go to r | at q)
        self.arcs = [[] for _ in range(S)]  # per state: (cumulative probability bounds) for sampling
        for q, x, r, p in arcs:
            self.A[sym[x], q, r] += p
            self.arcs[q].append((x, r, p))
        self.sym = sym
        self.M = self.A.sum(axis=0)  # (S, S) state-to-state probability of one step
        self._check(where)
        if not self.alphabet:
            raise UserError(f"{where}: the automaton has no arcs, so its only string is the empty one; add arcs")
        self.deterministic = all(len({x for x, _, _ in self.arcs[q]}) == len(self.arcs[q]) for q in range(S))
        m, sd = self.length_moments()
        check_lengths(where, m, sd)

    @property
    def spec(self) -> str:
        return f"pfsa:{self.path}"

    def _check(self, where: str) -> None:
        S = len(self.states)
        reach = {self.start}
        frontier = [self.start]
        while frontier:
            q = frontier.pop()
            for _, r, p in self.arcs[q]:
                if p > 0 and r not in reach:
                    reach.add(r)
                    frontier.append(r)
        unreachable = [self.states[q] for q in range(S) if q not in reach]
        if unreachable:
            raise UserError(f"{where}: state(s) {', '.join(map(repr, unreachable[:5]))} cannot be reached from the "
                            "start; remove them")
        if not any(self.final[q] > 0 for q in reach):
            raise UserError(f"{where}: the language is empty (no reachable state has a final probability > 0)")
        rho = max(abs(np.linalg.eigvals(self.M))) if S else 0.0
        if rho >= 1 - 1e-9:
            raise UserError(f"{where}: the automaton does not stop with probability 1 (spectral radius of the "
                            f"state-transition matrix {rho:.6f} >= 1); some states never reach a final probability")

    # ---- sampling ----
    def sample(self, rng: random.Random) -> str:
        q, out = self.start, []
        while True:
            u = rng.random()
            if u < self.final[q] or not self.arcs[q]:
                return self.render(out)
            u -= self.final[q]
            for x, r, p in self.arcs[q]:
                if u < p:
                    break
                u -= p
            out.append(x)
            q = r

    # ---- exact probabilities (the forward algorithm, rescaled every step) ----
    def log_prob(self, s: str) -> float:
        alpha = np.zeros(len(self.states))
        alpha[self.start] = 1.0
        logscale = 0.0
        for t in self.tokens(s):
            i = self.sym.get(t)
            if i is None:
                return -math.inf
            alpha = alpha @ self.A[i]
            z = alpha.sum()
            if z <= 0:
                return -math.inf
            alpha /= z
            logscale += math.log(z)
        p = float(alpha @ self.final)
        return logscale + math.log(p) if p > 0 else -math.inf

    def prefix_table(self, s: str) -> list[tuple[frozenset[str], bool]]:
        alpha = np.zeros(len(self.states))
        alpha[self.start] = 1.0
        out = []
        toks = self.tokens(s)
        for i in range(len(toks) + 1):
            live = alpha > 0
            out.append((frozenset(x for q in np.flatnonzero(live) for x, _, p in self.arcs[q] if p > 0),
                        bool((alpha * self.final).sum() > 0)))
            if i < len(toks):
                k = self.sym.get(toks[i])
                alpha = alpha @ self.A[k] if k is not None else np.zeros_like(alpha)
                z = alpha.sum()
                alpha = alpha / z if z > 0 else alpha
        return out

    def next_symbols(self, prefix: str) -> tuple[frozenset[str], bool]:
        return self.prefix_table(prefix)[-1]

    # ---- entropy and lengths ----
    def length_moments(self) -> tuple[float, float]:
        """(mean, standard deviation) of the string length: absorption-time moments of the chain."""
        S = len(self.states)
        A = np.eye(S) - self.M
        go = 1.0 - self.final  # probability of taking some arc
        t = np.linalg.solve(A, go)  # E[length | at q]
        s2 = np.linalg.solve(A, go + 2.0 * self.M @ t)  # E[length^2 | at q]
        mean = float(t[self.start])
        return mean, float(np.sqrt(max(s2[self.start] - mean * mean, 0.0)))

    def expected_visits(self) -> np.ndarray:
        e = np.zeros(len(self.states))
        e[self.start] = 1.0
        return np.linalg.solve((np.eye(len(self.states)) - self.M).T, e)

    def entropy(self) -> Entropy:
        v = self.expected_visits()
        tokens = float(v @ (1.0 - self.final)) + 1.0  # arcs taken, plus the end
        if not self.deterministic:
            e = entropy_by_monte_carlo(self)
            return Entropy(e.bits_per_string, e.tokens_per_string, False, e.stderr_bits_per_token)
        h = np.zeros(len(self.states))
        for q in range(len(self.states)):
            ps = [self.final[q]] + [p for _, _, p in self.arcs[q]]
            h[q] = -sum(p * math.log2(p) for p in ps if p > 0)
        # Deterministic: a string has one path, so the string entropy is the path entropy.
        return Entropy(float(v @ h), tokens, exact=True)

    def _backward(self, N: int) -> tuple[np.ndarray, np.ndarray]:
        """beta[n, q] = P(exactly n more symbols, then stop | at q) and w[n, q] = the sum over those
        paths of P * -ln P (the path entropy mass)."""
        S = len(self.states)
        beta, w = np.zeros((N + 1, S)), np.zeros((N + 1, S))
        beta[0] = self.final
        with np.errstate(divide="ignore", invalid="ignore"):
            w[0] = np.where(self.final > 0, -self.final * np.log(np.where(self.final > 0, self.final, 1.0)), 0.0)
            logA = np.where(self.A > 0, np.log(np.where(self.A > 0, self.A, 1.0)), 0.0)
        for n in range(1, N + 1):
            beta[n] = np.einsum("xqr,r->q", self.A, beta[n - 1])
            w[n] = np.einsum("xqr,r->q", self.A, w[n - 1]) + np.einsum("xqr,r->q", -self.A * logA, beta[n - 1])
        return beta, w

    def by_length(self, max_len: int) -> list[dict]:
        """P(|s| = n) by the backward recursion; H(S | |S| = n) exact for a deterministic automaton (one
        path per string: the path entropy given the length), else exact by enumeration while the
        strings of a length are few, else Monte-Carlo from strings drawn at that length."""
        from .base import entropy_at_length

        beta, w = self._backward(max_len)
        rng = random.Random(4321)
        out = []
        for n in range(max_len + 1):
            z = float(beta[n, self.start])
            if z <= 0:
                continue
            if self.deterministic:
                h, exact, se = max(0.0, (float(w[n, self.start]) / z + math.log(z)) / math.log(2)), True, 0.0
            else:
                h, exact, se = entropy_at_length(self, n, z, self.sample_length, rng)
            out.append({"length": n, "p_length": z, "entropy_bits": h, "exact": exact, "stderr": se})
        return out

    def strings_of_length(self, n: int, cap: int) -> list[str] | None:
        """Every string of length n the automaton accepts, or None when there are more than `cap`: a
        depth-first walk over symbols carrying the set of states still alive, pruned where no state
        can finish in the symbols left."""
        beta = self._beta_table(n)
        out: list[str] = []
        syms = self.alphabet

        def walk(alive: np.ndarray, left: int, prefix: list[str]) -> None:
            if left == 0:
                if (alive * self.final).sum() > 0:
                    out.append(self.render(prefix))
                    if len(out) > cap:
                        raise OverflowError
                return
            for x in syms:
                nxt = alive @ self.A[self.sym[x]]
                if (nxt * beta[left - 1]).sum() > 0:
                    walk(nxt, left - 1, prefix + [x])

        start = np.zeros(len(self.states))
        start[self.start] = 1.0
        try:
            walk(start, n, [])
        except OverflowError:
            return None
        return out

    def length_probs(self, max_len: int) -> np.ndarray:
        return self._beta_table(max_len)[: max_len + 1, self.start].copy()

    def sample_length(self, rng: random.Random, n: int) -> str:
        """A string from P(s | |s| = n): each arc chosen in proportion to p * beta[remaining - 1, target]."""
        beta = self._beta_table(n)
        if beta[n, self.start] <= 0:
            raise UserError(f"{self.spec} has no strings of length {n}")
        q, out = self.start, []
        for k in range(n, 0, -1):
            arcs = self.arcs[q]
            weights = [p * beta[k - 1, r] for _, r, p in arcs]
            u = rng.random() * sum(weights)
            for (x, r, _), wgt in zip(arcs, weights):
                if u < wgt:
                    break
                u -= wgt
            out.append(x)
            q = r
        return self.render(out)

    def _beta_table(self, n: int) -> np.ndarray:
        cur = getattr(self, "_beta", None)
        if cur is None or len(cur) <= n:
            self._beta = self._backward(max(n, 2 * (len(cur) if cur is not None else 0)))[0]
        return self._beta

    def length_pmf(self, max_len: int) -> tuple[np.ndarray, bool]:
        pmf = np.zeros(max_len + 1)
        alpha = np.zeros(len(self.states))
        alpha[self.start] = 1.0
        for l in range(max_len):
            pmf[l] = alpha @ self.final
            alpha = alpha @ self.M
        pmf[max_len] = max(0.0, 1.0 - pmf[:max_len].sum())
        return pmf, True


def _prob(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0 + TOL


def _load_json(path: str):
    p = Path(path).expanduser()
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"pfsa:{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"pfsa:{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"pfsa:{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
