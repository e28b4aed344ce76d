"""Evaluate: each fold's model on its held-out session -> metrics, tables and pictures.

WA is overall accuracy, UA the mean per-class recall. Under leave-one-session-out both are
reported as mean ± std over the folds (the field's convention) and also pooled over every
test utterance; per-class precision/recall/F1, confusion matrices (counts and
row-normalised) and per-session results come with them.
"""

import difflib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import iemocap, outputs
from components.config import Config
from components.outputs import Evaluation, FeatureStore, TrainedModel
from model.data import Example, collate
from model.metrics import attention_in_own_word, scores
from model.serving import load_fold, predict_log_probs
from model.spec import UNK_ID, FeatureSpec


def run(model_dir: Path, store_dir: Path, manifest_path: Path, out_dir: Path,
        config: Config) -> dict:
    """Every (fold, seed) model of model_dir on its held-out session."""
    store = FeatureStore(Path(store_dir))
    rows = outputs.labelled_rows(manifest_path, config.ingest.classes)
    trained = TrainedModel(Path(model_dir))
    members = [evaluate_fold(trained, fold_dir, store, rows) for fold_dir in trained.fold_dirs()]
    table = pd.DataFrame([p for m in members for p in m["predictions"]])
    cases = next((m["attention"][:3] for m in members if m["attention"]), None)
    return write(Evaluation(Path(out_dir)), [m["scores"] for m in members], table,
                 {m["scores"]["member"]: m["history"] for m in members}, config,
                 lambda path: _plot_attention(cases, path) if cases else None)


def collect(evaluation_dirs: list[Path], model_dir: Path, out_dir: Path,
            config: Config) -> dict:
    """The fanned-out tasks' evaluations pooled into one, as `run` on every model would
    write it: mean ± std over the (fold, seed) models, per fold, per seed and per class,
    and the confusion matrix pooled over all of them."""
    import shutil

    parts = [Evaluation(Path(d)) for d in evaluation_dirs]
    member_scores = [s for part in parts for s in part.metrics()["folds"]]
    table = pd.concat([part.predictions() for part in parts], ignore_index=True)
    trained = TrainedModel(Path(model_dir))
    histories = {d.name: trained.history(d) for d in trained.fold_dirs()}
    drawn = next((p.folder / p.ATTENTION_PNG for p in parts
                  if (p.folder / p.ATTENTION_PNG).is_file()), None)
    return write(Evaluation(Path(out_dir)), member_scores, table, histories, config,
                 lambda path: shutil.copyfile(drawn, path) if drawn else None)


def write(out: Evaluation, member_scores: list[dict], table: pd.DataFrame,
          histories: dict[str, list], config: Config, draw_attention) -> dict:
    """metrics.json, predictions.csv, the plots and report.md of an evaluation."""
    out.folder.mkdir(parents=True, exist_ok=True)
    metrics = summarize(member_scores, table, list(config.ingest.classes), config)
    table.to_csv(out.folder / out.PREDICTIONS, index=False)
    (out.folder / out.METRICS).write_text(json.dumps(metrics, indent=1))
    _plot_confusion(metrics, out.folder / out.CONFUSION_PNG)
    _plot_curves(histories, out.folder / out.CURVES_PNG)
    draw_attention(out.folder / out.ATTENTION_PNG)
    (out.folder / out.REPORT_MD).write_text("\n".join(report_lines(metrics)) + "\n")
    return metrics


