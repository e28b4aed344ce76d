"""The `emoalign` command line. Each subcommand calls the same `run(...)` the pipeline calls."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from components import PROJECT_ROOT
from components.environment import MIN_AGREEMENT
from components.config import SampleCorpusConfig
from components.errors import UserError

DEFAULT_COMPILED = PROJECT_ROOT / "pipelines" / "emoalign_pipeline.yaml"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML file of config keys (see --help of run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set ingest.merge_excited=false")


def _load_config(args):
    from components.config import load_config

    config = load_config(args.config, args.overrides)
    reference = config.validate.drift_reference
    if reference not in ("champion", "none") and not Path(reference).is_file():
        # Said before any work; a pipeline would only find it at its validate task.
        raise UserError(f"validate.drift_reference: stats file not found: {reference}")
    return config


# ---- sample-corpus ----------------------------------------------------------------------

def cmd_sample_corpus(args) -> int:
    from corpora import sample_corpus

    renderer, engine = None, None
    if args.voice == "tts":
        from corpora import tts_corpus

        renderer = tts_corpus.TtsRenderer()  # says how to install espeak-ng when it is missing
        engine = "espeak-ng"
    elif args.voice == "flite":
        from corpora import flite_corpus

        renderer = flite_corpus.FliteRenderer()  # says how to install flite when it is missing
        engine = "flite"
    out = Path(args.out_dir)
    truth = sample_corpus.write(out, args.utterances, args.seed, workers=args.workers,
                                wdseg=not args.no_wdseg, force=args.force, renderer=renderer,
                                stress=args.stress)
    hours = truth["total_audio_seconds"] / 3600
    voice = f", {engine} {renderer.version}" if renderer else ""
    voice += ", stressed words" if args.stress else ""
    print(f"wrote {args.utterances} utterances ({hours:.2f} h of audio, seed {args.seed}"
          f"{voice}) to {out}")
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
    config = _load_config(args)  # first: a bad setting is answered before GX loads
    from components import validate
    from components.outputs import Validated

    if args.strict:
        config.validate.strict = True
    out = Path(args.out)
    try:
        reference = validate.DriftReference.named(str(args.reference)) if args.reference \
            else None
        result = validate.run(Path(args.manifest), out, config.ingest.classes, config.validate,
                              reference)
    except validate.ValidationError:
        written = Validated(out)
        if (written.folder / written.REPORT).is_file():
            for line in validate.summary_lines(written.report()):
                print(line)
        raise
    for line in validate.summary_lines(result.report):
        print(line)
    print(f"kept:       {out / Validated.MANIFEST}\n"
          f"quarantine: {out / Validated.QUARANTINE}\n"
          f"report:     {out / Validated.HTML}")
    return 0


# ---- features ---------------------------------------------------------------------------

def cmd_features(args) -> int:
    config = _load_config(args)  # first: a bad setting is answered before torch loads
    from components import features

    result = features.run(Path(args.manifest), Path(args.out), config.features)
    print(result.message)
    print(f"{result.n_utterances} utterances, {result.n_frames:,} frames of "
          f"{config.features.dim} values ({config.features.dtype})")
    return 0


# ---- train / evaluate -------------------------------------------------------------------

def cmd_train(args) -> int:
    config = _load_config(args)  # first: a bad setting is answered before torch loads
    from components import member

    summary = member.train_all(Path(args.store), Path(args.manifest), Path(args.out), config,
                               resume=args.resume)
    for fold in summary["folds"]:
        kept = (f"best validation UA {fold['best_val_ua']:.3f} at epoch {fold['best_epoch']}"
                if fold["best_val_ua"] is not None
                else f"weights averaged up to epoch {fold['best_epoch']}")
        print(f"{fold['member']}: {kept} ({fold['n_train']} train, {fold['n_val']} "
              f"validation, {fold['n_test']} test utterances)")
    print(f"trained {summary['model_kind']} ({summary['protocol']}) on {summary['device']} in "
          f"{summary['seconds']:.1f} s; models under {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    config = _load_config(args)  # first: a bad setting is answered before torch loads
    from components import evaluate, reporting

    metrics = evaluate.run(Path(args.model), Path(args.store), Path(args.manifest),
                           Path(args.out), config)
    for line in reporting.report_lines(metrics):
        print(line)
    print(f"metrics, predictions and plots under {args.out}")
    return 0


# ---- run ------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from components import lineage
    from pipelines import local

    config = _load_config(args)
    if not config.features.cache_dir:
        # Stores outlive a run, so an unchanged corpus is not extracted again.
        config.features.cache_dir = str((Path(args.workdir) / "feature_cache").resolve())
    corpus = Path(args.corpus) if args.corpus else local.ensure_default_corpus(config)
    data_hash, provenance = lineage.data_hash(local.checked_corpus(corpus))
    sha, dirty = lineage.code_version()
    print(f"corpus {corpus.resolve()}\ndata hash {data_hash} ({provenance})")
    print(f"code {sha or 'not a git checkout'}{' (uncommitted changes)' if dirty else ''}")
    run_lineage = lineage.Lineage(str(corpus.resolve()), data_hash, sha, dirty)
    run = local.run_local_pipeline(config, run_lineage, Path(args.workdir),
                                   force=not getattr(args, "only_if_changed", False))
    summary, lines = local.run_report(run, config, run_lineage)
    for line in lines:
        print(line)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def cmd_retrain(args) -> int:
    """What a schedule runs: the pipeline, unless the champion was trained from this data,
    model code and model settings (and not --force). Locally that answer is the check step's own
    (components/check.py), asked before kfp.local starts: "nothing to retrain" starts no
    pipeline. On a cluster (`emoalign schedule`) the pipeline's check task gives it."""
    args.only_if_changed = not args.force
    return cmd_run(args)


