"""Validate: the gate between ingest and training.

A Great Expectations suite checks the manifest, and audio checks GX cannot make read every
wav. Findings come in two severities:
- error: the corpus as a whole is wrong (schema broken, a class missing or too rare, a
  speaker in two sessions, too many bad files). The step stops with one line and a report.
- warning: one utterance is wrong (unreadable or silent wav, wrong sample rate, empty
  transcript, duplicate id, ...). It moves to quarantine.csv with its reasons, and
  manifest rows = kept + quarantined, always.
`strict` turns every warning into an error.
"""

import html
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from components import outputs
from components.config import DriftConfig, ValidateConfig
from components.errors import UserError
from components.outputs import Ingested, Validated
from model.spec import SAMPLE_RATE
from model.text import tokenize

SPEAKER_RE = r"^Ses0[1-5][FM]$"
# What a drift check that could not be made means for the run (components/registry/gate.py).
NOT_PROMOTED = "a version registered from this run is not promoted automatically"


class ValidationError(UserError):
    """The corpus failed an error-level check; the message names it and the report."""


@dataclass
class ValidationResult:
    passed: bool
    manifest: pd.DataFrame      # the rows kept
    quarantine: pd.DataFrame    # the rows set aside, with their reasons
    report: dict
    out_dir: Path


# ---- audio checks -----------------------------------------------------------------------

def _check_wav(args: tuple) -> tuple[int, list[tuple[str, str]]]:
    """(row, [(check, reason), ...]) for one wav; an empty list means it is fine."""
    row, path, expected_s, cfg = args
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports every kind of damage as its own error
        return row, [("readable", f"unreadable wav: {str(e).splitlines()[0][:160]}")]
    problems = []
    frames, channels = audio.shape
    if rate != SAMPLE_RATE:
        problems.append(("sample_rate", f"sample rate {rate} Hz, expected {SAMPLE_RATE}"))
    if channels != cfg.channels:
        problems.append(("channels", f"{channels} channels, expected {cfg.channels}"))
    if frames == 0:
        return row, problems + [("empty", "no audio frames")]
    duration = frames / rate
    if expected_s is not None and abs(duration - expected_s) > cfg.duration_tolerance_s:
        problems.append(("duration_agrees", f"wav lasts {duration:.3f} s, label block "
                                            f"{expected_s:.3f} s"))
    if not np.isfinite(audio).all():
        return row, problems + [("finite", "NaN or infinite samples")]
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    dbfs = 20 * math.log10(rms) if rms > 0 else -math.inf
    if dbfs < cfg.silence_floor_dbfs:
        problems.append(("not_silent", f"silent: RMS {dbfs:.1f} dBFS, floor "
                                       f"{cfg.silence_floor_dbfs:.0f}"))
    clipped = float(np.mean(np.abs(audio) >= 0.999))
    if clipped > cfg.max_clipped_share:
        problems.append(("clipping", f"clipped: {clipped:.1%} of samples at full scale"))
    return row, problems


def check_audio(manifest: pd.DataFrame, cfg: ValidateConfig) -> dict[int, list[tuple]]:
    """Read every wav the manifest names, in parallel; problems per row number."""
    jobs = [(row, path, (end - start) if pd.notna(start) and pd.notna(end) else None, cfg)
            for row, path, start, end in zip(manifest.index, manifest["wav_path"],
                                             manifest["start"], manifest["end"])
            if isinstance(path, str)]
    workers = cfg.workers or len(os.sched_getaffinity(0))
    if workers <= 1 or len(jobs) < 64:
        results = map(_check_wav, jobs)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_check_wav, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    problems = {row: found for row, found in results if found}
    if workers > 1 and len(jobs) >= 64:
        pool.shutdown()
    return problems


# ---- the Great Expectations suite -------------------------------------------------------

def _suite(gx, classes: list[str], cfg: ValidateConfig):
    """The suite, each expectation tagged with its severity and the check name it reports."""
    suite = gx.ExpectationSuite(name="emoalign_manifest")
    for severity, check, expectation in _expectations(classes, cfg):
        expectation.meta = {"severity": severity, "check": check}
        suite.add_expectation(expectation)
    return suite


