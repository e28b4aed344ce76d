"""Evaluate: each fold's model on its held-out session -> metrics, tables and pictures.

WA is overall accuracy, UA the mean per-class recall. Under leave-one-session-out both are
reported as mean ± std over the folds (the field's convention) and also pooled over every
test utterance; per-class precision/recall/F1, confusion matrices (counts and
row-normalised) and per-session results come with them, and the improvised and scripted
utterances' scores apart. Under `evaluate.transcripts=asr` the test utterances are scored on
what the speech recogniser hears (components/transcripts.py), its word error rate beside.
"""

import difflib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import iemocap, outputs
from components.config import Config
from components.feature_store import FeatureStore
from components.outputs import Evaluation, TrainedModel
from components.reporting import plot_attention, write
from components.transcripts import Transcriber, recognised_rows
from model.data import Example, collate
from model.metrics import alignment_lifts, attention_in_own_word, scores
from model.network import prior_weights
from model.serving import load_member, predict_log_probs
from model.spec import UNK_ID, FeatureSpec


def run(model_dir: Path, store_dir: Path, manifest_path: Path, out_dir: Path,
        config: Config) -> dict:
    """Every (fold, seed) model of model_dir on its held-out session."""
    return evaluate_model(Path(model_dir), FeatureStore(Path(store_dir)),
                          outputs.labelled_rows(manifest_path, config.ingest.classes,
                                                config.ingest.subset),
                          Path(out_dir), config)


def evaluate_model(model_dir: Path, store: FeatureStore, rows: pd.DataFrame, out_dir: Path,
                   config: Config) -> dict:
    """run(), on a feature store and labelled rows already loaded."""
    trained = TrainedModel(Path(model_dir))
    transcriber = Transcriber.of(config) if config.evaluate.transcripts == "asr" else None
    members = [evaluate_member(trained, member_dir, store, rows, transcriber)
               for member_dir in trained.member_dirs()]
    table = pd.DataFrame([p for m in members for p in m["predictions"]])
    cases = next((m["attention"][:3] for m in members if m["attention"]), None)
    return write(Evaluation(Path(out_dir)), [m["scores"] for m in members], table,
                 {m["scores"]["member"]: m["history"] for m in members}, config,
                 lambda path: plot_attention(cases, path) if cases else None)


def evaluate_member(trained: TrainedModel, member_dir: Path, store: FeatureStore,
                    rows: pd.DataFrame, transcriber: Transcriber | None = None) -> dict:
    """One (fold, seed) model on its fold's held-out session: scores, predictions,
    attention. With a transcriber, on the test utterances' recognised transcripts."""
    device = torch.device("cpu")
    loaded = load_member(member_dir / trained.MODEL, device)
    model, bundle, classes = loaded.model, loaded.bundle, loaded.inputs.classes
    fold = trained.fold(member_dir)
    asr = None
    if transcriber is not None:
        rows, asr = recognised_rows(rows, fold["test_ids"], transcriber)
    examples = store.examples(loaded.inputs, fold["test_ids"], rows)
    log_p = predict_log_probs(model, examples, device)
    predicted = log_p.argmax(1)
    labels = np.array([e.label for e in examples])
    fold_scores = scores(labels, predicted, classes)
    seed = fold.get("seed", 0)
    result = {"fold": fold["name"], "seed": seed, "member": member_dir.name,
              "test_session": fold["test_session"],
              "wa": fold_scores["wa"], "ua": fold_scores["ua"], "n": fold_scores["n"],
              "best_epoch": bundle["best_epoch"],
              # UA averages the classes present; a test session may lack one.
              "missing_classes": [c for c, v in fold_scores["per_class"].items()
                                  if not v["support"]]}
    if asr is not None:
        result["asr"] = asr
    predictions = [{"utt_id": e.utt_id, "fold": fold["name"], "seed": seed,
                    "session": fold["test_session"],
                    "speaker": rows.at[e.utt_id, "speaker"],
                    "scripted": bool(rows.at[e.utt_id, "scripted"]), "label": classes[e.label],
                    "predicted": classes[p],
                    **{f"p_{c}": float(np.exp(v)) for c, v in zip(classes, lp)},
                    # The words the model read: serving must be given the same to agree.
                    **({"recognised": rows.at[e.utt_id, "transcript"]} if asr else {})}
                   for e, p, lp in zip(examples, predicted, log_p)]
    if model.modalities == {"speech", "text"}:
        result["ablation"] = _ablation(model, examples, labels, classes, device)
    tokenizer = loaded.inputs.vocab.tokenizer
    attention = (_attention_cases(model, examples, rows, bundle, tokenizer)
                 if model.has_attention else [])
    if attention:
        result["attention_alignment"] = _alignment_summary(attention)
    return {"scores": result, "predictions": predictions, "classes": classes,
            "history": trained.history(member_dir), "attention": attention}


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


def _attention_cases(model, examples, rows, bundle, tokenize,
                     batch_size: int = 64) -> list[dict]:
    """Word-by-step attention weights of test utterances, with each word's time span from
    the corpus' forced alignment (.wdseg) where there is one; `tokenize` is the model's."""
    step_seconds = FeatureSpec.from_dict(bundle["feature_spec"]).step_seconds(
        bundle["spec"]["frame_pool"])
    cases = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            batch = collate(part)
            out = model.attention_outputs(batch.frames, batch.frame_lengths, batch.words,
                                          batch.word_lengths)
            for k, e in enumerate(part):
                words = tokenize(rows.at[e.utt_id, "transcript"]) or ["<unk>"]
                steps = int(out.speech_lengths[k])
                cases.append({"utt_id": e.utt_id, "words": words,
                              "weights": out.attention[k, :len(words), :steps].numpy(),
                              "prior_weights": prior_weights(
                                  len(words), steps, getattr(model, "alignment_prior", 0)
                              ).numpy(),
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
    against the mass attention spread evenly would put there (`lift`), and the same for the
    diagonal prior's own weights on the same words and steps (`prior_lift`: 1 with no
    prior), which the trained attention starts from."""
    mass, prior_mass, share = [], [], []
    for case in cases:
        if case["spans"]:
            m, s = attention_in_own_word(case["weights"], case["spans"], case["step_seconds"])
            mass.extend(m)
            share.extend(s)
            prior_mass.extend(attention_in_own_word(case["prior_weights"], case["spans"],
                                                    case["step_seconds"])[0])
    summary = {"utterances": len(cases),
               "utterances_aligned": sum(1 for c in cases if c["spans"]),
               "words": len(mass)}
    if mass:
        summary.update(alignment_lifts(float(np.mean(mass)), float(np.mean(prior_mass)),
                                       float(np.mean(share))))
    return summary
