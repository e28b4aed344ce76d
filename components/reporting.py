"""What the (fold, seed) tasks add up to, free of torch: an evaluation's metrics.json,
predictions, plots and report lines (`write`), the fanned-out tasks' evaluations and model
folders gathered into one (`collect`, `collect_models`) and the training summary
(`write_train_summary`). The summarize task and `emoalign run`'s report import only this,
so they start without loading torch.

WA is overall accuracy, UA the mean per-class recall. Under leave-one-session-out both are
reported as mean ± std over the (fold, seed) models (the field's convention) and also pooled
over every test prediction.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config
from components.errors import UserError
from components.outputs import Evaluation, TrainedModel
from model.metrics import alignment_lifts, scores


class CollectError(UserError):
    """The fanned-out tasks' outputs cannot be gathered into one."""


def collect(evaluation_dirs: list[Path], model_dir: Path, out_dir: Path,
            config: Config) -> dict:
    """The fanned-out tasks' evaluations pooled into one, as evaluate.run on every model would
    write it: mean ± std over the (fold, seed) models, per fold, per seed and per class,
    and the confusion matrix pooled over all of them."""
    import shutil

    parts = [Evaluation(Path(d)) for d in evaluation_dirs]
    member_scores = [s for part in parts for s in part.metrics()["folds"]]
    table = pd.concat([part.predictions() for part in parts], ignore_index=True)
    trained = TrainedModel(Path(model_dir))
    histories = {d.name: trained.history(d) for d in trained.member_dirs()}
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


def summarize(member_scores: list[dict], table: pd.DataFrame, classes: list[str],
              config: Config) -> dict:
    """metrics.json: mean ± std over the (fold, seed) models (`ua`, `wa` are those means),
    per fold, per seed, per subset (improvised, scripted), pooled over every test
    prediction, per class and per session; under recognised transcripts, their word error
    rate (`asr_wer`) and what recognising them cost."""
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
        "per_session": per_session, "per_subset": _per_subset(table, classes),
        "folds": member_scores, "n_test": int(len(table)), "chance_ua": 1 / len(classes),
        "transcripts": config.evaluate.transcripts,
    }
    recognised = [m["asr"] for m in member_scores if "asr" in m]
    if recognised:
        metrics["asr"] = _pool_recognition(recognised)
        metrics["asr_wer"] = metrics["asr"]["wer"]
    if all("ablation" in m for m in member_scores):
        metrics["ablation"] = {k: float(np.mean([m["ablation"][k] for m in member_scores]))
                               for k in member_scores[0]["ablation"]}
    alignment = [m["attention_alignment"] for m in member_scores if "attention_alignment" in m]
    if alignment:
        metrics["attention_alignment"] = _pool_alignment(alignment)
    return metrics


def _per_subset(table: pd.DataFrame, classes: list[str]) -> dict:
    """UA and WA of the improvised and of the scripted test utterances, each mean ± std
    over the (fold, seed) models as the whole is. {} for predictions that do not say
    (evaluations written before they did)."""
    if "scripted" not in table.columns:
        return {}
    scripted = table["scripted"].astype(str) == "True"  # bool, or read back from CSV
    out = {}
    for name, part in (("improvised", table[~scripted]), ("scripted", table[scripted])):
        if part.empty:
            continue
        results = []
        for _, member in part.groupby(["fold", "seed"], sort=True):
            s = scores(member["label"].map(classes.index), member["predicted"].map(
                classes.index), classes)
            results.append({"ua": s["ua"], "wa": s["wa"]})
        spread = _spread(results)
        out[name] = {"ua": spread["ua_mean"], "wa": spread["wa_mean"],
                     "ua_std": spread["ua_std"], "wa_std": spread["wa_std"],
                     "n": int(len(part))}
    return out


def _pool_recognition(summaries: list[dict]) -> dict:
    """The (fold, seed) models' recognition summaries as one: the word error rate over all
    their words, and the speed over what was recognised rather than read from the cache."""
    words = sum(s["words"] for s in summaries)
    errors = sum(s["word_errors"] for s in summaries)
    pooled = {"recognizer": summaries[0]["recognizer"], "wer": errors / words if words else None,
              "word_errors": errors, "words": words,
              "utterances": sum(s["utterances"] for s in summaries)}
    now = [s for s in summaries if s["recognised_now"]]
    if now:
        recognised = sum(s["recognised_now"] for s in now)
        seconds, cpu = sum(s["seconds"] for s in now), sum(s["cpu_seconds"] for s in now)
        pooled.update(recognised_now=recognised, seconds=round(seconds, 3),
                      utterances_per_core_s=recognised / max(cpu, 1e-9),
                      real_time_factor=cpu / max(sum(s["audio_seconds"] for s in now), 1e-9),
                      utterances_per_s=recognised / max(seconds, 1e-9),
                      workers=max(s["workers"] for s in now))
    return pooled