def _expectations(classes: list[str], cfg: ValidateConfig) -> list[tuple[str, str, object]]:
    """(severity, check, expectation), in the order GX's result and the report list them."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    labelled = Column("label").is_not_null()
    columns = [*outputs.MANIFEST_SCHEMA.names, "speaker_session"]
    expectations = [
        ("error", "schema", gxe.ExpectTableColumnsToMatchSet(column_set=columns,
                                                              exact_match=True)),
        ("error", "not_empty", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        ("error", "speaker_leakage", gxe.ExpectColumnPairValuesToBeEqual(
            column_A="speaker_session", column_B="session")),
        ("warning", "unique_id", gxe.ExpectColumnValuesToBeUnique(column="utt_id")),
        ("warning", "label_in_class_set", gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=classes)),
        ("warning", "has_transcript", gxe.ExpectColumnValuesToNotBeNull(
            column="transcript", row_condition=labelled)),
        ("warning", "has_transcript", gxe.ExpectColumnValueLengthsToBeBetween(
            column="transcript", min_value=1, row_condition=labelled)),
        ("warning", "has_wav", gxe.ExpectColumnValuesToNotBeNull(column="wav_path")),
        ("warning", "duration_bounds", gxe.ExpectColumnValuesToBeBetween(
            column="duration_s", min_value=cfg.min_duration_s, max_value=cfg.max_duration_s)),
        ("warning", "sample_rate", gxe.ExpectColumnValuesToBeInSet(
            column="sample_rate", value_set=[SAMPLE_RATE])),
        ("warning", "session_range", gxe.ExpectColumnValuesToBeBetween(
            column="session", min_value=1, max_value=5)),
        ("warning", "speaker_format", gxe.ExpectColumnValuesToMatchRegex(
            column="speaker", regex=SPEAKER_RE)),
        ("warning", "start_before_end", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end", column_B="start")),
    ]
    expectations += [("warning", "vad_range", gxe.ExpectColumnValuesToBeBetween(
        column=dimension, min_value=1, max_value=5))
        for dimension in ("valence", "arousal", "dominance")]
    if cfg.min_class_share > 0:
        # Of the labelled rows (GX leaves nulls out), at least min_class_share are `name`.
        expectations += [("error", f"class_share:{name}", gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=[name], mostly=cfg.min_class_share))
            for name in classes]
    return expectations


def run_suite(frame: pd.DataFrame, classes: list[str], cfg: ValidateConfig) -> dict:
    """Run the suite on the manifest; return GX's result as a JSON-ready dict."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("emoalign")
             .add_dataframe_asset("manifest")
             .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(_suite(gx, classes, cfg))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest", data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame},
                            result_format={"result_format": "COMPLETE"})
    return result.to_json_dict()


def _gx_findings(result: dict) -> tuple[list[str], dict[int, list[tuple]], list[dict]]:
    """(error messages, row problems, a row per expectation) from the GX result."""
    errors, rows, table = [], {}, []
    for item in result["results"]:
        config = item["expectation_config"]
        meta = config.get("meta") or {}
        kwargs = config["kwargs"]
        res = item.get("result") or {}
        failed_rows = [int(i) for i in res.get("unexpected_index_list") or []
                       if not isinstance(i, dict)]
        column = kwargs.get("column") or ", ".join(
            str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs)
        table.append({"expectation": config["type"], "column": column,
                      "check": meta.get("check"), "severity": meta.get("severity"),
                      "success": bool(item["success"]),
                      "unexpected_count": res.get("unexpected_count"),
                      "observed_value": res.get("observed_value"),
                      "exception": (item.get("exception_info") or {}).get("exception_message")})
        if item["success"]:
            continue
        check = meta.get("check", config["type"])
        if meta.get("severity") == "error":
            errors.append(_error_message(check, kwargs, res, failed_rows))
        else:
            reason = _warning_reason(check, kwargs)
            for row in failed_rows:
                rows.setdefault(row, []).append((check, reason))
    return errors, rows, table


