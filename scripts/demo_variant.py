"""Train and evaluate one variant of the demo's MemVP arm on the demo's data (README, Known limits).

Usage: python scripts/demo_variant.py NAME '{"lr": 5e-3, "memvp": {"output_scale": 1.0}}'
Needs the data of a finished ``memvp demo`` in runs/demo/data (``"data_dir"`` picks another one);
the JSON holds TrainConfig fields, ``memvp`` keys are merged into the demo's. Writes runs/variants/NAME
and prints one RESULT line with the held-out accuracy per question type.
"""

import dataclasses
import json
import sys

from memvp.recipes.demo import demo_train_config
from memvp.training import train

name, overrides = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
data_dir = overrides.pop("data_dir", "runs/demo/data")
base = demo_train_config(data_dir)
cfg = dataclasses.replace(
    base,
    output_dir=f"runs/variants/{name}",
    memvp={**base.memvp, **overrides.pop("memvp", {})},
    progress=False,
    **overrides,
)
result = train(cfg)
print(
    "RESULT",
    name,
    json.dumps(
        {
            "overall": result["eval"]["overall"],
            "per_type": result["eval"]["per_type"],
            "train_s": round(result["train_seconds"]),
            "final_loss": result["final_loss"],
        }
    ),
)