def cmd_reproduce(args) -> int:
    from pipelines.inprocess import run_steps
    from pipelines.local import checked_corpus

    config = _load_config(args)
    summary = run_steps(checked_corpus(Path(args.corpus)), config, Path(args.out))
    m = summary["metrics"]
    print(f"WA {m['wa']:.6f}  UA {m['ua']:.6f}  ({summary['seconds']['total']:.1f} s); "
          f"outputs under {args.out}")
    return 0


# ---- registry ---------------------------------------------------------------------------

def cmd_register(args) -> int:
    """Track and register what a local pipeline run left (a run whose register step was
    skipped or failed)."""
    from pipelines.local import register_finished_run

    result = register_finished_run(Path(args.pipeline_run), args.corpus)
    print(f"{result['model_name']} version {result['model_version']}: "
          f"{'promoted to champion' if result['promoted'] else 'not promoted'} "
          f"({result['reason']})")
    return 0


def cmd_predict(args) -> int:
    from components import registry
    from components.registry.serving import read_requests
    from model.recognizer import NONE

    config = _load_config(args)
    requests = read_requests(args.batch, args.wav, args.text, args.speaker)
    version, table = registry.predict_registered(args.model, requests,
                                                 config.serving.recognizer)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {len(table)} predictions to {args.out}")
    print(f"{version.name} version {version.version}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if "transcript_source" in table:  # versions registered before recognition lack it
        for wav in table.loc[table["transcript_source"] == NONE, "wav"]:
            print(f"note: {wav}: no words given or recognised; predicted from the speech alone")
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
        if str(numbers.get("drift", "")).startswith("data drift"):
            figures += f"; {numbers['drift']}"
        print(f"{e['time']}  {e['action']:<9} {e['alias']:<10} {e['from'] or '-':>4} -> "
              f"{e['to']:<4} by {e['who']}: {e['reason']}{figures}")
    return 0


def cmd_card(args) -> int:
    from components import registry
    from components.registry import card

    client = registry.connect()
    print(card.read(client, registry.resolve(client, args.uri)), end="")
    return 0


def cmd_audit(args) -> int:
    from pipelines.audit import audit

    if not 0 <= args.min_agreement <= 1:
        raise UserError(f"--min-agreement must be in [0, 1], got {args.min_agreement}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = audit(args.uri, Path(args.corpus) if args.corpus else None, workdir, args.keep,
                   strict=args.strict, min_agreement=args.min_agreement)
    for line in result.lines:
        print(line)
    print(f"VERDICT: {result.verdict}")
    return 1 if result.failures else 0


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
          "no catch-up; each run retrains only when the data, the model code or a "
          "model setting changed")
    return 0