def evaluate_fold(trained: TrainedModel, fold_dir: Path, store: FeatureStore,
                  rows: pd.DataFrame) -> dict:
    """One fold's model on its held-out session: scores, predictions, attention."""
    device = torch.device("cpu")
    loaded = load_fold(fold_dir / trained.MODEL, device)
    model, bundle, classes = loaded.model, loaded.bundle, loaded.inputs.classes
    fold = trained.fold(fold_dir)
    examples = store.examples(loaded.inputs, fold["test_ids"], rows)
    log_p = predict_log_probs(model, examples, device)
    predicted = log_p.argmax(1)
    labels = np.array([e.label for e in examples])
    fold_scores = scores(labels, predicted, classes)
    seed = fold.get("seed", 0)
    result = {"fold": fold["name"], "seed": seed, "member": fold_dir.name,
              "test_session": fold["test_session"],
              "wa": fold_scores["wa"], "ua": fold_scores["ua"], "n": fold_scores["n"],
              "best_epoch": bundle["best_epoch"],
              # UA averages the classes present; a test session may lack one.
              "missing_classes": [c for c, v in fold_scores["per_class"].items()
                                  if not v["support"]]}
    predictions = [{"utt_id": e.utt_id, "fold": fold["name"], "seed": seed,
                    "session": fold["test_session"],
                    "speaker": rows.at[e.utt_id, "speaker"], "label": classes[e.label],
                    "predicted": classes[p],
                    **{f"p_{c}": float(np.exp(v)) for c, v in zip(classes, lp)}}
                   for e, p, lp in zip(examples, predicted, log_p)]
    if bundle["spec"]["kind"] in ("align", "late_fusion"):
        result["ablation"] = _ablation(model, examples, labels, classes, device)
    attention = (_attention_cases(model, examples, rows, bundle)
                 if bundle["spec"]["kind"] == "align" else [])
    if attention:
        result["attention_alignment"] = _alignment_summary(attention)
    return {"scores": result, "predictions": predictions, "classes": classes,
            "history": trained.history(fold_dir), "attention": attention}


def summarize(member_scores: list[dict], table: pd.DataFrame, classes: list[str],
              config: Config) -> dict:
    """metrics.json: mean ± std over the (fold, seed) models (`ua`, `wa` are those means),
    per fold, per seed, pooled over every test prediction, per class and per session."""
    label_ids = table["label"].map(classes.index).to_numpy()
    pooled = scores(label_ids, table["predicted"].map(classes.index).to_numpy(), classes)
    per_session = {}
    for session, part in table.groupby("session"):
        s = scores(part["label"].map(classes.index), part["predicted"].map(classes.index),
                   classes)
        per_session[str(session)] = {"wa": s["wa"], "ua": s["ua"], "n": s["n"]}
    results = [{"fold": m["fold"], "seed": m.get("seed", 0), "ua": m["ua"], "wa": m["wa"],
                "n_test": m["n"]} for m in member_scores]
    overall = _spread(results)
    metrics = {
        "protocol": config.protocol, "model_kind": config.model.kind, "classes": classes,
        "wa": overall["wa_mean"], "ua": overall["ua_mean"],
        "wa_std": overall["wa_std"], "ua_std": overall["ua_std"], **overall,
        "results": results,
        "per_fold": {f: _spread([r for r in results if r["fold"] == f])
                     for f in dict.fromkeys(r["fold"] for r in results)},
        "per_seed": {str(s): _spread([r for r in results if r["seed"] == s])
                     for s in dict.fromkeys(r["seed"] for r in results)},
        "missing_classes": {m["member"]: m["missing_classes"] for m in member_scores
                            if m.get("missing_classes")},
        "pooled": {"wa": pooled["wa"], "ua": pooled["ua"]},
        "per_class": pooled["per_class"], "confusion": pooled["confusion"],
        "confusion_normalized": pooled["confusion_normalized"],
        "per_session": per_session, "folds": member_scores, "n_test": int(len(table)),
        "chance_ua": 1 / len(classes),
    }
    if all("ablation" in m for m in member_scores):
        metrics["ablation"] = {k: float(np.mean([m["ablation"][k] for m in member_scores]))
                               for k in member_scores[0]["ablation"]}
    alignment = [m["attention_alignment"] for m in member_scores if "attention_alignment" in m]
    if alignment:
        metrics["attention_alignment"] = _pool_alignment(alignment)
    return metrics


def _spread(results: list[dict]) -> dict:
    """Mean and (population) std of UA and WA over (fold, seed) results."""
    ua = np.array([r["ua"] for r in results])
    wa = np.array([r["wa"] for r in results])
    return {"ua_mean": float(ua.mean()), "ua_std": float(ua.std()),
            "wa_mean": float(wa.mean()), "wa_std": float(wa.std()), "n": len(results)}


