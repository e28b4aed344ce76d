"""The shape of the code, held: steps are siblings that meet only through the output contract,
`model/` knows nothing of the pipeline, functions stay short enough to read, and the
defaults live in one file identical to the typed config."""

import ast
import subprocess
import sys
from pathlib import Path

import yaml

from components.config import DEFAULTS_FILE, Config, defaults_yaml, load_config
from components.outputs import STEP_OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"fetch", "ingest", "validate", "features", "train", "evaluate", "registry"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def step_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT / "components")
    name = rel.parts[0].removesuffix(".py")
    return name if name in STEPS else None


def test_steps_import_the_contract_never_each_other():
    for path in sorted((ROOT / "components").rglob("*.py")):
        mine = step_of(path)
        if mine is None:
            continue
        others = {f"components.{s}" for s in STEPS - {mine}}
        reached = {m for m in imported_modules(path)
                   if any(m == o or m.startswith(o + ".") for o in others)}
        assert not reached, f"{path.relative_to(ROOT)} imports the step(s) {sorted(reached)}"


def test_model_package_knows_nothing_of_the_pipeline():
    for path in sorted((ROOT / "model").glob("*.py")):
        foreign = {m for m in imported_modules(path)
                   if m.split(".")[0] in ("components", "pipelines", "mlflow", "kfp", "dvc")}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_no_function_longer_than_a_reader_can_hold():
    long = []
    for folder in ("components", "pipelines", "model"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 60:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                    f"({lines} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)


def test_kfp_outputs_are_the_ones_the_contract_names():
    """kfp.local lays a task's output out as <task>/<output name>/: the reader of a finished
    run finds it only if the components declare the names outputs.py gives."""
    from pipelines import steps

    for task, folder in STEP_OUTPUTS.values():
        declared = getattr(steps, task).component_spec.outputs or {}
        assert folder.KFP_OUTPUT in declared, \
            f"steps.{task} has no output {folder.KFP_OUTPUT!r} (has {sorted(declared)})"


def test_default_yaml_is_generated_from_the_typed_config():
    """configs/default.yaml is `make config`'s output, byte for byte: a key is declared
    once, in components/config.py, and the file follows."""
    assert DEFAULTS_FILE.read_text() == defaults_yaml(), "run `make config`"
    on_disk = yaml.safe_load(DEFAULTS_FILE.read_text())
    typed = Config().to_dict()
    assert on_disk == typed

    def types(tree: dict) -> dict:
        return {k: types(v) if isinstance(v, dict) else type(v).__name__
                for k, v in tree.items()}

    # 1 == 1.0 in Python; a float key written as an integer would still slip past the above.
    assert types(on_disk) == types(typed)
    assert load_config(DEFAULTS_FILE).to_dict() == typed


def test_loading_a_config_does_not_import_torch():
    code = ("import sys; from components.config import load_config; load_config(); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"
