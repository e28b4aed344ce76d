"""KFP components: thin adapters from typed artifacts to `components.<step>.run`.

Each function body runs inside the component's own process (the local runner's subprocess
or the cluster pod), so it imports what it needs itself. The same definition runs in both
places because the base image is the project's image and KFP is not reinstalled into it.
"""

import os

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

PROJECT_VERSION = "0.1.0"
# The image the infra/ Dockerfile builds; override for a registry of your own.
IMAGE = os.environ.get("EMOALIGN_IMAGE", f"emoalign:{PROJECT_VERSION}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    corpus: str,
    config_yaml: str,
    data_hash: str,
    manifest: Output[Dataset],
    counts: Output[Metrics],
    summary: Output[Markdown],
):
    """IEMOCAP release -> manifest (a folder: manifest.parquet + ingest_report.json)."""
    from pathlib import Path

    from components import ingest as step
    from components.config import config_from_yaml

    config = config_from_yaml(config_yaml)
    result = step.run(Path(corpus), Path(manifest.path), config.ingest)
    report = result.report
    manifest.metadata.update(data_hash=data_hash, rows=report["n_label_blocks"],
                             labelled=report["n_labelled"])
    counts.log_metric("label_blocks", report["n_label_blocks"])
    counts.log_metric("labelled", report["n_labelled"])
    counts.log_metric("problems", report["problem_count"])
    for label, n in report["counts"]["label"].items():
        counts.log_metric(f"label_{label}", n)
    lines = step.summary_lines(report)
    Path(summary.path).write_text("# Ingest\n\n```\n" + "\n".join(lines) + "\n```\n")