# ---- compile ----------------------------------------------------------------------------

def cmd_compile(args) -> int:
    from pipelines.submit import compile_pipeline

    parallelism = _load_config(args).train.parallelism or 0
    print(f"wrote {compile_pipeline(Path(args.out), parallelism)}"
          f" ({f'at most {parallelism}' if parallelism else 'no limit on the'} (fold, seed) "
          "tasks at once)")
    return 0


# ---- entry point ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoalign",
        description="Speech + text emotion recognition on IEMOCAP as a Kubeflow pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_step_commands(sub)
    _add_registry_commands(sub)
    _add_cluster_commands(sub)
    return parser


def _add_run_commands(sub) -> None:
    for command, helptext in (
            ("run", "run the whole pipeline locally through kfp.local"),
            ("retrain", "run the pipeline unless the champion was trained from this data, "
                        "model code and model settings (what a schedule runs)")):
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


# Each step's own subcommand: (help, required options with their help, handler).
STEP_COMMANDS = {
    "ingest": ("IEMOCAP release -> manifest.parquet + ingest_report.json", (
        ("--corpus", "release root, or a folder holding IEMOCAP_full_release/"),
        ("--out", "output folder"))),
    "validate": ("Great Expectations + audio checks: the data gate", (
        ("--manifest", "manifest.parquet, or the folder ingest wrote it to"),
        ("--out", "output folder"))),
    "features": ("MFCC feature store for the validated utterances", (
        ("--manifest", "the validated manifest.parquet, or the folder validate wrote it to"),
        ("--out", "the store folder (reused when unchanged)"))),
    "train": ("train the model (or a baseline) on each fold", (
        ("--store", "the feature store folder"),
        ("--manifest", "the validated manifest (or its folder)"),
        ("--out", "where the fold models go"))),
    "evaluate": ("WA, UA, confusion, per-session results, plots", (
        ("--model", "what train wrote (--out of train)"),
        ("--store", "the feature store folder"),
        ("--manifest", "the validated manifest (or its folder)"),
        ("--out", "where metrics, predictions and plots go"))),
}