def _error_message(check: str, kwargs: dict, res: dict, failed_rows: list[int]) -> str:
    if check == "schema":
        return f"manifest schema broken: {json.dumps(res.get('details', {}).get('mismatched'))}"
    if check == "not_empty":
        return "the manifest holds no rows"
    if check == "speaker_leakage":
        return (f"speaker leakage: {res.get('unexpected_count')} utterances lie in a session "
                "other than their speaker's, so a speaker would be in training and test folds")
    if check.startswith("class_share:"):
        name = check.split(":", 1)[1]
        share = 1 - (res.get("unexpected_percent") or 0) / 100
        if share == 0:
            return f"class '{name}' is missing from the labelled rows"
        return (f"class '{name}' holds {share:.1%} of the labelled rows, below the minimum "
                f"{kwargs.get('mostly'):.1%}")
    return f"{check} failed"


def _warning_reason(check: str, kwargs: dict) -> str:
    return {
        "unique_id": "duplicate utt_id",
        "label_in_class_set": "label outside the class set",
        "has_transcript": "labelled utterance without transcript",
        "has_wav": "no wav file",
        "duration_bounds": f"duration outside {kwargs.get('min_value')}..."
                           f"{kwargs.get('max_value')} s",
        "sample_rate": f"manifest sample rate is not {kwargs.get('value_set', ['?'])[0]} Hz",
        "session_range": "session outside 1..5",
        "speaker_format": "speaker is not like Ses01F",
        "start_before_end": "label block ends before it starts",
        "vad_range": f"{kwargs.get('column')} outside 1..5",
    }.get(check, check)


# ---- statistics and drift ---------------------------------------------------------------

QUANTILES = np.linspace(0, 1, 101)


def corpus_stats(manifest: pd.DataFrame) -> dict:
    """What a later corpus is compared with: classes, durations, speakers, vocabulary."""
    labelled = manifest[manifest["label"].notna()]
    tokens = [t for text in labelled["transcript"] for t in tokenize(text)]
    vocabulary = pd.Series(tokens, dtype=object).value_counts()
    durations = labelled["duration_s"].dropna().to_numpy()
    return {
        "n_rows": int(len(manifest)),
        "n_labelled": int(len(labelled)),
        "class_shares": {k: float(v) for k, v in
                         labelled["label"].value_counts(normalize=True).sort_index().items()},
        "duration_quantiles": np.quantile(durations, QUANTILES).round(4).tolist()
        if len(durations) else [],
        "duration_mean": float(durations.mean()) if len(durations) else None,
        "speaker_shares": {k: float(v) for k, v in
                           labelled["speaker"].value_counts(normalize=True).sort_index().items()},
        "n_tokens": len(tokens),
        "vocabulary": {str(k): int(v) for k, v in vocabulary.items()},
    }


