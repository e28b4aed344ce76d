"""The shape of the code, held: steps are siblings that meet only through the output contract,
`model/` knows nothing of the pipeline, functions stay short enough to read, and the
defaults live in one file identical to the typed config."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from components.config import DEFAULTS_FILE, Config, defaults_yaml, load_config
from components.outputs import STEP_OUTPUTS
from model.spec import KINDS

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
    """model/ is what a registered version ships as code: it imports none of the pipeline's
    packages, and MLflow only in the wrapper that packages it (pyfunc.py)."""
    for path in sorted((ROOT / "model").glob("*.py")):
        pipeline = ("components", "pipelines", "corpora", "kfp", "dvc")
        foreign = {m for m in imported_modules(path)
                   if m.split(".")[0] in pipeline + (() if path.name == "pyfunc.py" else
                                                     ("mlflow",))}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_no_step_imports_the_corpus_generators():
    """corpora/ makes corpora; the pipeline reads any IEMOCAP release alike."""
    for folder in ("components", "pipelines", "model"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if folder == "pipelines" and path.name in ("cli.py", "local.py"):
                continue  # `emoalign sample-corpus`, and data/ regenerated before a run
            reached = {m for m in imported_modules(path) if m.split(".")[0] == "corpora"}
            assert not reached, f"{path.relative_to(ROOT)} imports {sorted(reached)}"


def test_every_package_says_what_it_holds():
    """Each package's docstring names its modules, and every module it names exists."""
    for package in ("components", "components/registry", "corpora", "model", "pipelines"):
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        assert doc, f"{package}/__init__.py has no docstring"
        modules = {p.stem for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}
        named = {m for m in modules if re.search(rf"\b{m}(\.py)?\b", doc)}
        assert named == modules, f"{package}/__init__.py does not name {sorted(modules - named)}"


def _module_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at the top or inside functions."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for folder in ("components", "corpora", "pipelines", "model")
             for p in (ROOT / folder).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_modules(path):
            while imported and imported not in files:  # `from x import name`: module x
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_cycle_even_inside_functions():
    """An import inside a function hides a cycle from Python, not from a reader."""
    graph = _module_graph()

    def cycle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def walk(node: str) -> list[str] | None:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    if found := walk(nxt):
                        return found
                    path.pop()
            return None

        return walk(start)

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def test_no_model_kind_branch_outside_model():
    """Training, evaluation and the pipeline ask a model what it reads and does
    (model/network.py, EmotionModel); only model/ knows which kinds there are."""
    def names_a_kind(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr in ("kind", "model_kind")
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            return node.slice.value in ("kind", "model_kind")
        return False

    def is_a_kind_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in KINDS
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_a_kind_name(e) for e in node.elts)
        return False

    found = []
    for folder in ("components", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    sides = [node.left, *node.comparators]
                    if any(map(names_a_kind, sides)) and any(map(is_a_kind_name, sides)):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "model kind compared outside model/: " + ", ".join(found)


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
    from pipelines import kfp_components

    for task, folder in STEP_OUTPUTS.values():
        declared = getattr(kfp_components, task).component_spec.outputs or {}
        assert folder.KFP_OUTPUT in declared, \
            f"kfp_components.{task} has no output {folder.KFP_OUTPUT!r} (has {sorted(declared)})"


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


def test_the_model_code_is_decided_for_every_module():
    """Each module of components/ and model/ is on the path from data to model
    (lineage.MODEL_CODE: a change retrains) or not (NOT_MODEL_CODE), never both, each with
    its reason; components/registry/ is out as a whole."""
    from components.lineage import MODEL_CODE, NOT_MODEL_CODE

    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for folder in ("components", "model") for p in (ROOT / folder).rglob("*.py")}

    def listed(module: str, names) -> bool:
        return any(module == n or module.startswith(n + ".") and n != "components"
                   and n != "model" for n in names)

    assert not set(MODEL_CODE) & set(NOT_MODEL_CODE)
    assert not [m for m in modules if listed(m, MODEL_CODE) == listed(m, NOT_MODEL_CODE)]
    assert set(MODEL_CODE) <= modules and set(NOT_MODEL_CODE) <= modules
    assert all(why.strip() for why in [*MODEL_CODE.values(), *NOT_MODEL_CODE.values()])


def test_the_code_identity_is_the_files_wherever_they_are_installed(tmp_path):
    """The identity hashes the modules where Python imports them from: a copy of the
    packages without git (as an image installs them) has this checkout's identity, and a
    changed model file is named while a changed README, test or pipeline module is not."""
    from components.lineage import changed_code, code_identity

    here = code_identity()
    assert set(here.files) >= {"model/network.py", "components/train.py"}
    for package in ("components", "model", "pipelines"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "README.md").write_text("changed\n")
    (tmp_path / "pipelines" / "cli.py").write_text("# changed\n")

    def identity() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", "import json; from components.lineage import "
             "code_identity; print(json.dumps(code_identity().tags()))"],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
            capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    assert identity() == here.tags()
    with open(tmp_path / "model" / "network.py", "a") as f:
        f.write("# a changed model\n")
    assert changed_code(identity(), here) == ["model/network.py"]
