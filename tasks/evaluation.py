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

from mlyard.core.errors import SpecError

MAX_CLASSES = 50


@dataclass
class MetricValue:
    value: float | None
    reason: str | None = None  # why it is not applicable
    average: str | None = None  # how it is averaged over classes: macro, one-vs-rest macro, binary (positive: X)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value} if self.reason is None else {"value": None, "not_applicable": self.reason}
        if self.average:
            out["average"] = self.average
        return out


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
    said = f"binary (positive class: {pos})" if binary else f"macro over {len(labels)} classes"
    m: dict[str, MetricValue] = {
        "accuracy": MetricValue(float(skm.accuracy_score(y_true, y_pred))),
        "f1": MetricValue(float(skm.f1_score(y_true, y_pred, labels=labels, average=average, pos_label=pos,
                                            zero_division=0)), average=said),
        "precision": MetricValue(float(skm.precision_score(y_true, y_pred, labels=labels, average=average,
                                                          pos_label=pos, zero_division=0)), average=said),
        "recall": MetricValue(float(skm.recall_score(y_true, y_pred, labels=labels, average=average, pos_label=pos,
                                                    zero_division=0)), average=said),
        # scikit-learn's scorer names, whatever the number of classes (a promotion policy's gates name them)
        "f1_macro": MetricValue(float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
                                average=f"macro over {len(labels)} classes"),
        "f1_weighted": MetricValue(float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted",
                                                      zero_division=0)), average="weighted by support"),
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
        m["roc_auc"] = MetricValue(float(skm.roc_auc_score(y, score)), average=said)
        m["pr_auc"] = MetricValue(float(skm.average_precision_score(y, score)), average=said)
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
            m["roc_auc"] = MetricValue(float(skm.roc_auc_score(y, proba, average="macro", multi_class="ovr")),
                                       average=f"one-vs-rest, {said}")
            m["pr_auc"] = MetricValue(float(skm.average_precision_score(y, proba, average="macro")),
                                      average=f"one-vs-rest, {said}")
        fpr, tpr, _ = skm.roc_curve(y.ravel(), proba.ravel())  # micro-averaged curve
        prec, rec, thr = skm.precision_recall_curve(y.ravel(), proba.ravel())
        # the curves pool every class (micro-average): their legends give their own micro AUCs
        curves = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "average": "micro", "auc": float(skm.auc(fpr, tpr))},
                  "pr": {"precision": prec.tolist(), "recall": rec.tolist(), "average": "micro",
                         "auc": float(skm.average_precision_score(y.ravel(), proba.ravel()))},
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
    idx = np.linspace(0, len(y_true) - 1, min(len(y_true), 2000)).round().astype(int)  # a sample to plot
    return Report("regression", m, {"actual": y_true[idx].tolist(), "predicted": y_pred[idx].tolist()})


# -- pictures ----------------------------------------------------------------------------------------

def thin(values: list[float], points: int = 1000) -> list[float]:
    """At most `points` evenly spaced values, first and last kept (curves in JSON stay small)."""
    if len(values) <= points:
        return list(values)
    idx = np.linspace(0, len(values) - 1, points).round().astype(int)
    return [values[i] for i in idx]