def _tvd(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def _ks_from_quantiles(qa: list[float], qb: list[float]) -> float:
    if not qa or not qb:
        return 1.0
    grid = np.union1d(qa, qb)
    cdf_a = np.interp(grid, qa, QUANTILES, left=0.0, right=1.0)
    cdf_b = np.interp(grid, qb, QUANTILES, left=0.0, right=1.0)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def drift(current: dict, reference: dict, cfg: DriftConfig) -> list[dict]:
    """Distances between this corpus and the reference, each judged ok / warn / fail."""
    vocabulary = reference.get("vocabulary", {})
    tokens = current.get("vocabulary", {})
    n_tokens = sum(tokens.values())
    oov = sum(n for t, n in tokens.items() if t not in vocabulary) / n_tokens if n_tokens else 0
    measured = {
        "class_share": _tvd(current["class_shares"], reference["class_shares"]),
        "duration": _ks_from_quantiles(current["duration_quantiles"],
                                       reference["duration_quantiles"]),
        "speaker": _tvd(current["speaker_shares"], reference["speaker_shares"]),
        "oov": oov,
    }
    rows = []
    for metric, value in measured.items():
        warn, fail = getattr(cfg, f"{metric}_warn"), getattr(cfg, f"{metric}_fail")
        status = "fail" if value > fail else "warn" if value > warn else "ok"
        rows.append({"metric": metric, "value": round(value, 4), "warn": warn, "fail": fail,
                     "status": status})
    return rows


# ---- the step ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DriftReference:
    """What the corpus is compared with: a stats.json (another run's Validated.STATS), and
    what it is; or no file, and why there is no drift check. `unavailable` says why a drift
    check that was asked for (against the champion) could not be made; None when it was made,
    or when none was asked for or possible (validate.drift_reference: none, no champion yet).
    The report carries it as `drift_unavailable`, and the gate does not promote a version
    from such a run automatically."""

    stats: Path | None
    label: str
    unavailable: str | None = None

    @classmethod
    def named(cls, setting: str) -> "DriftReference":
        """The reference validate.drift_reference names, as far as this step can see: a
        file, or none. The champion's statistics are the registry's to find: the pipeline
        resolves the champion when a run starts and passes them (kfp_components.validate);
        `setting` may then be why there is none: no champion yet (Validated.NO_CHAMPION),
        or any other `no drift check: <why>` (Validated.NO_CHECK), a check that was asked
        for and could not be made."""
        if setting == "none":
            return cls(None, "no drift check (validate.drift_reference is none)")
        if setting == "champion":
            return cls(None, "no drift check (the champion is looked up by the pipeline, "
                             "not by this step alone)")
        if setting == Validated.NO_CHAMPION:
            return cls(None, setting)
        if setting.startswith(Validated.NO_CHECK):
            return cls(None, setting, setting[len(Validated.NO_CHECK):])
        return cls(Path(setting), setting)


def run(manifest_path: Path, out_dir: Path, classes: list[str], config: ValidateConfig,
        reference: DriftReference | None = None) -> ValidationResult:
    """Check the manifest and its audio; write the kept rows, quarantine and reports."""
    reference = reference or DriftReference.named(config.drift_reference)
    manifest_path, manifest, reference_path = _load(manifest_path, reference)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checked = _check(manifest, classes, config, out_dir / Validated.GX_RESULT)
    verdict = _decide(manifest_path, manifest, checked, classes, config, reference)
    _write(out_dir, verdict, checked.schema_ok)
    errors = verdict.report["errors"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValidationError(f"validation failed: {errors[0]}{more}; report: "
                              f"{out_dir / Validated.HTML}")
    return ValidationResult(True, verdict.kept, verdict.quarantine, verdict.report, out_dir)


@dataclass
class _Checked:
    """What the suite and the audio checks found, before anything is judged."""

    errors: list[str]                   # error-level expectations that failed
    problems: dict[int, list[tuple]]    # (check, reason) per manifest row, GX's and audio's
    expectations: list[dict]            # a row per expectation, for the report
    schema_ok: bool
    audio: dict                         # wav files read, and how many had problems


@dataclass
class _Verdict:
    """The kept rows, the quarantine, and the report that judges them."""

    kept: pd.DataFrame
    quarantine: pd.DataFrame
    stats: dict
    report: dict


def _load(manifest_path: Path, reference: DriftReference
          ) -> tuple[Path, pd.DataFrame, Path | None]:
    """The manifest file, its rows, and the reference statistics file (None: no drift check).
    Input that cannot be used stops the step before it writes anything."""
    manifest_path = outputs.manifest_file(manifest_path)
    try:
        manifest = outputs.read_manifest(manifest_path)
    except Exception as e:
        raise UserError(f"cannot read manifest {manifest_path}: {e}") from None
    reference_path = reference.stats
    if reference_path is not None and not reference_path.is_file():
        raise UserError(f"reference statistics not found: {reference_path}")
    return manifest_path, manifest.reset_index(drop=True), reference_path


def _check(manifest: pd.DataFrame, classes: list[str], config: ValidateConfig,
           gx_result_path: Path) -> _Checked:
    """Run the suite (its result is written to gx_result_path) and, where the schema holds,
    read every wav."""
    frame = manifest.copy()
    # The session a speaker belongs to, read from the id (Ses03F -> 3); the folder gives
    # `session`. They differ when a speaker would leak across cross-validation folds.
    frame["speaker_session"] = pd.to_numeric(frame.get("speaker", pd.Series(dtype=str))
                                             .astype(str).str[4], errors="coerce")
    gx_result = run_suite(frame, classes, config)
    gx_result_path.write_text(json.dumps(gx_result, indent=1, default=str))
    errors, problems, expectation_rows = _gx_findings(gx_result)
    schema_ok = not any(e.startswith("manifest schema broken") for e in errors)

    audio_problems = check_audio(manifest, config) if schema_ok else {}
    for row, found in audio_problems.items():
        problems.setdefault(row, []).extend(found)
    audio = {"checked": int(manifest["wav_path"].notna().sum()) if schema_ok else 0,
             "with_problems": len(audio_problems)}
    return _Checked(errors, problems, expectation_rows, schema_ok, audio)


def _decide(manifest_path: Path, manifest: pd.DataFrame, checked: _Checked,
            classes: list[str], config: ValidateConfig, reference: DriftReference) -> _Verdict:
    """Set the rows with problems aside, then judge the corpus that is left."""
    quarantine = _quarantine_table(manifest, checked.problems)
    kept = manifest.drop(index=list(checked.problems)).reset_index(drop=True)
    counts = _counts(manifest, kept, quarantine)
    errors, warnings = list(checked.errors), []
    if counts["quarantined"]:
        warnings.append(f"{counts['quarantined']} utterances quarantined")
    if checked.schema_ok:
        errors += _post_quarantine_errors(manifest, kept, classes, counts, config)
    if config.strict and counts["quarantined"]:
        errors.append(f"strict: {counts['quarantined']} utterances failed warning-level checks")

    ingest_findings = _ingest_findings(Ingested.at(manifest_path))
    if ingest_findings:
        # Utterances ingest could not make rows of (a broken label line, a wav or transcript
        # without label) are named in its report; carry the count here so nobody misses them.
        summary = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in ingest_findings.items())
        (errors if config.strict else warnings).append(f"ingest found: {summary}")

    stats = corpus_stats(kept) if checked.schema_ok else {}
    drift_rows = None
    if reference.stats is not None and checked.schema_ok:
        drift_rows = drift(stats, json.loads(reference.stats.read_text()), config.drift)
        _judge_drift(drift_rows, reference.label, config.strict, errors, warnings)

    report = {
        "passed": not errors,
        "errors": errors,
        "warnings": warnings,
        "counts": counts,
        "quarantine_by_check": quarantine["checks"].str.split(";").explode()
        .value_counts().sort_index().to_dict() if len(quarantine) else {},
        "ingest_findings": ingest_findings,
        "audio": checked.audio,
        "expectations": checked.expectations,
        "drift": drift_rows,
        "reference_stats": str(reference.stats) if reference.stats else None,
        "drift_reference": reference.label,
        # Why the drift check asked for could not be made (None: made, or none asked for).
        "drift_unavailable": reference.unavailable,
        "strict": config.strict,
        "manifest": str(manifest_path),
    }
    return _Verdict(kept, quarantine, stats, report)


def _judge_drift(drift_rows: list[dict], against: str, strict: bool, errors: list[str],
                 warnings: list[str]) -> None:
    """Add each drifted metric to the errors (fail, or warn when strict) or the warnings."""
    for d in drift_rows:
        message = (f"drift in {d['metric']}: {d['value']:.3f} against {against} "
                   f"(warn above {d['warn']}, fail above {d['fail']})")
        if d["status"] == "fail" or (d["status"] == "warn" and strict):
            errors.append(message)
        elif d["status"] == "warn":
            warnings.append(message)


def _write(out_dir: Path, verdict: _Verdict, schema_ok: bool) -> None:
    if schema_ok:  # a manifest of the wrong shape is not passed on in any form
        outputs.write_manifest(verdict.kept, out_dir / Validated.MANIFEST)
    verdict.quarantine.to_csv(out_dir / Validated.QUARANTINE, index=False)
    (out_dir / Validated.STATS).write_text(json.dumps(verdict.stats, indent=1) + "\n")
    (out_dir / Validated.REPORT).write_text(json.dumps(verdict.report, indent=1, default=str)
                                            + "\n")
    (out_dir / Validated.HTML).write_text(render_html(verdict.report, verdict.quarantine))


def _ingest_findings(ingested: Ingested) -> dict[str, int]:
    """Counts of ingest's findings that no manifest row carries."""
    if not ingested.report_path.is_file():
        return {}
    findings = ingested.report().get("findings", {})
    keys = ("unparseable_lines", "bad_utterance_ids", "transcripts_without_label",
            "wavs_without_label", "unknown_label_codes", "misplaced_utterances")
    return {k: len(findings[k]) for k in keys if findings.get(k)}


def _quarantine_table(manifest: pd.DataFrame, problems: dict[int, list[tuple]]) -> pd.DataFrame:
    rows = []
    for row in sorted(problems):
        found = list(dict.fromkeys(problems[row]))  # the same check twice reads once
        rows.append({"row": row, "utt_id": manifest.at[row, "utt_id"],
                     "label_raw": manifest.at[row, "label_raw"],
                     "label": manifest.at[row, "label"],
                     "checks": ";".join(dict.fromkeys(c for c, _ in found)),
                     "reasons": "; ".join(r for _, r in found)})
    return pd.DataFrame(rows, columns=["row", "utt_id", "label_raw", "label", "checks",
                                       "reasons"])


def _counts(manifest: pd.DataFrame, kept: pd.DataFrame, quarantine: pd.DataFrame) -> dict:
    labelled = int(manifest["label"].notna().sum()) if "label" in manifest else 0
    q_labelled = int(quarantine["label"].notna().sum())
    counts = {"manifest_rows": len(manifest), "kept": len(kept),
              "quarantined": len(quarantine), "labelled": labelled,
              "labelled_kept": labelled - q_labelled, "labelled_quarantined": q_labelled}
    # Every utterance is accounted for: nothing is dropped without a reason.
    assert counts["manifest_rows"] == counts["kept"] + counts["quarantined"]
    return counts


def _post_quarantine_errors(manifest, kept, classes, counts, cfg: ValidateConfig) -> list[str]:
    errors = []
    if counts["labelled"] and counts["labelled_quarantined"] / counts["labelled"] > (
            cfg.max_quarantined_share):
        errors.append(f"too many bad files: {counts['labelled_quarantined']} of "
                      f"{counts['labelled']} labelled utterances quarantined (more than "
                      f"{cfg.max_quarantined_share:.0%})")
    labelled_kept = kept[kept["label"].notna()]
    for name in classes:
        before = int((manifest["label"] == name).sum())
        after = int((labelled_kept["label"] == name).sum())
        if before and after < cfg.min_class_share * max(1, len(labelled_kept)):
            errors.append(f"class '{name}' falls to {after} utterances after quarantine")
    return errors


# ---- the HTML report --------------------------------------------------------------------

def render_html(report: dict, quarantine: pd.DataFrame) -> str:
    """The report as one page: verdict, findings, expectations, audio, drift, quarantine."""
    parts = _html_summary(report) + _html_expectations(report["expectations"])
    audio = report["audio"]
    parts.append(f"<h2>Audio checks</h2><p>{audio['checked']} wav files read, "
                 f"{audio['with_problems']} with problems.</p>")
    if report["drift"]:
        parts += _html_drift(report["drift"], report.get("drift_reference")
                             or report["reference_stats"])
    elif report.get("drift_reference"):
        note = f"; {NOT_PROMOTED}" if report.get("drift_unavailable") else ""
        parts.append(f"<h2>Drift</h2><p>{html.escape(report['drift_reference'] + note)}</p>")
    parts += _html_quarantine(quarantine)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_summary(report: dict) -> list[str]:
    e = html.escape
    verdict = "PASSED" if report["passed"] else "FAILED"
    colour = "#1a7f37" if report["passed"] else "#cf222e"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>emoalign validation</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:.3em .6em;text-align:left;vertical-align:top}.ok{color:#1a7f37}"
        ".bad{color:#cf222e;font-weight:bold}.warn{color:#9a6700}</style></head><body>",
        f"<h1>Validation <span style='color:{colour}'>{verdict}</span></h1>",
        f"<p>Manifest: <code>{e(report['manifest'])}</code></p>",
    ]
    for title, items, css in (("Errors", report["errors"], "bad"),
                              ("Warnings", report["warnings"], "warn")):
        if items:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(
                f"<li class='{css}'>{e(x)}</li>" for x in items) + "</ul>")
    parts.append("<h2>Counts</h2><table>" + "".join(
        f"<tr><th>{e(k.replace('_', ' '))}</th><td>{v}</td></tr>"
        for k, v in report["counts"].items()) + "</table>")
    return parts


