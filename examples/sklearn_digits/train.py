"""Example algorithm: a linear classifier on scikit-learn's digits data, trained epoch by epoch.

Follows the EasyMaker training contract: hyperparameters arrive as --key value (and EM_HP_*), the
model is saved in EM_MODEL_DIR, metrics are printed as `name=value` lines.
"""

import argparse
import os
import time

import mlflow.sklearn
import numpy as np
import sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--learning_rate", type=float, default=0.01)
parser.add_argument("--alpha", type=float, default=1e-4)
parser.add_argument("--epoch_seconds", type=float, default=0.0, help="sleep per epoch (to watch progress)")
args = parser.parse_args()

X, y = load_digits(return_X_y=True)
X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
scaler = StandardScaler().fit(X_train)
X_train, X_val = scaler.transform(X_train), scaler.transform(X_val)
classes = np.unique(y)

clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=args.learning_rate, alpha=args.alpha, random_state=0)
for epoch in range(1, args.epochs + 1):
    clf.partial_fit(X_train, y_train, classes=classes)
    proba = clf.predict_proba(X_val)
    print(f"epoch={epoch} loss={log_loss(y_val, proba, labels=classes):.4f} "
          f"accuracy={accuracy_score(y_val, clf.predict(X_val)):.4f}", flush=True)
    time.sleep(args.epoch_seconds)

model = make_pipeline(scaler, clf)
# The signature tells the registry and model servers what goes in and out; naming the requirements
# skips MLflow's slow inference of them.
X_raw, _ = load_digits(return_X_y=True)
signature = infer_signature(X_raw[:5].astype("float64"), model.predict(X_raw[:5]))
mlflow.sklearn.save_model(model, os.environ["EM_MODEL_DIR"], signature=signature,
                          pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
print("saved model to", os.environ["EM_MODEL_DIR"])
