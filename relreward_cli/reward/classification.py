"""A scalar reward read as a classifier: how well its scores `(N,)` separate positives (e.g. samples of the expert's
classes) from the rest, and its mean per class."""

import numpy as np

from relreward_cli.errors import UserError
from relreward_cli.planning.scores import mean_and_sem


def _check(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, positive = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise UserError(f"Got {scores.size} scores but {positive.size} labels; give one label per score.")
    if positive.all() or not positive.any():
        raise UserError("Classification metrics need both positive and negative examples; got only one kind.")
    return scores, positive


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` `(N,)` (higher = more positive) for labels `positive` `(N,)` bool:
    1 for a perfect separator, 0 reversed, 0.5 for a constant score."""
    from sklearn.metrics import roc_auc_score  # scikit-learn takes a second to import: only where it is used

    scores, positive = _check(scores, positive)
    return float(roc_auc_score(positive, scores))


def heldout_accuracy(scores: np.ndarray, positive: np.ndarray, seed: int = 0, groups: np.ndarray | None = None
                     ) -> float:
    """Balanced accuracy on a held-out half of a one-feature logistic regression on the standardized score: the
    mean of the two classes' accuracies, with the classes weighted equally in the fit, so that a score that carries
    nothing reads 0.5 whatever the share of positives (plain accuracy would give a constant the majority's share:
    0.8 for digits whose expert holds 2 of 10 classes). On classes of equal size it is the plain accuracy.

    `scores` `(N,)`, `positive` `(N,)` bool; the halves are drawn with `seed`: stratified by label, or, given
    `groups` `(N,)`, by group (half the groups fit, the rest test: e.g. each prompt's two samples stay together).
    The standardization uses the fit half only. A perfect separator gives 1.0, a constant score 0.5.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split

    scores, positive = _check(scores, positive)
    if groups is None:
        fit_x, test_x, fit_y, test_y = train_test_split(scores, positive, test_size=0.5, random_state=seed,
                                                        stratify=positive)
    else:
        names = np.random.default_rng(seed).permutation(np.unique(groups))
        fit = np.isin(groups, names[: len(names) // 2])
        fit_x, test_x, fit_y, test_y = scores[fit], scores[~fit], positive[fit], positive[~fit]
    mean, std = fit_x.mean(), fit_x.std()
    std = std if std > 0 else 1.0
    model = LogisticRegression(C=1e4, class_weight="balanced").fit(((fit_x - mean) / std)[:, None], fit_y)
    return float(balanced_accuracy_score(test_y, model.predict(((test_x - mean) / std)[:, None])))


def class_means(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class (sorted) of `labels` `(N,)`: the classes `(K,)`, the mean score `(K,)` and its standard error
    `(K,)` (sample std / sqrt(count); 0 for a class with one member)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise UserError(f"Got {scores.size} scores but {labels.size} labels; give one label per score.")
    classes = np.unique(labels)
    means, sems = np.array([mean_and_sem(scores[labels == c]) for c in classes]).T
    return classes, means, sems
