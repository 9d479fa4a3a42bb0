"""The course report's brackets study: (embed, hidden) x layers x lr grid; best (300, 300), 1 layer,
lr 0.01, 20 epochs, max tokens 10,000."""
from runner import Study, main

CONFIGS = {}
for size in (150, 300, 450):
    for layers in (1, 3, 10):
        for lr in (0.5, 0.01, 0.001):
            CONFIGS[f"s{size}-l{layers}-lr{lr}"] = {"model.embed": size, "model.hidden": size, "model.layers": layers,
                                                   "train.lr": lr, "train.epochs": 20, "train.max_tokens": 10_000}
QUICK = {name: {**CONFIGS[name], "data.n_train": 30_000, "train.epochs": 4}
         for name in ("s300-l1-lr0.01", "s150-l1-lr0.5", "s150-l1-lr0.001", "s150-l1-lr0.01", "s150-l3-lr0.01")}
STUDY = Study(
    name="brackets", dataset="brackets", configs=CONFIGS, quick=QUICK,
    quick_note=("5 of the 27 configurations (the report's best, (300, 300) 1 layer lr 0.01, and (150, 150) at "
                "every lr and with 3 layers), 30,000 training strings instead of 150,000, 4 epochs instead of 20"),
    claims={"s300-l1-lr0.01": "report's best: (300, 300), 1 layer, lr 0.01",
            "s150-l1-lr0.5": "report: lr 0.5 did not learn"},
)

if __name__ == "__main__":
    main(STUDY)