def _add_step_commands(sub) -> None:
    p = sub.add_parser("sample-corpus", help="write a synthetic corpus in the IEMOCAP layout")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the release root to write")
    p.add_argument("--utterances", type=int, default=SampleCorpusConfig.utterances,
                   help="how many labelled utterances (default: %(default)s, as data/ holds)")
    p.add_argument("--seed", type=int, default=SampleCorpusConfig.seed)
    p.add_argument("--workers", type=int, default=1,
                   help="processes (the bytes written do not depend on it)")
    p.add_argument("--no-wdseg", action="store_true", help="skip ForcedAlignment .wdseg files")
    p.add_argument("--voice", choices=("builtin", "tts", "flite"), default="builtin",
                   help="who speaks: the built-in synthesiser (default), espeak-ng (tts; "
                        "needs `apt-get install espeak-ng`) or flite (needs `apt-get install "
                        "flite`); the plan, labels and transcriptions are the same")
    p.add_argument("--stress", action="store_true",
                   help="with --voice tts: each utterance names two emotions of different "
                        "classes, stresses one, and is labelled by the stressed one "
                        "(neu, hap, ang, sad in equal shares)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing sample corpus in OUT_DIR")
    p.set_defaults(func=cmd_sample_corpus)

    handlers = {"ingest": cmd_ingest, "validate": cmd_validate, "features": cmd_features,
                "train": cmd_train, "evaluate": cmd_evaluate}
    for command, (helptext, options) in STEP_COMMANDS.items():
        p = sub.add_parser(command, help=helptext)
        for flag, flag_help in options:
            p.add_argument(flag, required=True, help=flag_help)
        if command == "validate":
            p.add_argument("--strict", action="store_true",
                           help="treat every warning as an error")
            p.add_argument("--reference", type=Path,
                           help="stats.json of a reference corpus, for the drift check")
        if command == "train":
            p.add_argument("--resume", action="store_true",
                           help="continue from the last epoch checkpoint in --out")
        _add_config_args(p)
        p.set_defaults(func=handlers[command])

    p = sub.add_parser("reproduce", help="run ingest..evaluate in this process, no KFP "
                                         "(what audit re-runs)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_reproduce)


def _add_registry_commands(sub) -> None:
    p = sub.add_parser("register", help="track and register a finished local pipeline run")
    p.add_argument("--pipeline-run", required=True,
                   help="runs/pipeline_root/emoalign-<time> of `emoalign run`")
    p.add_argument("--corpus", help="the corpus it read, when it was not tracked yet")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("predict", help="label and class probabilities from a registered model")
    p.add_argument("--model", default="models:/emoalign@champion",
                   help="models:/NAME@ALIAS or models:/NAME/VERSION (default: %(default)s)")
    p.add_argument("--wav", help="a 16 kHz mono WAV file")
    p.add_argument("--text", help="its transcript (left out: recognised from the audio by "
                                  "serving.recognizer)")
    p.add_argument("--speaker", help="who speaks (the model normalises each speaker it "
                                     "knows with that speaker's own statistics)")
    p.add_argument("--batch", help="CSV with a column wav, optionally transcript (empty: "
                                   "recognised) and speaker")
    p.add_argument("--out", help="also write the predictions as CSV")
    _add_config_args(p)
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

    p = sub.add_parser("card", help="print a registered version's model card")
    p.add_argument("uri", nargs="?", default="models:/emoalign@champion",
                   help="models:/NAME@ALIAS or models:/NAME/VERSION (default: %(default)s)")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("audit", help="prove where a model came from and rebuild it")
    p.add_argument("uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--corpus", help="the corpus to check and retrain on (default: data/ when "
                                    "data.dvc at the model's commit names it)")
    p.add_argument("--workdir", default="runs", help="scratch space (default: runs/)")
    p.add_argument("--keep", action="store_true", help="keep the re-run's files")
    p.add_argument("--strict", action="store_true",
                   help="demand bit-identical weights and metrics whatever the environment")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="share of test utterances a re-run in another environment must "
                        "predict alike (default: %(default)s)")
    p.set_defaults(func=cmd_audit)


def _add_cluster_commands(sub) -> None:
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

    p = sub.add_parser("compile", help="compile the pipeline to KFP IR YAML for a cluster "
                       "(train.parallelism is fixed here)")
    p.add_argument("--out", default=str(DEFAULT_COMPILED))
    _add_config_args(p)
    p.set_defaults(func=cmd_compile)


def _restart_with_training_allocator() -> None:
    """`emoalign train | reproduce | audit` train in this process, and glibc's malloc is
    set up for training before a process starts (components/environment.py,
    TRAINING_TUNABLES): where the environment lacks the settings, the command starts itself
    again in this process's place (os.execve: the same pid, arguments and open files) with
    them added. Once: the new process finds them set. Nothing where the C library is not
    glibc, or the operator set their own (environment.training_allocator); nor where this
    process already started with them (forked from a warm server that did:
    environment.startup_environment); nor where there is no command line to run again (a
    script on stdin); nor when execve fails (training then runs as it is, slower)."""
    from components.environment import startup_environment, training_allocator

    added = training_allocator()
    if not added or not training_allocator(startup_environment()) or not sys.executable \
            or sys.argv[0] in ("", "-"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **added})
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = build_parser().parse_args(argv)
    # argv given: main was called from Python code, whose process is not ours to restart.
    if argv is None and args.func in (cmd_train, cmd_reproduce, cmd_audit):
        _restart_with_training_allocator()
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
