"""The promotion gate: does the challenger, scored beside the champion on the same test
utterances, deserve to replace it? Also the infra check that the registered model loads and
scores through MLflow as serving will."""

from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config
from components.outputs import StepOutputs
from components.registry.store import RegistryError, read_errors, store_outage
from model.metrics import unweighted_accuracy


def unservable() -> tuple[type[BaseException], ...]:
    """What loading and scoring a registered version through MLflow raises when the version
    cannot serve: MLflow's errors (its files or flavour, its input), the file system's and
    the store's (store.read_errors), its code's imports, torch's and libsndfile's
    (RuntimeError), and score_champion's RegistryError (other classes). A bug in the gate
    (TypeError, KeyError, ValueError, ...) is none of them: it is raised."""
    return read_errors() + (ImportError, RuntimeError)


def paired_bootstrap(labels, challenger, champion, n_classes: int, samples: int,
                     seed: int) -> tuple[float, float]:
    """95 % interval of UA(challenger) - UA(champion), both scored on the same resampled
    utterances each time."""
    labels, challenger, champion = map(np.asarray, (labels, challenger, champion))
    idx = np.random.default_rng(seed).integers(0, len(labels), size=(samples, len(labels)))
    deltas = (unweighted_accuracy(labels[idx], challenger[idx], n_classes)
              - unweighted_accuracy(labels[idx], champion[idx], n_classes))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def per_utterance(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per test utterance: the probabilities of the seeds that predicted it
    averaged, as the served ensemble averages its models, and their argmax."""
    if not predictions["utt_id"].duplicated().any():
        return predictions
    columns = [f"p_{c}" for c in classes]
    probabilities = predictions.groupby("utt_id", sort=False)[columns].mean()
    rows = predictions.drop_duplicates("utt_id").set_index("utt_id").drop(
        columns=columns + ["predicted", "seed"], errors="ignore")
    merged = rows.join(probabilities)
    merged["predicted"] = [classes[i] for i in probabilities.to_numpy().argmax(1)]
    return merged.reset_index()


def gate_data(outputs: StepOutputs) -> pd.DataFrame:
    """The challenger's test utterances, each with its seed-ensemble prediction, wav path
    and transcript: the one it was evaluated with (the recognised one, under
    evaluate.transcripts=asr), so serving is checked, and the champion scored, on the same
    words."""
    predictions = per_utterance(outputs.evaluation.predictions(),
                                outputs.evaluation.metrics()["classes"])
    kept = pd.read_parquet(outputs.validated.manifest_path)[
        ["utt_id", "wav_path", "transcript"]]
    if "recognised" in predictions.columns:
        kept = kept.drop(columns="transcript")
        predictions = predictions.rename(columns={"recognised": "transcript"})
    return predictions.merge(kept, on="utt_id", how="left", validate="one_to_one")


def recorded_predictions(client, run_id: str, classes: list[str]) -> pd.DataFrame | None:
    """A leave-one-session-out champion's own out-of-fold predictions, as its run recorded
    them (None when it was evaluated otherwise, or they cannot be read or parsed: the
    champion is then re-scored now). A bug raises."""
    import json
    import tempfile

    import mlflow

    from components.outputs import Evaluation, read_json

    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="evaluate", dst_path=scratch,
                tracking_uri=client.tracking_uri))
            if read_json(folder / Evaluation.METRICS).get("protocol") != "loso":
                return None
            recorded = pd.read_csv(folder / Evaluation.PREDICTIONS)
    except read_errors() + (json.JSONDecodeError, pd.errors.ParserError,
                            pd.errors.EmptyDataError):
        return None
    return per_utterance(recorded, classes)


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"wav": frame["wav_path"].astype(str),
                         "transcript": frame["transcript"].fillna("").astype(str),
                         "speaker": frame["speaker"].astype(str)})


def _store_down() -> bool:
    import mlflow

    return store_outage(mlflow.get_tracking_uri()) is not None


def infra_check(model_uri: str, data: pd.DataFrame, classes: list[str], n: int,
                compare_probabilities: bool) -> dict:
    """Load the registered version through MLflow and score a few test utterances, as
    serving will. Under holdout its probabilities must match evaluation's. A version that
    does not serve (`unservable`) fails the check, the error said; a store that is down,
    and a bug, are raised."""
    from model.pyfunc import load

    sample = data.head(n)
    served = model_input(sample)
    try:
        out = load(model_uri).predict(served)
    except unservable() as e:
        if _store_down():
            raise  # the store is down: no verdict on the model (registration says which)
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    probs = out[[f"p_{c}" for c in classes]].to_numpy()
    ok = bool(np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
              and set(out["label"]) <= set(classes))
    result = {"ok": ok, "n": int(len(sample))}
    if compare_probabilities:
        diff = float(np.abs(probs - sample[[f"p_{c}" for c in classes]].to_numpy()).max())
        result["max_abs_diff_vs_evaluation"] = diff
        result["ok"] = ok and diff < 1e-3
    if not result["ok"] and "error" not in result:
        result["error"] = "served probabilities are invalid or differ from evaluation's"
    return result


def score_champion(model_uri: str, data: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The champion's predicted class ids on the challenger's test utterances, now."""
    from model.pyfunc import load

    served = model_input(data)
    out = load(model_uri).predict(served)
    missing = [c for c in classes if f"p_{c}" not in out.columns]
    if missing:
        raise RegistryError(f"the champion predicts other classes (lacks {missing})")
    return out["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()


def decide(config: Config, challenger_ua: float, infra: dict, champion: dict | None,
           drift_unavailable: str | None = None) -> tuple[bool, str]:
    """(promote?, why in one line). `drift_unavailable`: why the drift check against the
    champion's data, which validation was asked to make, could not be made (the validation
    report's `drift_unavailable`). The gate does not promote a version whose data it could
    not check, whatever its scores: the reason says why, beside the figures, for the person
    who may promote it (`emoalign promote`)."""
    promoted, reason = _judge(config, challenger_ua, infra, champion)
    if not drift_unavailable:
        return promoted, reason
    if not promoted:  # the scores reject it already; the missing check is said too
        return False, f"{reason}; nor was a drift check possible ({drift_unavailable})"
    return False, (f"no drift check was possible ({drift_unavailable}), so the gate leaves "
                   f"the promotion to a person; {reason}")


def _judge(config: Config, challenger_ua: float, infra: dict, champion: dict | None
           ) -> tuple[bool, str]:
    """The decision on the scores: the floor, the infra check, the champion."""
    floor, tolerance = config.registry.ua_floor, config.registry.tolerance
    if challenger_ua < floor:
        return False, f"UA {challenger_ua:.4f} is below the floor {floor:.2f}"
    if not infra["ok"]:
        return False, f"infra check failed: {infra.get('error')}"
    if champion is None:
        return True, f"UA {challenger_ua:.4f} >= floor {floor:.2f}; no champion yet"
    if "error" in champion:
        return True, (f"UA {challenger_ua:.4f} >= floor; the champion (version "
                      f"{champion['version']}) could not be re-scored: {champion['error']}")
    delta = challenger_ua - champion["ua"]
    verdict = "not worse than" if delta >= -tolerance else "worse than"
    text = (f"UA {challenger_ua:.4f} vs champion v{champion['version']} {champion['ua']:.4f} "
            f"({champion.get('basis', 're-scored now')}) on the same {champion['n']} test "
            f"utterances: delta {delta:+.4f} "
            f"(95% CI {champion['ci_low']:+.4f}..{champion['ci_high']:+.4f}), "
            f"{verdict} the champion within tolerance {tolerance:.3f}")
    return delta >= -tolerance, text


def challenge(champion_uri: str, champion_version: str, data: pd.DataFrame,
              classes: list[str], config: Config, recorded: pd.DataFrame | None = None
              ) -> tuple[dict, float | None]:
    """The champion's predictions on the challenger's test utterances, the paired bootstrap
    interval of the UA difference, and the challenger's UA on the same utterances (None
    when the champion could not be scored, `unservable`: the error says why, and the gate
    may replace it). A store that is down, and a bug, are raised: neither promotes.

    Like with like: under leave-one-session-out the challenger's predictions are
    out-of-fold, so the champion's are its recorded out-of-fold ones (`recorded`) when they
    cover these utterances; otherwise the champion is re-scored now."""
    ids = {c: i for i, c in enumerate(classes)}
    labels, mine = data["label"].map(ids).to_numpy(), data["predicted"].map(ids).to_numpy()
    champion = {"version": champion_version, "n": int(len(data))}
    if recorded is not None and set(data["utt_id"]) <= set(recorded["utt_id"]):
        champion["basis"] = "its recorded out-of-fold predictions"
        theirs = recorded.set_index("utt_id").loc[data["utt_id"], "predicted"] \
            .map(ids).to_numpy()
    else:
        champion["basis"] = "re-scored now"
        try:
            theirs = score_champion(champion_uri, data, classes)
        except unservable() as e:
            if _store_down():
                raise  # an outage must not promote the challenger by default
            # The champion cannot serve these utterances: the challenger may replace it.
            champion["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return champion, None
    champion["ua"] = float(unweighted_accuracy(labels, theirs, len(classes))[0])
    challenger_ua = float(unweighted_accuracy(labels, mine, len(classes))[0])
    champion["ci_low"], champion["ci_high"] = paired_bootstrap(
        labels, mine, theirs, len(classes), config.registry.bootstrap_samples, config.seed)
    return champion, challenger_ua


def gate_numbers(config: Config, challenger_ua: float, n_test: int, infra: dict,
                 champion: dict | None) -> dict:
    """The figures the decision rests on, as the version's tags and the history keep them."""
    numbers = {"ua": round(challenger_ua, 6), "ua_floor": config.registry.ua_floor,
               "tolerance": config.registry.tolerance, "n_test": n_test,
               "infra_ok": infra["ok"]}
    if champion and "ua" in champion:
        numbers.update(champion_version=champion["version"],
                       champion_ua=round(champion["ua"], 6),
                       delta_ua=round(challenger_ua - champion["ua"], 6),
                       delta_ua_ci95=[round(champion["ci_low"], 6),
                                      round(champion["ci_high"], 6)])
    return numbers
