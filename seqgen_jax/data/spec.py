"""What a dataset spec names, answered without building anything (and without importing the rest of
the package): its family and its kind. The one place a spec's name is split."""
from __future__ import annotations

# Specs whose part after the colon is a path, not key=value parameters.
PATH_KINDS = ("text", "pcfg", "pfsa")


def spec_family(spec: str) -> str:
    """The family a spec names, lowercased: `ndfa`, `brackets`, `pcfg`, `text`, ... (no parsing of its
    parameters, so it never fails)."""
    return spec.strip().partition(":")[0].lower()


def dataset_kind(spec: str) -> str:
    """What kind of dataset a spec is, asked in one place: "text" (a text corpus: one token stream),
    "imdb" (reviews, a corpus of documents) or "language" (a process with a known truth)."""
    fam = spec_family(spec)
    return fam if fam in ("text", "imdb") else "language"


def default_run_name(spec: str) -> str:
    """runs/<this> when no --run-dir is given: the family, or a user file's stem."""
    from pathlib import Path

    fam = spec_family(spec)
    if fam in PATH_KINDS and ":" in spec:
        return Path(spec.split(":", 1)[1]).stem or fam
    return fam