def _html_expectations(expectations: list[dict]) -> list[str]:
    e = html.escape
    parts = ["<h2>Expectations (Great Expectations)</h2><table><tr><th>check</th>"
             "<th>expectation</th><th>column</th><th>severity</th><th>outcome</th>"
             "<th>failing rows</th></tr>"]
    for x in expectations:
        outcome = "<span class='ok'>pass</span>" if x["success"] else (
            "<span class='bad'>fail</span>")
        detail = x["unexpected_count"] if x["unexpected_count"] is not None else (
            e(str(x["exception"] or x["observed_value"] or "")))
        parts.append(f"<tr><td>{e(str(x['check']))}</td><td>{e(x['expectation'])}</td>"
                     f"<td>{e(x['column'] or '')}</td><td>{e(str(x['severity']))}</td>"
                     f"<td>{outcome}</td><td>{detail}</td></tr>")
    return parts + ["</table>"]


def _html_drift(drift_rows: list[dict], reference_stats: str | None) -> list[str]:
    e = html.escape
    parts = ["<h2>Drift</h2><p>Against "
             f"{e(reference_stats)}</p><table><tr><th>metric</th>"
             "<th>value</th><th>warn above</th><th>fail above</th><th>status</th></tr>"]
    for d in drift_rows:
        css = {"ok": "ok", "warn": "warn", "fail": "bad"}[d["status"]]
        parts.append(f"<tr><td>{e(d['metric'])}</td><td>{d['value']}</td><td>{d['warn']}"
                     f"</td><td>{d['fail']}</td><td class='{css}'>{d['status']}</td></tr>")
    return parts + ["</table>"]


