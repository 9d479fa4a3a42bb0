"""The course report's brackets study: (embed, hidden) x layers x lr grid; best (300, 300), 1 layer,
lr 0.01, 20 epochs, max tokens 10,000."""
from runner import Study, main

CONFIGS = {}
for size in (150, 300, 450):
    for layers in (1, 3, 10):
        for lr in (0.5, 0.01, 0.001):
            CONFIGS[f"s{size}-l{layers}-lr{lr}"] = {"model.embed": size, "model.hidden": size, "model.layers": layers,
                                                   "train.lr": lr, "train.epochs": 20, "train.max_tokens": 10_000}
# The course trained with a constant learning rate; seqgen_jax's default is warm-up + cosine decay.
CONFIGS["s300-l1-lr0.01-constant"] = {**CONFIGS["s300-l1-lr0.01"], "train.schedule": "constant"}
QUICK = {"s300-l1-lr0.01": {**CONFIGS["s300-l1-lr0.01"], "data.n_train": 60_000, "train.epochs": 5}}
QUICK.update({name: {**CONFIGS[name], "data.n_train": 30_000, "train.epochs": 4}
              for name in ("s150-l1-lr0.5", "s150-l1-lr0.001", "s150-l3-lr0.01")})
STUDY = Study(
    name="brackets", dataset="brackets", configs=CONFIGS, quick=QUICK,
    quick_note=("4 of the 28 configurations: the report's best, (300, 300) 1 layer lr 0.01, on 60,000 training "
                "strings for 5 epochs, and (150, 150) at lr 0.5 and 0.001 and with 3 layers on 30,000 strings "
                "for 4 epochs (instead of 150,000 strings and 20 epochs)"),
    claims={"s300-l1-lr0.01": "report's best: (300, 300), 1 layer, lr 0.01",
            "s300-l1-lr0.01-constant": "the same, with the course's constant lr",
            "s150-l1-lr0.5": "report: lr 0.5 did not learn"},
)

if __name__ == "__main__":
    main(STUDY)