def _ablation(model, examples, labels, classes, device) -> dict:
    """UA with one modality taken away: speech frames set to the training mean (zeros once
    normalised), or every word made unknown. A fusion model that uses both loses UA either
    way; one that quietly ignores a modality loses nothing when it goes."""
    no_speech = [Example(e.utt_id, np.zeros_like(e.frames), e.words, e.label)
                 for e in examples]
    no_text = [Example(e.utt_id, e.frames, [UNK_ID] * len(e.words), e.label)
               for e in examples]
    return {name: scores(labels, predict_log_probs(model, part, device).argmax(1),
                         classes)["ua"]
            for name, part in (("ua_without_speech", no_speech), ("ua_without_text", no_text))}


def _attention_cases(model, examples, rows, bundle, batch_size: int = 64) -> list[dict]:
    """Word-by-step attention weights of test utterances, with each word's time span from
    the corpus' forced alignment (.wdseg) where there is one."""
    from model.text import tokenize

    step_seconds = FeatureSpec.from_dict(bundle["feature_spec"]).step_seconds(
        bundle["spec"]["frame_pool"])
    cases = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            batch = collate(part)
            out = model.outputs(batch.frames, batch.frame_lengths, batch.words,
                                batch.word_lengths)
            for k, e in enumerate(part):
                words = tokenize(rows.at[e.utt_id, "transcript"]) or ["<unk>"]
                steps = int(out.speech_lengths[k])
                cases.append({"utt_id": e.utt_id, "words": words,
                              "weights": out.attention[k, :len(words), :steps].numpy(),
                              "step_seconds": step_seconds,
                              "spans": _word_spans(words, rows.at[e.utt_id, "wdseg_path"])})
    return cases


def _word_spans(words: list[str], wdseg_path) -> dict[int, tuple[float, float]] | None:
    """Word index -> (start, end) seconds, matching the transcript's tokens to the aligned
    words in order; words the aligner spelt differently are left out. None: no alignment."""
    from model.text import tokenize

    if not isinstance(wdseg_path, str) or not Path(wdseg_path).is_file():
        return None
    try:
        aligned = iemocap.parse_wdseg(Path(wdseg_path).read_text(errors="replace"))
    except OSError:
        return None
    tokens = [" ".join(tokenize(w)) for _, _, w in aligned]
    matcher = difflib.SequenceMatcher(None, words, tokens, autojunk=False)
    spans = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            first, last, _ = aligned[block.b + k]
            spans[block.a + k] = (first / 100, (last + 1) / 100)
    return spans


def _alignment_summary(cases: list[dict]) -> dict:
    """Does each word attend to its own speech? Mean attention mass on a word's own span,
    against the mass attention spread evenly would put there."""
    mass, share = [], []
    for case in cases:
        if case["spans"]:
            m, s = attention_in_own_word(case["weights"], case["spans"], case["step_seconds"])
            mass.extend(m)
            share.extend(s)
    summary = {"utterances": len(cases),
               "utterances_aligned": sum(1 for c in cases if c["spans"]),
               "words": len(mass)}
    if mass:
        summary.update(mass_in_own_word=float(np.mean(mass)),
                       uniform_mass=float(np.mean(share)),
                       lift=float(np.mean(mass) / np.mean(share)))
    return summary


