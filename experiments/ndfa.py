"""The course report's NDFA study: (32, 16) and (50, 50), 1 layer, lr 0.001, 10 epochs, max tokens 60,000."""
from runner import Study, main

BASE = {"model.layers": 1, "train.lr": 0.001, "train.epochs": 10, "train.max_tokens": 60_000}
CONFIGS = {
    "e32-h16": {"model.embed": 32, "model.hidden": 16, **BASE},
    # The course trained with a constant learning rate; seqgen_jax's default is warm-up + cosine decay.
    "e32-h16-constant": {"model.embed": 32, "model.hidden": 16, **BASE, "train.schedule": "constant"},
    "e50-h50": {"model.embed": 50, "model.hidden": 50, **BASE},
    "preset": {},  # seqgen_jax's default for ndfa, for comparison
}
STUDY = Study(
    name="ndfa", dataset="ndfa", configs=CONFIGS, quick=CONFIGS,
    quick_note="nothing shrunk: the full NDFA study fits a few minutes on 2 CPU cores",
    claims={"e32-h16": "report: given settings; 'most samples are right'",
            "e32-h16-constant": "the same, with the course's constant lr",
            "e50-h50": "report: (50, 50) also tried"},
)

if __name__ == "__main__":
    main(STUDY)
