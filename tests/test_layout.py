"""The package's layout: imports run one way (no module imports one that imports it back, even inside a function),
and the README's layout table names every module of the tree."""

import ast
import re

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "reward_trainer"


def module_name(path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path) -> set[str]:
    """The package modules that `path` imports, anywhere in it. Importing `a.b.c` runs `a.b` first."""
    name = module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([target] if target else []))
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    parts = name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # already running when `name` runs
    return (found & modules) - ancestors


def test_imports_run_one_way():
    graph = {module_name(p): package_imports(p) for p in PACKAGE.rglob("*.py")}
    state = {}

    def visit(name, path):
        state[name] = "open"
        for target in graph[name]:
            if target.startswith(name + "."):
                continue  # a package importing its own modules
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, name, target])}"
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_errors_imports_nothing_of_the_package():
    assert package_imports(PACKAGE / "errors.py") == set()


def test_readme_layout_table_names_every_module():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout") :].split("\n## ")[0]
    named = {n.removeprefix("reward_trainer/") for n in re.findall(r"`([\w/]+\.py|[\w/]+/)`", table)}
    modules = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "evaluate_metrics" not in str(p)
    }
    missing = {m for m in modules if m not in named and m.split("/")[-1] not in named}
    assert not missing, f"modules missing from the README's layout table: {sorted(missing)}"
    listed = {n for n in named if n.endswith(".py")}
    stale = {
        n for n in listed if not any((REPO_ROOT / d).rglob(n.split("/")[-1]) for d in ("reward_trainer", "scripts"))
    }
    assert not stale, f"the README's layout table names modules that do not exist: {sorted(stale)}"


def string_constants(path) -> list[str]:
    """Every string literal of a module, docstrings included, as Python reads it (escapes resolved)."""
    tree = ast.parse(path.read_text())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_hh_text_is_read_in_one_module():
    """HH-RLHF's turn markers are written, and a pattern of them (`Human|Assistant`) spelled, only in `chat.py`; the
    package and the scripts call its readers (`parse_implicit_conversation`, `hh_messages`, `split_implicit_prompt`).
    A docstring that shows a marker writes it escaped."""
    from reward_trainer.chat import HH_ROLES

    def reads_hh(text: str) -> bool:
        alternation = any(f"{a}|{b}" in text for a, b in (("Human", "Assistant"), ("Assistant", "Human")))
        return alternation or any(marker in text for marker in HH_ROLES)

    owner = PACKAGE / "chat.py"
    assert any(map(reads_hh, string_constants(owner)))
    for path in [*PACKAGE.rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]:
        found = [text for text in string_constants(path) if reads_hh(text)]
        assert path == owner or not found, f"{path.relative_to(REPO_ROOT)} reads HH text itself: {found[0][:60]!r}"


def test_objectives_are_named_only_in_their_table():
    """`loss.OBJECTIVES` is the one table of `--loss` choices: no other module of the package writes an objective's
    name as a string (configuration, data loading, the trainer and the model card read the table's fields)."""
    from reward_trainer.loss import OBJECTIVES

    assert {text for text in string_constants(PACKAGE / "loss.py")} >= set(OBJECTIVES)
    for path in PACKAGE.rglob("*.py"):
        if path.name != "loss.py":
            named = set(string_constants(path)) & set(OBJECTIVES)
            assert not named, f"{path.relative_to(REPO_ROOT)} names objectives {sorted(named)}: read loss.OBJECTIVES"


def test_models_are_loaded_in_one_place():
    """Only `loading.py` reads a model from disk or the Hub (`AutoModel*.from_pretrained`), so the safetensors check,
    GGUF and the device rule apply to every command."""
    callers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.startswith("AutoModel")
            ):
                callers.add(str(path.relative_to(PACKAGE)))
    assert callers == {"loading.py"}, f"models loaded outside loading.py: {sorted(callers - {'loading.py'})}"