def _html_quarantine(quarantine: pd.DataFrame) -> list[str]:
    e = html.escape
    parts = [f"<h2>Quarantine ({len(quarantine)})</h2>"]
    if len(quarantine):
        parts.append("<table><tr><th>utt_id</th><th>label</th><th>reasons</th></tr>")
        for q in quarantine.itertuples():
            label = q.label if isinstance(q.label, str) else f"({q.label_raw})"
            parts.append(f"<tr><td>{e(str(q.utt_id))}</td><td>{e(str(label))}</td>"
                         f"<td>{e(q.reasons)}</td></tr>")
        parts.append("</table>")
    return parts


def summary_lines(report: dict) -> list[str]:
    c = report["counts"]
    lines = [f"validation {'passed' if report['passed'] else 'FAILED'}: {c['manifest_rows']} "
             f"rows = {c['kept']} kept + {c['quarantined']} quarantined "
             f"({c['labelled_quarantined']} of {c['labelled']} labelled)"]
    for check, n in report["quarantine_by_check"].items():
        lines.append(f"  quarantined by {check}: {n}")
    lines += [f"  warning: {w}" for w in report["warnings"] if "quarantined" not in w]
    if report.get("ingest_findings"):
        lines.append("  (ingest_report.json beside the manifest names each of them)")
    lines += [f"  error: {x}" for x in report["errors"]]
    lines.append("  " + drift_line(report))
    return lines


def drift_line(report: dict) -> str:
    """The drift in one line: each distance against the reference, or why none was
    measured."""
    against = report.get("drift_reference") or report.get("reference_stats") or "nothing"
    if report.get("drift_unavailable"):
        return f"drift: {against}; {NOT_PROMOTED}"
    if not report.get("drift"):
        return f"drift: {against}" if against.startswith("no drift check") else \
            f"drift: not measured against {against}"
    return f"drift against {against}: " + ", ".join(
        f"{d['metric']} {d['value']:.3f} ({d['status']})" for d in report["drift"])