def thin_curves(curves: dict[str, Any], points: int = 1000) -> dict[str, Any]:
    return {name: thin(curve, points) if isinstance(curve, list) else
            {k: thin(v, points) if isinstance(v, list) else v for k, v in curve.items()}
            for name, curve in curves.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: Report, out_dir, title: str = "") -> list:
    """PNG pictures of a report in `out_dir`; returns their paths.

    Classification: confusion matrix, ROC curve, PR curve, precision and recall by threshold.
    Regression: predicted against actual, and the residuals."""
    from pathlib import Path

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    if report.task == "classification":
        cm = np.asarray(report.confusion_matrix)
        n = len(report.classes or [])
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5)))
        im = ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(n), report.classes, rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), report.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
        fig.colorbar(im, ax=ax)
        ax.set_title(_title(title, "confusion matrix"), fontsize=10)
        save(fig, "confusion_matrix.png")
        c = report.curves
        if c:
            micro = " (micro-average)" if c["roc"].get("average") == "micro" else ""
            fig, ax = plt.subplots(figsize=(4.5, 4))
            ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=_curve_label("ROC AUC", c["roc"], report.metrics["roc_auc"]))
            ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate (recall)")
            ax.set_title(_title(title, f"ROC curve{micro}"), fontsize=10)
            ax.legend(loc="lower right")
            save(fig, "roc_curve.png")
            fig, ax = plt.subplots(figsize=(4.5, 4))
            ax.plot(c["pr"]["recall"], c["pr"]["precision"], label=_curve_label("PR AUC", c["pr"], report.metrics["pr_auc"]))
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title(_title(title, f"precision-recall curve{micro}"), fontsize=10)
            ax.legend(loc="lower left")
            save(fig, "pr_curve.png")
            fig, ax = plt.subplots(figsize=(5, 4))
            t = c["by_threshold"]
            ax.plot(t["threshold"], t["precision"], label="precision")
            ax.plot(t["threshold"], t["recall"], label="recall")
            ax.set_xlabel("threshold")
            ax.set_ylabel("precision, recall")
            ax.set_title(_title(title, f"precision and recall by threshold{micro}"), fontsize=10)
            ax.legend()
            save(fig, "precision_recall_by_threshold.png")
    else:
        y, p = np.asarray(report.curves["actual"]), np.asarray(report.curves["predicted"])
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(y, p, s=4, alpha=0.5)
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=0.8)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
        ax.set_title(_title(title, "predicted vs actual"), fontsize=10)
        save(fig, "predicted_vs_actual.png")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.hist(p - y, bins=50)
        ax.set_xlabel("residual (predicted - actual)")
        ax.set_ylabel("rows")
        ax.set_title(_title(title, "residuals"), fontsize=10)
        save(fig, "residuals.png")
    return paths


def _title(name: str, chart: str) -> str:
    """The evaluation's name above what the chart shows: two short lines fit, one long one is clipped."""
    return f"{name}\n{chart}" if name else chart


def _label(name: str, m: MetricValue) -> str:
    return f"{name} {m.value:.3f}" if m.value is not None else f"{name} n/a"


def _curve_label(name: str, curve: dict[str, Any], m: MetricValue) -> str:
    """The legend of a curve: a micro-averaged curve shows its own micro AUC, never the macro metric."""
    if curve.get("average") == "micro" and curve.get("auc") is not None:
        return f"micro-average, {name} {curve['auc']:.3f}"
    return _label(name, m)


def comparison_table(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric, one column per evaluation (report dicts as `Report.as_dict` gives them)."""
    names: list[str] = []
    for r in reports.values():
        names += [m for m in r["metrics"] if m not in names]
    rows = []
    for metric in names:
        row: dict[str, Any] = {"metric": metric}
        for label, r in reports.items():
            v = r["metrics"].get(metric)
            row[label] = None if v is None else (v["value"] if v.get("value") is not None else "n/a")
        rows.append(row)
    return rows


def plot_comparison(reports: dict[str, dict[str, Any]], path) -> Any:
    """Overlaid ROC and PR curves (classification) or predicted-vs-actual (regression) in one PNG."""
    plt = _pyplot()
    tasks = {r["task"] for r in reports.values()}
    if tasks == {"classification"}:
        fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2))
        for label, r in reports.items():
            c = r.get("curves") or {}
            if not c:
                continue
            # a micro-averaged curve is labelled with its own micro AUC, not the macro metric
            auc = c["roc"].get("auc", r["metrics"].get("roc_auc", {}).get("value"))
            ap = c["pr"].get("auc", r["metrics"].get("pr_auc", {}).get("value"))
            roc.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{label} (AUC {auc:.3f})" if auc is not None else label)
            pr.plot(c["pr"]["recall"], c["pr"]["precision"], label=f"{label} (AP {ap:.3f})" if ap is not None else label)
        roc.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        micro = any((r.get("curves") or {}).get("roc", {}).get("average") == "micro" for r in reports.values())
        suffix = " (micro-average over classes)" if micro else ""
        roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC curves{suffix}")
        pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall curves{suffix}")
        roc.legend(loc="lower right", fontsize=8)
        pr.legend(loc="lower left", fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(5, 4.2))
        for label, r in reports.items():
            c = r.get("curves") or {}
            if c.get("actual"):
                ax.scatter(c["actual"], c["predicted"], s=4, alpha=0.5, label=label)
        ax.set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