def _spread(results: list[dict]) -> dict:
    """Mean and (population) std of UA and WA over (fold, seed) results."""
    ua = np.array([r["ua"] for r in results])
    wa = np.array([r["wa"] for r in results])
    return {"ua_mean": float(ua.mean()), "ua_std": float(ua.std()),
            "wa_mean": float(wa.mean()), "wa_std": float(wa.std()), "n": len(results)}


def _pool_alignment(summaries: list[dict]) -> dict:
    """Several models' alignment summaries as one over all their words."""
    if len(summaries) == 1:
        return summaries[0]
    words = np.array([s["words"] for s in summaries], dtype=float)
    pooled = {k: int(sum(s[k] for s in summaries))
              for k in ("utterances", "utterances_aligned", "words")}
    if words.sum():
        mass, prior_mass, share = (
            float(sum(s.get(key, 0) * w for s, w in zip(summaries, words)) / words.sum())
            if all(key in s for s, w in zip(summaries, words) if w) else None
            for key in ("mass_in_own_word", "prior_mass_in_own_word", "uniform_mass"))
        pooled.update(alignment_lifts(mass, prior_mass, share))
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


def plot_attention(cases: list[dict], path: Path) -> None:
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
    subsets = metrics.get("per_subset") or {}
    if subsets:
        lines.append("; ".join(f"{name}: WA {s['wa']:.3f}  UA {s['ua']:.3f}  (n={s['n']})"
                               for name, s in subsets.items()))
    if "asr" in metrics:
        a = metrics["asr"]
        wer = "n/a (no reference words)" if a["wer"] is None else f"{a['wer']:.3f}"
        lines.append(f"transcripts recognised by {a['recognizer']}: WER {wer} over {a['words']} "
                     f"words of {a['utterances']} test utterances"
                     + (f"; {a['recognised_now']} recognised now, "
                        f"{a['utterances_per_core_s']:.2f} utterances/s per core "
                        f"({a['real_time_factor']:.2f} x real time; {a['utterances_per_s']:.2f}"
                        f"/s on {a['workers']} process(es))"
                        if a.get("recognised_now") else "; all from the cache"))
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
                     f"mass, {a['uniform_mass']:.3f} if spread evenly (lift {a['lift']:.2f}"
                     + (f", the prior alone {a['prior_lift']:.2f}: {a['lift_over_prior']:.2f}"
                        " x the prior" if "prior_lift" in a else "")
                     + f"; {a['words']} words in {a['utterances_aligned']} aligned utterances)")
    lines.append("session  WA     UA     n")
    for session, s in metrics["per_session"].items():
        lines.append(f"{session:<8} {s['wa']:.3f}  {s['ua']:.3f}  {s['n']}")
    return lines


def html_page(evaluation: Evaluation) -> str:
    """An evaluation on one self-contained page: its report lines and its plots (confusion,
    learning curves, attention when drawn) embedded as base64 PNGs, so the page shows
    everything with no other file beside it (a KFP UI serves an HTML artifact alone)."""
    import base64
    import html

    metrics = evaluation.metrics()
    title = f"emoalign: {metrics['model_kind']} ({metrics['protocol']})"
    figures = [(name, evaluation.folder / file) for name, file in (
        ("confusion matrix", evaluation.CONFUSION_PNG),
        ("learning curves", evaluation.CURVES_PNG),
        ("attention", evaluation.ATTENTION_PNG))]
    images = [f'<figure><img alt="{name}" src="data:image/png;base64,'
              f'{base64.b64encode(path.read_bytes()).decode("ascii")}">'
              f"<figcaption>{name}</figcaption></figure>"
              for name, path in figures if path.is_file()]
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}img{max-width:100%}"
        "figure{margin:1em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<pre>" + html.escape("\n".join(report_lines(metrics))) + "</pre>",
        *images, "</body></html>", ""])


def write_train_summary(results: list[dict], out_dir: Path, config: Config) -> dict:
    """train_summary.json over the run's (fold, seed) models."""
    summary = {"protocol": config.protocol, "model_kind": config.model.kind,
               "seeds": config.seeds, "device": results[0]["device"],
               "folds": [{k: v for k, v in r.items() if k != "environment"} for r in results],
               "seconds": round(sum(r["seconds"] for r in results), 2),
               "environment": results[0]["environment"]}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / TrainedModel.SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def collect_models(model_dirs: list[Path], out_dir: Path, config: Config) -> dict:
    """The fanned-out tasks' models gathered into one model folder (what registration
    serves: every member, averaged), without their resume checkpoints."""
    import shutil

    results = []
    for part in map(TrainedModel, map(Path, model_dirs)):
        for member in part.member_dirs():
            target = Path(out_dir) / member.name
            shutil.copytree(member, target, ignore=shutil.ignore_patterns(
                TrainedModel.CHECKPOINT), dirs_exist_ok=True)
        summary = part.summary()
        results.extend({**r, "environment": summary["environment"]} for r in summary["folds"])
    if len({r["member"] for r in results}) != len(results):
        raise CollectError("two tasks trained the same (fold, seed); nothing was collected")
    return write_train_summary(results, out_dir, config)