def _pool_alignment(summaries: list[dict]) -> dict:
    """Several models' alignment summaries as one over all their words."""
    if len(summaries) == 1:
        return summaries[0]
    words = np.array([s["words"] for s in summaries], dtype=float)
    pooled = {k: int(sum(s[k] for s in summaries))
              for k in ("utterances", "utterances_aligned", "words")}
    if words.sum():
        mass = float(sum(s.get("mass_in_own_word", 0) * w for s, w in zip(summaries, words))
                     / words.sum())
        share = float(sum(s.get("uniform_mass", 0) * w for s, w in zip(summaries, words))
                      / words.sum())
        pooled.update(mass_in_own_word=mass, uniform_mass=share, lift=mass / share)
    return pooled


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(metrics: dict, path: Path) -> None:
    plt = _plt()
    classes, pooled = metrics["classes"], metrics["pooled"]
    normalized = np.array(metrics["confusion_normalized"])
    counts = np.array(metrics["confusion"])
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{normalized[i, j]:.2f}\n({counts[i, j]})", ha="center",
                    va="center", fontsize=8,
                    color="white" if normalized[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"WA {pooled['wa']:.3f}  UA {pooled['ua']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curves(histories: dict, path: Path) -> None:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        left.plot(epochs, [h["loss"] for h in history], label=name)
        if any(h["val_ua"] is not None for h in history):
            right.plot(epochs, [h["val_ua"] for h in history], label=name)
    left.set_title("training loss")
    right.set_title("validation UA" if right.lines else
                    "validation UA: none (train.validation_speakers=0)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_attention(cases: list[dict], path: Path) -> None:
    """Heatmaps of which speech each word attends to; boxes mark where each word was
    actually spoken (forced alignment), when the corpus has .wdseg files."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 2.2 * len(cases)), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        weights = case["weights"]
        seconds = weights.shape[1] * case["step_seconds"]
        ax.imshow(weights, aspect="auto", cmap="viridis", extent=(0, seconds, len(weights), 0))
        for i, (start, end) in (case["spans"] or {}).items():
            ax.add_patch(Rectangle((start, i), end - start, 1, fill=False, edgecolor="white",
                                   linewidth=0.8))
        ax.set_yticks(np.arange(len(case["words"])) + 0.5, case["words"], fontsize=7)
        ax.set_title(case["utt_id"] + ("  (boxes: where each word was spoken)"
                                       if case["spans"] else ""), fontsize=9)
        ax.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report_lines(metrics: dict) -> list[str]:
    many = len(metrics["folds"]) > 1
    lines = [f"{metrics['model_kind']} ({metrics['protocol']}): WA {metrics['wa']:.3f}"
             + (f" ± {metrics['wa_std']:.3f}" if many else "")
             + f"  UA {metrics['ua']:.3f}"
             + (f" ± {metrics['ua_std']:.3f}" if many else "")
             + (f" over {len(metrics['folds'])} (fold, seed) models" if many else "")
             + f"  on {metrics['n_test']} test "
             + ("predictions (utterance × seed)" if len(metrics.get("per_seed", {})) > 1
                else "utterances") + " (chance UA "
               f"{metrics['chance_ua']:.2f})"]
    for what in ("per_fold", "per_seed"):
        groups = metrics.get(what, {})
        if many and len(groups) > 1:
            lines.append(f"{what.replace('_', ' ')}: " + ", ".join(
                f"{name} UA {g['ua_mean']:.3f} ± {g['ua_std']:.3f}"
                for name, g in groups.items()))
    for member, missing in metrics.get("missing_classes", {}).items():
        lines.append(f"note: {member}'s test session has no {', '.join(missing)} utterances; "
                     f"its UA averages the other classes")
    lines.append("class       recall  precision  f1     support")
    for name, c in metrics["per_class"].items():
        lines.append(f"{name:<11} {c['recall']:.3f}   {c['precision']:.3f}      {c['f1']:.3f}"
                     f"  {c['support']}")
    if "ablation" in metrics:
        a = metrics["ablation"]
        lines.append(f"modality ablation: UA {a['ua_without_speech']:.3f} without speech, "
                     f"{a['ua_without_text']:.3f} without text")
    if metrics.get("attention_alignment", {}).get("words"):
        a = metrics["attention_alignment"]
        lines.append(f"attention on each word's own speech: {a['mass_in_own_word']:.3f} of its "
                     f"mass, {a['uniform_mass']:.3f} if spread evenly (lift {a['lift']:.2f}; "
                     f"{a['words']} words in {a['utterances_aligned']} aligned utterances)")
    lines.append("session  WA     UA     n")
    for session, s in metrics["per_session"].items():
        lines.append(f"{session:<8} {s['wa']:.3f}  {s['ua']:.3f}  {s['n']}")
    return lines
