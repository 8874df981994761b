"""Writes digits-test.jsonl and digits-test.csv: the validation split examples/sklearn_digits/train.py
holds out (same seed), with an id, the 64 pixel values and the label. Run from the project root:
`.venv/bin/python examples/data/make_digits.py`."""

import csv
import json
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).parent
X, y = load_digits(return_X_y=True)
_, X_val, _, y_val = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
with open(HERE / "digits-test.jsonl", "w") as fh:
    for i, (row, label) in enumerate(zip(X_val, y_val)):
        fh.write(json.dumps({"id": f"digit-{i:04d}", "pixels": [int(v) for v in row], "label": int(label)}) + "\n")
with open(HERE / "digits-test.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["id", *[f"p{j}" for j in range(64)], "label"])
    for i, (row, label) in enumerate(zip(X_val, y_val)):
        w.writerow([f"digit-{i:04d}", *[int(v) for v in row], int(label)])
