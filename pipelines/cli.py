"""The `emoalign` command line. Each subcommand calls the same `run(...)` the pipeline calls."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from components.config import SampleCorpusConfig
from components.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT / "data"
DEFAULT_COMPILED = PROJECT_ROOT / "pipelines" / "emoalign_pipeline.yaml"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML file of config keys (see --help of run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set ingest.merge_excited=false")


def _load_config(args):
    from components.config import load_config

    return load_config(args.config, args.overrides)


# ---- sample-corpus ----------------------------------------------------------------------

def cmd_sample_corpus(args) -> int:
    from components import sample_corpus

    out = Path(args.out_dir)
    if args.utterances < 11:
        raise UserError(f"--utterances must be at least 11 (one per IEMOCAP code), "
                        f"got {args.utterances}")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise UserError(f"{out} is not empty; pass --force to replace a sample corpus there")
        if not (out / sample_corpus.TRUTH_FILENAME).is_file():
            raise UserError(f"{out} is not a generated sample corpus; refusing to delete it")
        shutil.rmtree(out)
    truth = sample_corpus.generate(out, args.utterances, args.seed, workers=args.workers,
                                   wdseg=not args.no_wdseg)
    hours = truth["total_audio_seconds"] / 3600
    print(f"wrote {args.utterances} utterances ({hours:.2f} h of audio, seed {args.seed}) "
          f"to {out}")
    print("codes: " + ", ".join(f"{k} {v}" for k, v in truth["counts"]["code"].items()))
    return 0


# ---- ingest -----------------------------------------------------------------------------

def cmd_ingest(args) -> int:
    from components import ingest

    config = _load_config(args)
    result = ingest.run(Path(args.corpus), Path(args.out), config.ingest)
    for line in ingest.summary_lines(result.report):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    print(f"manifest: {result.manifest_path}\nreport:   {result.report_path}")
    return 0


# ---- validate ---------------------------------------------------------------------------

def cmd_validate(args) -> int:
    from components import validate

    config = _load_config(args)
    if args.strict:
        config.validate.strict = True
    out = Path(args.out)
    try:
        result = validate.run(Path(args.manifest), out, config.ingest.classes, config.validate,
                              reference_stats=args.reference)
    except validate.ValidationError:
        report_path = out / validate.REPORT_FILENAME
        if report_path.is_file():
            for line in validate.summary_lines(json.loads(report_path.read_text())):
                print(line)
        raise
    for line in validate.summary_lines(result.report):
        print(line)
    print(f"kept:       {out / validate.MANIFEST_FILENAME}\n"
          f"quarantine: {out / validate.QUARANTINE_FILENAME}\n"
          f"report:     {out / validate.HTML_FILENAME}")
    return 0


# ---- features ---------------------------------------------------------------------------

def cmd_features(args) -> int:
    from components import features

    config = _load_config(args)
    result = features.run(Path(args.manifest), Path(args.out), config.features)
    print(result.message)
    print(f"{result.n_utterances} utterances, {result.n_frames:,} frames of "
          f"{features.spec_of(config.features).dim} values ({config.features.dtype})")
    return 0


# ---- train / evaluate -------------------------------------------------------------------

def cmd_train(args) -> int:
    from components import train

    config = _load_config(args)
    summary = train.run(Path(args.store), Path(args.manifest), Path(args.out), config,
                        resume=args.resume)
    for fold in summary["folds"]:
        print(f"{fold['fold']}: best validation UA {fold['best_val_ua']:.3f} at epoch "
              f"{fold['best_epoch']} ({fold['n_train']} train, {fold['n_val']} validation, "
              f"{fold['n_test']} test utterances)")
    print(f"trained {summary['model_kind']} ({summary['protocol']}) on {summary['device']} in "
          f"{summary['seconds']:.1f} s; models under {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from components import evaluate

    config = _load_config(args)
    metrics = evaluate.run(Path(args.model), Path(args.store), Path(args.manifest),
                           Path(args.out), config)
    for line in evaluate.report_lines(metrics):
        print(line)
    print(f"metrics, predictions and plots under {args.out}")
    return 0


# ---- run --------------------------------------------------------------------------------

def ensure_default_corpus(config) -> Path:
    """data/ holds the DVC-tracked sample corpus; regenerate it (same bytes) when absent."""
    from components import iemocap, sample_corpus

    release = DEFAULT_DATA / iemocap.RELEASE_DIRNAME
    if not release.exists() or not any(release.iterdir()):
        print(f"{release} is empty: generating the default sample corpus "
              f"({config.sample_corpus.utterances} utterances, seed {config.sample_corpus.seed})")
        sample_corpus.generate(release, config.sample_corpus.utterances,
                               config.sample_corpus.seed, workers=sample_corpus.default_workers())
    return DEFAULT_DATA


def resolve_data_hash(corpus: Path) -> tuple[str, str]:
    """(hash, where it came from). The default corpus is checked against data.dvc."""
    from components import iemocap, lineage

    corpus = corpus.resolve()
    if corpus == DEFAULT_DATA.resolve():
        actual = lineage.corpus_hash(DEFAULT_DATA)
        recorded = lineage.dvc_pointer_hash(PROJECT_ROOT / "data.dvc")
        if recorded and actual != recorded:
            return actual, (f"data/ differs from data.dvc ({recorded}); "
                            "run `dvc add data` to record this version")
        return actual, "data/ matches data.dvc"
    return lineage.corpus_hash(iemocap.find_release_root(corpus)), "hash of the corpus read"


def cmd_run(args) -> int:
    from components import lineage

    config = _load_config(args)
    if not config.features.cache_dir:
        # Stores outlive a run, so an unchanged corpus is not extracted again.
        config.features.cache_dir = str((Path(args.workdir) / "feature_cache").resolve())
    corpus = Path(args.corpus) if args.corpus else ensure_default_corpus(config)
    data_hash, provenance = resolve_data_hash(_checked_corpus(corpus))
    sha, dirty = lineage.git_sha(PROJECT_ROOT)
    print(f"corpus {corpus.resolve()}\ndata hash {data_hash} ({provenance})")
    print(f"code {sha or 'not a git checkout'}{' (uncommitted changes)' if dirty else ''}")
    summary = run_local_pipeline(corpus, config, data_hash, sha, dirty, Path(args.workdir),
                                 force=not getattr(args, "only_if_changed", False))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def _checked_corpus(corpus: Path) -> Path:
    from components import iemocap

    try:
        iemocap.find_release_root(corpus)
    except (FileNotFoundError, iemocap.FormatError) as e:
        raise UserError(str(e)) from None
    return corpus


def cmd_retrain(args) -> int:
    """What a schedule runs: the pipeline, which stops after its check step when the
    champion was trained from this data, code and config (unless --force)."""
    args.only_if_changed = not args.force
    return cmd_run(args)


def run_local_pipeline(corpus: Path, config, data_hash: str, sha: str | None, dirty: bool,
                       workdir: Path, force: bool = True) -> dict:
    """Run the DAG through kfp.local, print what happened, return the run summary."""
    from components import evaluate, ingest, registry, train, validate
    from pipelines.local import run_pipeline

    # Before any work: a tracking store that does not answer stops the run here.
    uri = registry.tracking_uri()
    registry.connect(uri, consequence="nothing was trained or registered")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the task subprocesses inherit it
    os.environ["EMOALIGN_GIT_DIRTY"] = str(dirty).lower()
    print(f"tracking {registry.redact(uri)}")
    run = run_pipeline(
        {"corpus": str(corpus.resolve()), "config_yaml": config.to_yaml(),
         "data_hash": data_hash, "git_sha": "" if dirty else (sha or ""), "force": force},
        workdir / "pipeline_root")
    (run.run_dir / "config.resolved.yaml").write_text(config.to_yaml())
    decision = json.loads((run.task_dir("check") / "executor_output.json").read_text())[
        "parameterValues"]["Output"]
    if decision != "retrain":
        print(f"\n{decision}; finished in {run.seconds:.1f} s")
        return {"retrained": False, "reason": decision, "data_hash": data_hash,
                "git_sha": sha, "pipeline_run": run.run_dir.name, "run_dir": str(run.run_dir),
                "model_name": config.registry.model_name}

    report = json.loads((run.task_dir("ingest") / "manifest" / ingest.REPORT_FILENAME)
                        .read_text())
    checks = json.loads((run.task_dir("validate") / "validated" / validate.REPORT_FILENAME)
                        .read_text())
    print()
    for line in ingest.summary_lines(report) + validate.summary_lines(checks):
        print(line)
    store = json.loads((run.task_dir("features") / "executor_output.json").read_text())
    store_meta = store["artifacts"]["store"]["artifacts"][0]["metadata"]
    print(f"features: {'reused' if store_meta['reused'] else 'built'} "
          f"{int(store_meta['utterances'])} utterances, {int(store_meta['frames']):,} frames "
          f"({store_meta['cache_entry']})")
    trained = json.loads((run.task_dir("train") / "model" / train.SUMMARY_FILENAME).read_text())
    metrics = json.loads((run.task_dir("evaluate") / "evaluation" / evaluate.METRICS_FILENAME)
                         .read_text())
    for line in evaluate.report_lines(metrics):
        print(line)
    tracked = json.loads((run.task_dir("track") / "run" / registry.RUN_FILENAME).read_text())
    registration_path = run.task_dir("register") / "registration" / \
        registry.REGISTRATION_FILENAME
    registration = json.loads(registration_path.read_text()) if \
        registration_path.is_file() else None
    print(f"\nMLflow run {tracked['run_id']} in experiment {config.registry.experiment!r}")
    if registration:
        print(f"registered {registration['model_name']} version "
              f"{registration['model_version']}: "
              f"{'promoted to champion' if registration['promoted'] else 'not promoted'} "
              f"({registration['reason']})")
        print(f"champion: version {registration['champion_version']}")
    else:
        verdict = json.loads((run.task_dir("evaluate") / "executor_output.json").read_text())
        print(f"not registered: {verdict['parameterValues']['Output']}")
    print(f"pipeline finished in {run.seconds:.1f} s; outputs under {run.run_dir}")
    return {
        "retrained": True, "wa": metrics["wa"], "ua": metrics["ua"],
        "per_class_recall": {c: v["recall"] for c, v in metrics["per_class"].items()},
        "confusion": metrics["confusion"],
        "model_name": config.registry.model_name,
        "model_version": registration["model_version"] if registration else None,
        "promoted": bool(registration and registration["promoted"]),
        "promotion_reason": registration["reason"] if registration else None,
        "champion_version": registration["champion_version"] if registration else None,
        "mlflow_run_id": tracked["run_id"], "tracking_uri": tracked["tracking_uri"],
        "data_hash": data_hash, "git_sha": sha, "git_dirty": dirty,
        "n_train": sum(f["n_train"] for f in trained["folds"]), "n_test": metrics["n_test"],
        "pipeline_run": run.run_dir.name, "run_dir": str(run.run_dir),
        "config_sha256": config.sha256(), "seed": config.seed,
        "n_label_blocks": report["n_label_blocks"], "n_labelled": report["n_labelled"],
        "label_counts": report["counts"]["label"],
        "n_kept": checks["counts"]["kept"], "n_quarantined": checks["counts"]["quarantined"],
        "model_kind": metrics["model_kind"], "protocol": metrics["protocol"],
    }


def cmd_reproduce(args) -> int:
    from pipelines.inprocess import run_steps

    config = _load_config(args)
    summary = run_steps(_checked_corpus(Path(args.corpus)), config, Path(args.out))
    m = summary["metrics"]
    print(f"WA {m['wa']:.6f}  UA {m['ua']:.6f}  ({summary['seconds']['total']:.1f} s); "
          f"outputs under {args.out}")
    return 0


# ---- registry ---------------------------------------------------------------------------

def cmd_register(args) -> int:
    """Track and register what a local pipeline run left (a run whose register step was
    skipped or failed)."""
    from components import registry
    from components.config import config_from_yaml

    run_dir = Path(args.pipeline_run)
    resolved = run_dir / "config.resolved.yaml"
    if not resolved.is_file():
        raise UserError(f"{run_dir} is not a finished local pipeline run "
                        "(no config.resolved.yaml)")
    config = config_from_yaml(resolved.read_text())
    outputs = registry.StepOutputs(run_dir / "ingest" / "manifest",
                                   run_dir / "validate" / "validated",
                                   run_dir / "train" / "model",
                                   run_dir / "evaluate" / "evaluation")
    tracked = run_dir / "track" / "run" / registry.RUN_FILENAME
    run_id = json.loads(tracked.read_text())["run_id"] if tracked.is_file() else None
    if run_id is None:
        from components import iemocap, lineage

        sha, dirty = lineage.git_sha(PROJECT_ROOT)
        corpus = args.corpus or str(DEFAULT_DATA)
        data_hash = lineage.corpus_hash(iemocap.find_release_root(Path(corpus)))
        run_id = registry.track(outputs, config, registry.Lineage(
            corpus, data_hash, sha or "", dirty, run_dir.name), run_dir / "track" / "run")[
            "run_id"]
    result = registry.register(outputs, config, run_id, run_dir / "register" / "registration")
    print(f"{result['model_name']} version {result['model_version']}: "
          f"{'promoted to champion' if result['promoted'] else 'not promoted'} "
          f"({result['reason']})")
    return 0


def _read_requests(args):
    import pandas as pd

    if args.batch:
        path = Path(args.batch)
        if not path.is_file():
            raise UserError(f"batch file not found: {path}")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
        missing = [c for c in ("wav", "transcript") if c not in frame.columns]
        if missing:
            raise UserError(f"{path} lacks column(s) {', '.join(missing)} "
                            "(expected wav, transcript and optionally speaker)")
        base = path.resolve().parent
        frame["wav"] = [w if Path(w).is_absolute() or w.startswith("UklGR") else
                        str(base / w) for w in frame["wav"]]
        return frame
    if not args.wav or args.text is None:
        raise UserError("give --wav and --text, or --batch CSV")
    if not Path(args.wav).is_file():
        raise UserError(f"wav file not found: {args.wav}")
    return pd.DataFrame({"wav": [str(Path(args.wav).resolve())], "transcript": [args.text]})


def cmd_predict(args) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException

    from components import registry
    from components.pyfunc import load

    requests = _read_requests(args)
    client = registry.connect()
    version = registry.resolve(client, args.model)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = load(f"models:/{version.name}/{version.version}")
    try:
        out = model.predict(requests)
    except MlflowException as e:
        raise UserError(f"cannot score the input: {e.message}") from None
    shown = ["(base64 WAV)" if w.startswith("UklGR") else Path(w).name for w in requests["wav"]]
    table = requests[["wav"]].assign(wav=shown).join(out)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {len(table)} predictions to {args.out}")
    print(f"{version.name} version {version.version}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_promote(args) -> int:
    from components import registry

    entry = registry.promote(args.name, str(args.version), args.reason)
    print(f"{args.name}: champion {entry['from'] or 'none'} -> {entry['to']} ({args.reason})")
    return 0


def cmd_rollback(args) -> int:
    from components import registry

    entry = registry.rollback(args.name, args.reason)
    print(f"{args.name}: champion {entry['from']} -> {entry['to']} (rollback: {args.reason})")
    return 0


def cmd_history(args) -> int:
    from components import registry

    client = registry.connect()
    entries = registry.read_history(client, args.name)
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print(f"{args.name}: no alias has moved yet")
    for e in entries:
        numbers = e.get("numbers") or {}
        figures = "".join(f" {k}={numbers[k]}" for k in ("ua", "champion_ua", "delta_ua")
                          if k in numbers)
        print(f"{e['time']}  {e['action']:<9} {e['alias']:<10} {e['from'] or '-':>4} -> "
              f"{e['to']:<4} by {e['who']}: {e['reason']}{figures}")
    return 0


def cmd_audit(args) -> int:
    from pipelines.audit import audit

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = audit(args.uri, Path(args.corpus) if args.corpus else None, workdir, args.keep)
    for line in result.lines:
        print(line)
    if result.failures:
        print(f"VERDICT: NOT REPRODUCED ({', '.join(result.failures)})")
        return 1
    print("VERDICT: REPRODUCED: same code, data and config rebuild the same model")
    return 0


# ---- cluster ----------------------------------------------------------------------------

def _cluster_params(args, force: bool) -> dict:
    from pipelines import submit

    return submit.arguments(_load_config(args), args.corpus, args.dvc_repo, args.dvc_rev,
                            force)


def cmd_submit(args) -> int:
    from pipelines import submit

    params = _cluster_params(args, force=True)
    run_id = submit.submit(args.host, params, args.experiment, args.run_name)
    print(f"submitted run {run_id} to {args.host} (experiment {args.experiment!r})")
    return 0


def cmd_schedule(args) -> int:
    from pipelines import submit

    submit.check_cron(args.cron)
    params = _cluster_params(args, force=False)
    recurring = submit.schedule(args.host, params, args.experiment, args.name, args.cron)
    print(f"recurring run {recurring} on {args.host}: '{args.cron}', at most one at a time, "
          "no catch-up; each run retrains only when data, code or config changed")
    return 0


# ---- compile ----------------------------------------------------------------------------

def cmd_compile(args) -> int:
    from kfp import compiler

    from pipelines.pipeline import emoalign_pipeline

    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    try:
        compiler.Compiler().compile(emoalign_pipeline, str(out))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    print(f"wrote {out}")
    return 0


# ---- entry point ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoalign",
        description="Speech + text emotion recognition on IEMOCAP as a Kubeflow pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command, helptext in (
            ("run", "run the whole pipeline locally through kfp.local"),
            ("retrain", "run the pipeline unless the champion was trained from this data, "
                        "code and config (what a schedule runs)")):
        p = sub.add_parser(command, help=helptext)
        p.add_argument("--corpus", help="IEMOCAP release root, or a folder holding "
                                        "IEMOCAP_full_release/ (default: data/, the "
                                        "DVC-tracked sample corpus, regenerated if absent)")
        _add_config_args(p)
        p.add_argument("--workdir", default="runs", help="where runs are kept (default: runs/)")
        p.add_argument("--summary-json", type=Path, help="also write the run summary as JSON")
        if command == "run":
            p.set_defaults(func=cmd_run)
        else:
            p.add_argument("--force", action="store_true",
                           help="train even when nothing changed")
            p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("sample-corpus", help="write a synthetic corpus in the IEMOCAP layout")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the release root to write")
    p.add_argument("--utterances", type=int, default=SampleCorpusConfig.utterances,
                   help="how many labelled utterances (default: %(default)s, as data/ holds)")
    p.add_argument("--seed", type=int, default=SampleCorpusConfig.seed)
    p.add_argument("--workers", type=int, default=1,
                   help="processes (the bytes written do not depend on it)")
    p.add_argument("--no-wdseg", action="store_true", help="skip ForcedAlignment .wdseg files")
    p.add_argument("--force", action="store_true",
                   help="replace an existing sample corpus in OUT_DIR")
    p.set_defaults(func=cmd_sample_corpus)

    p = sub.add_parser("ingest", help="IEMOCAP release -> manifest.parquet + ingest_report.json")
    p.add_argument("--corpus", required=True,
                   help="release root, or a folder holding IEMOCAP_full_release/")
    p.add_argument("--out", required=True, help="output folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("validate", help="Great Expectations + audio checks: the data gate")
    p.add_argument("--manifest", required=True,
                   help="manifest.parquet, or the folder ingest wrote it to")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--strict", action="store_true", help="treat every warning as an error")
    p.add_argument("--reference", type=Path,
                   help="stats.json of a reference corpus, for the drift check")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("features", help="MFCC feature store for the validated utterances")
    p.add_argument("--manifest", required=True,
                   help="the validated manifest.parquet, or the folder validate wrote it to")
    p.add_argument("--out", required=True, help="the store folder (reused when unchanged)")
    _add_config_args(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train", help="train the model (or a baseline) on each fold")
    p.add_argument("--store", required=True, help="the feature store folder")
    p.add_argument("--manifest", required=True, help="the validated manifest (or its folder)")
    p.add_argument("--out", required=True, help="where the fold models go")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last epoch checkpoint in --out")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="WA, UA, confusion, per-session results, plots")
    p.add_argument("--model", required=True, help="what train wrote (--out of train)")
    p.add_argument("--store", required=True, help="the feature store folder")
    p.add_argument("--manifest", required=True, help="the validated manifest (or its folder)")
    p.add_argument("--out", required=True, help="where metrics, predictions and plots go")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="run ingest..evaluate in this process, no KFP "
                                         "(what audit re-runs)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("register", help="track and register a finished local pipeline run")
    p.add_argument("--pipeline-run", required=True,
                   help="runs/pipeline_root/emoalign-<time> of `emoalign run`")
    p.add_argument("--corpus", help="the corpus it read, when it was not tracked yet")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("predict", help="label and class probabilities from a registered model")
    p.add_argument("--model", default="models:/emoalign@champion",
                   help="models:/NAME@ALIAS or models:/NAME/VERSION (default: %(default)s)")
    p.add_argument("--wav", help="a 16 kHz mono WAV file")
    p.add_argument("--text", help="its transcript")
    p.add_argument("--batch", help="CSV with columns wav, transcript (and optionally speaker)")
    p.add_argument("--out", help="also write the predictions as CSV")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("promote", help="make a version the champion by hand (recorded)")
    p.add_argument("--name", default="emoalign", help="registered model (default: %(default)s)")
    p.add_argument("--version", required=True, type=int)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="champion back to the version it replaced (recorded)")
    p.add_argument("--name", default="emoalign")
    p.add_argument("--reason", default="rollback")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("history", help="every alias move: who, when, from, to, why")
    p.add_argument("--name", default="emoalign")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("audit", help="prove where a model came from and rebuild it")
    p.add_argument("uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--corpus", help="the corpus to check and retrain on (default: data/ when "
                                    "data.dvc at the model's commit names it)")
    p.add_argument("--workdir", default="runs", help="scratch space (default: runs/)")
    p.add_argument("--keep", action="store_true", help="keep the re-run's files")
    p.set_defaults(func=cmd_audit)

    for command, helptext in (("submit", "run the pipeline once on a Kubeflow cluster"),
                              ("schedule", "retrain on a Kubeflow cluster on a cron schedule")):
        p = sub.add_parser(command, help=helptext)
        p.add_argument("--host", required=True, help="the KFP API endpoint, e.g. "
                                                     "http://localhost:8080 (port-forwarded)")
        p.add_argument("--corpus", help="corpus path in the pods (default: the corpus "
                                        "volume, /mnt/corpus/...)")
        p.add_argument("--dvc-repo", default="", help="git URL of a repository whose "
                                                      "data.dvc pins the corpus")
        p.add_argument("--dvc-rev", default="", help="its revision (branch, tag, commit)")
        p.add_argument("--experiment", default="emoalign")
        _add_config_args(p)
        if command == "submit":
            p.add_argument("--run-name")
            p.set_defaults(func=cmd_submit)
        else:
            p.add_argument("--cron", required=True,
                           help='six fields, seconds first: "0 0 3 * * 1" = Mondays 03:00')
            p.add_argument("--name", default="emoalign-retrain")
            p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("compile", help="compile the pipeline to KFP IR YAML for a cluster")
    p.add_argument("--out", default=str(DEFAULT_COMPILED))
    p.set_defaults(func=cmd_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"emoalign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emoalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
