"""Evaluation metrics: plain functions over labels and predictions (no Prefect, no I/O).

Classification (binary and multiclass, at most 50 classes): PR AUC, ROC AUC, log loss, F1,
precision, recall, confusion matrix, PR and ROC curves, precision and recall by threshold.
Regression: MAE, MAPE, R², RMSE, RMSLE. A metric a model cannot support (no probabilities, negative
values for RMSLE, a single class for AUC) is reported as not applicable with the reason, never
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from mlyard.errors import SpecError

MAX_CLASSES = 50


@dataclass
class MetricValue:
    value: float | None
    reason: str | None = None  # why it is not applicable

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value} if self.reason is None else {"value": None, "not_applicable": self.reason}


@dataclass
class Report:
    task: str  # classification | regression
    metrics: dict[str, MetricValue]
    curves: dict[str, Any] = field(default_factory=dict)  # roc, pr, thresholds: lists for plotting
    confusion_matrix: list[list[int]] | None = None
    classes: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
                "curves": self.curves, "confusion_matrix": self.confusion_matrix, "classes": self.classes}

    def values(self) -> dict[str, float]:
        """The applicable metrics as plain numbers (for MLflow)."""
        return {k: v.value for k, v in self.metrics.items() if v.value is not None}


def classification(y_true: Sequence, y_pred: Sequence, proba: np.ndarray | None = None,
                   classes: Sequence[str] | None = None) -> Report:
    """Metrics of a classifier. `proba` is (n, n_classes) in the order of `classes` (or sorted labels)."""
    y_true = np.asarray([str(v) for v in y_true])
    y_pred = np.asarray([str(v) for v in y_pred])
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise SpecError("predictions", len(y_pred), f"one prediction per labelled row ({len(y_true)} rows)")
    labels = [str(c) for c in classes] if classes else sorted(set(y_true) | set(y_pred))
    if len(labels) > MAX_CLASSES:
        raise SpecError("class_names", len(labels), f"at most {MAX_CLASSES} classes")
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise SpecError("class_names", unknown[:5], f"every ground-truth value among the classes {labels[:10]}")
    binary = len(labels) == 2
    average = "binary" if binary else "macro"
    pos = labels[1] if binary else None
    m: dict[str, MetricValue] = {
        "accuracy": MetricValue(float(skm.accuracy_score(y_true, y_pred))),
        "f1": MetricValue(float(skm.f1_score(y_true, y_pred, labels=labels, average=average, pos_label=pos,
                                            zero_division=0))),
        "precision": MetricValue(float(skm.precision_score(y_true, y_pred, labels=labels, average=average,
                                                          pos_label=pos, zero_division=0))),
        "recall": MetricValue(float(skm.recall_score(y_true, y_pred, labels=labels, average=average, pos_label=pos,
                                                    zero_division=0))),
    }
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    curves: dict[str, Any] = {}
    if proba is None:
        for name in ("roc_auc", "pr_auc", "log_loss"):
            m[name] = MetricValue(None, "the model gives no class probabilities (no predict_proba)")
        return Report("classification", m, curves, cm, labels)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(labels)):
        raise SpecError("probabilities", proba.shape, f"shape ({len(y_true)}, {len(labels)}): one column per class")
    present = sorted(set(y_true))
    m["log_loss"] = MetricValue(float(skm.log_loss(y_true, proba, labels=labels)))
    if len(present) < 2:
        m["roc_auc"] = m["pr_auc"] = MetricValue(None, "the labelled data holds a single class")
        return Report("classification", m, curves, cm, labels)
    if binary:
        score = proba[:, 1]
        y = (y_true == pos).astype(int)
        m["roc_auc"] = MetricValue(float(skm.roc_auc_score(y, score)))
        m["pr_auc"] = MetricValue(float(skm.average_precision_score(y, score)))
        fpr, tpr, _ = skm.roc_curve(y, score)
        prec, rec, thr = skm.precision_recall_curve(y, score)
        curves = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
                  "pr": {"precision": prec.tolist(), "recall": rec.tolist()},
                  "by_threshold": {"threshold": thr.tolist(), "precision": prec[:-1].tolist(), "recall": rec[:-1].tolist()}}
    else:
        y = label_binarize(y_true, classes=labels)
        if len(present) < len(labels):
            m["roc_auc"] = m["pr_auc"] = MetricValue(None, f"classes {sorted(set(labels) - set(present))[:5]} "
                                                           "never occur in the labelled data (one-vs-rest AUC undefined)")
        else:
            m["roc_auc"] = MetricValue(float(skm.roc_auc_score(y, proba, average="macro", multi_class="ovr")))
            m["pr_auc"] = MetricValue(float(skm.average_precision_score(y, proba, average="macro")))
        fpr, tpr, _ = skm.roc_curve(y.ravel(), proba.ravel())  # micro-averaged curve
        prec, rec, thr = skm.precision_recall_curve(y.ravel(), proba.ravel())
        curves = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "average": "micro"},
                  "pr": {"precision": prec.tolist(), "recall": rec.tolist(), "average": "micro"},
                  "by_threshold": {"threshold": thr.tolist(), "precision": prec[:-1].tolist(), "recall": rec[:-1].tolist()}}
    return Report("classification", m, curves, cm, labels)


def regression(y_true: Sequence[float], y_pred: Sequence[float]) -> Report:
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise SpecError("predictions", len(y_pred), f"one prediction per labelled row ({len(y_true)} rows)")
    m = {"mae": MetricValue(float(skm.mean_absolute_error(y_true, y_pred))),
         "rmse": MetricValue(float(np.sqrt(skm.mean_squared_error(y_true, y_pred))))}
    m["r2"] = (MetricValue(float(skm.r2_score(y_true, y_pred))) if len(y_true) > 1 and np.ptp(y_true) > 0
               else MetricValue(None, "the ground truth is constant (R² undefined)"))
    m["mape"] = (MetricValue(float(skm.mean_absolute_percentage_error(y_true, y_pred))) if not np.any(y_true == 0)
                 else MetricValue(None, "the ground truth contains 0 (percentage error undefined)"))
    if np.any(y_true < 0) or np.any(y_pred < 0):
        which = "ground truth" if np.any(y_true < 0) else "predictions"
        m["rmsle"] = MetricValue(None, f"the {which} contain negative values (log undefined)")
    else:
        m["rmsle"] = MetricValue(float(np.sqrt(skm.mean_squared_log_error(y_true, y_pred))))
    return Report("regression", m)
