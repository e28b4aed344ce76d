"""The field's measures: WA = overall accuracy, UA = mean per-class recall; and a speech
recogniser's word error rate."""

import numpy as np

from model.text import tokenize


def confusion(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def unweighted_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int
                        ) -> np.ndarray:
    """UA of each row of (S, N) label/prediction arrays: the mean recall over the classes
    present in that row (a test set, or a bootstrap sample of one, may miss a rare class)."""
    labels, predicted = np.atleast_2d(labels), np.atleast_2d(predicted)
    recalls = []
    for c in range(n_classes):
        support = (labels == c).sum(1)
        hits = ((labels == c) & (predicted == c)).sum(1)
        recalls.append(np.where(support > 0, hits / np.maximum(support, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def bootstrap_intervals(labels, predictions, groups, n_classes: int, samples: int = 1000,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % intervals of UA and WA as evaluation reports them (the mean over the test groups,
    the folds' sessions), resampling utterances within each group: how far the scores of
    this test set move by the luck of which utterances it holds."""
    labels, predictions, groups = map(np.asarray, (labels, predictions, groups))
    rng = np.random.default_rng(seed)
    ua, wa = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        idx = members[rng.integers(0, len(members), size=(samples, len(members)))]
        ua.append(unweighted_accuracy(labels[idx], predictions[idx], n_classes))
        wa.append((labels[idx] == predictions[idx]).mean(1))
    return {name: tuple(float(v) for v in np.percentile(np.mean(values, axis=0), [2.5, 97.5]))
            for name, values in (("ua", ua), ("wa", wa))}


def scores(labels, predictions, classes: list[str]) -> dict:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    matrix = confusion(labels, predictions, len(classes))
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    tp = np.diag(matrix).astype(float)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=precision + recall > 0)
    return {
        "wa": float(tp.sum() / max(1, matrix.sum())),
        "ua": float(unweighted_accuracy(labels, predictions, len(classes))[0])
        if support.any() else 0.0,
        "n": int(matrix.sum()),
        "per_class": {c: {"recall": float(recall[i]), "precision": float(precision[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion": matrix.tolist(),
        "confusion_normalized": np.divide(matrix, support[:, None],
                                          out=np.zeros(matrix.shape),
                                          where=support[:, None] > 0).round(4).tolist(),
    }


def attention_in_own_word(weights: np.ndarray, spans: dict[int, tuple[float, float]],
                          step_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """How much each word attends to the speech of that word.

    weights: (words, steps) attention of one utterance; spans: word index -> (start, end)
    in seconds, from a forced alignment. Returns, per word in `spans`, the attention mass on
    the steps its span overlaps, and the share of the steps those are: what attention spread
    evenly would put there. Mass well above the share means words align with their frames.
    """
    n_steps = weights.shape[1]
    mass, share = [], []
    for i, (start, end) in sorted(spans.items()):
        # The epsilon keeps 0.3 / 0.1 = 2.9999... on step 3, where it belongs.
        first = min(int(start / step_seconds + 1e-9), n_steps - 1)
        last = max(first, min(int(np.ceil(end / step_seconds - 1e-9)) - 1, n_steps - 1))
        mass.append(float(weights[i, first:last + 1].sum()))
        share.append((last - first + 1) / n_steps)
    return np.array(mass), np.array(share)


def alignment_lifts(mass: float, prior_mass: float | None, uniform_mass: float) -> dict:
    """The attention's mass on a word's own speech against an even spread (`lift`), the
    same for the prior's own weights (`prior_lift`), and what training adds to the prior:
    `lift_over_prior`, the trained lift as a multiple of the prior's (1: the prior's work
    alone; below 1: training moved attention off the words' own speech). prior_mass None:
    not measured (results from before prior_lift)."""
    lifts = {"mass_in_own_word": mass, "uniform_mass": uniform_mass,
             "lift": mass / uniform_mass}
    if prior_mass is not None:
        lifts.update(prior_mass_in_own_word=prior_mass, prior_lift=prior_mass / uniform_mass,
                     lift_over_prior=mass / prior_mass)
    return lifts


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions that turn `reference` into `hypothesis` (the
    edit distance in words)."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, start=1):
        current = [i]
        for j, heard in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (word != heard)))
        previous = current
    return previous[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict:
    """WER over utterances: their word errors summed over their reference words summed.
    Both texts are first made the model's word tokens (model.text.tokenize: lower case,
    IEMOCAP's [LAUGHTER]-style markers and punctuation left out), so only a word the model
    would read differently counts. `wer` is None when the references hold no word."""
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        truth = tokenize(reference)
        errors += word_errors(truth, tokenize(hypothesis))
        words += len(truth)
    return {"wer": errors / words if words else None, "word_errors": errors, "words": words}
