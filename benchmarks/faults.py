"""Fault injection: the faults a scheduled retraining job meets, injected for real.

    .venv/bin/python benchmarks/faults.py

1. Training killed with SIGKILL mid-epoch, then `emoalign train --resume`: the same weights
   and metrics as a run never stopped.
2. The MLflow server killed while the pipeline tracks and registers: a clear error naming
   the task; after a restart, a rerun succeeds and the registry holds no half-registered
   version that looks usable.
3. A corrupted feature store and a truncated checkpoint: detected, rebuilt, never loaded.
4. Two `emoalign run` at once against one registry: both finish, distinct versions,
   exactly one champion, a consistent history.

Runs on a generated 200-utterance corpus with a small model, in a few minutes on 2 cores.
Prints one PASS/FAIL line per check and exits non-zero when any fails.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from components import features, ingest, validate  # noqa: E402
from components.config import load_config  # noqa: E402
from corpora import sample_corpus  # noqa: E402

SMALL = ["train.epochs=6", "train.min_epochs=2", "model.hidden=16", "model.embed_dim=16",
         "model.attention_dim=16", "model.frame_pool=10", "train.threads=1",
         "registry.ua_floor=0.0", "registry.bootstrap_samples=200"]
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)


def emoalign(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          **kwargs)


def sets(overrides):
    return sum((["--set", o] for o in overrides), [])


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def kill_training_mid_epoch(work: Path, store: Path, validated: Path) -> None:
    base = ["train", "--store", store, "--manifest", validated, *sets(SMALL)]
    whole = emoalign(*base, "--out", work / "whole")
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *map(str, base), "--out",
                             str(work / "killed")], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stderr=subprocess.STDOUT, text=True)
    checkpoint = work / "killed" / "session5-seed0" / "checkpoint.pt"
    while proc.poll() is None:  # kill once epoch 2 is saved, inside epoch 3
        line = proc.stdout.readline()
        if "epoch  2:" in line and checkpoint.is_file():
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    resumed = emoalign(*base, "--out", work / "killed", "--resume")
    same = resumed.returncode == 0 and all(
        torch.equal(a, b) for a, b in zip(weights(work / "whole/session5-seed0/model.pt").values(),
                                          weights(work / "killed/session5-seed0/model.pt").values()))
    check("SIGKILL mid-epoch, then --resume: identical weights", same and proc.returncode == -9,
          f"killed after epoch {saved}, resumed: {'resumed after epoch' in resumed.stdout}")


def corrupted_store_and_checkpoint(work: Path, validated: Path) -> None:
    config = load_config(None, [f"features.cache_dir={work / 'cache'}"])
    first = features.run(validated, work / "s1", config.features)
    frames = first.store_dir / "frames.bin"
    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0xFF
    frames.write_bytes(bytes(data))
    again = features.run(validated, work / "s2", config.features)
    check("corrupted feature store is detected and rebuilt", not again.reused,
          again.message)
    base = ["train", "--store", work / "s2", "--manifest", validated, *sets(SMALL)]
    emoalign(*base, "--out", work / "t")
    checkpoint = work / "t" / "session5-seed0" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    resumed = emoalign(*base, "--out", work / "t", "--resume")
    check("truncated checkpoint is not loaded; the fold starts over",
          resumed.returncode == 0 and "cannot be read" in resumed.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    import requests

    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                             "--port", str(port), "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", str(artifacts), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for _ in range(120):
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def kill_mlflow_server_mid_run(work: Path, corpus: Path) -> None:
    from mlflow import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    db, artifacts = work / "server.db", work / "artifacts"
    server = start_server(db, artifacts, port)
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--corpus", corpus,
                            "--workdir", work / "runs", *sets(SMALL)], cwd=ROOT,
                           env={**os.environ, **env}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    for line in run.stdout:
        if "Executing task 'track'" in line:
            os.killpg(server.pid, signal.SIGKILL)
            break
    out, err = run.communicate(timeout=600)
    named = "task 'track' failed" in err or "task 'register' failed" in err
    check("MLflow server killed mid-run: one-line error naming the task",
          run.returncode == 2 and named and "Traceback" not in err, err.strip()[:160])
    server = start_server(db, artifacts, port)
    try:
        rerun = emoalign("run", "--corpus", corpus, "--workdir", work / "runs", *sets(SMALL),
                         "--summary-json", work / "rerun.json", env=env)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = client.search_model_versions("name='emoalign'")
        decided = [v for v in versions if v.tags.get("gate.decision") in
                   ("promoted", "rejected")]
        undecided = [v.version for v in versions if v.tags.get("gate.decision") not in
                     ("promoted", "rejected", "incomplete")]
        check("after a restart the rerun succeeds; no half-registered version",
              rerun.returncode == 0 and len(decided) == 1 and not undecided,
              f"{len(versions)} version(s), {len(decided)} decided, undecided {undecided}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)


def two_runs_at_once(work: Path, corpus: Path) -> None:
    from components import registry
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'together.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--corpus",
                               str(corpus), "--workdir", str(work / f"together{n}"),
                               *sets(SMALL + [f"seed={n}"])], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(v.version for v in client.search_model_versions("name='emoalign'"))
    moves = [e for e in registry.read_history(client, "emoalign") if e["alias"] == "champion"]
    chained = all(b["from"] == a["to"] for a, b in zip(moves, moves[1:]))
    champion = str(client.get_registered_model("emoalign").aliases.get("champion"))
    ok = all(p.returncode == 0 for p in procs) and len(versions) == 2 and chained and \
        moves[-1]["to"] == champion
    check("two `emoalign run` at once: both finish, distinct versions, one champion", ok,
          f"versions {versions}, champion {champion}, champion moves "
          f"{[(m['from'], m['to']) for m in moves]}"
          + ("" if ok else f"; stderr {[o[1][-200:] for o in outs]}"))


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        corpus = work / "IEMOCAP_full_release"
        sample_corpus.generate(corpus, 200, seed=7)
        config = load_config()
        ingest.run(corpus, work / "ingest")
        validate.run(work / "ingest", work / "validated", config.ingest.classes,
                     config.validate)
        features.run(work / "validated", work / "store", config.features)
        kill_training_mid_epoch(work, work / "store", work / "validated")
        corrupted_store_and_checkpoint(work, work / "validated")
        kill_mlflow_server_mid_run(work, corpus)
        two_runs_at_once(work, corpus)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} fault checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
