"""One hook layer, checked: no hook registration outside core/sites.py, no core/ import of a wing (read with `ast`
from the source tree), and the facilities the callers use instead: module sites (`module_in:PATH`/`module_out:PATH`),
the gradient tap, and `blocks_from` (the tail forward)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from probescope.core.sites import (
    Site,
    blocks_from,
    find_blocks,
    module_path,
    parse_site,
    read_sites,
    resolve_site,
    site_hooks,
    tap_grad,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src" / "probescope"
HOOK_LAYER = "core/sites.py"
REGISTRATIONS = {"register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
                 "register_backward_hook", "register_hook", "register_full_backward_pre_hook"}


def hook_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, method) of every call of a hook-registering method."""
    return [(n.lineno, n.func.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in REGISTRATIONS]


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module of `package` (relative imports resolved; a
    `from X import name` also yields X.name, since the name may be a module)."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - n.level + 1])
                mod = f"{base}.{n.module}" if n.module else base
            else:
                mod = n.module or ""
            out.append((n.lineno, mod))
            out += [(n.lineno, f"{mod}.{a.name}") for a in n.names if a.name != "*"]
    return out


def wing_imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """Imports of `probescope.<x>` with x not core (nor the package root itself)."""
    bad = []
    for line, mod in imported_modules(tree, package):
        parts = mod.split(".")
        if parts[0] == "probescope" and len(parts) > 1 and parts[1] != "core":
            bad.append((line, mod))
    return bad


def _package(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1])  # a module's package (an __init__.py's: the package itself)


def _sources():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50, f"the walk found only {len(files)} files under {SRC}"
    for f in files:
        yield f, ast.parse(f.read_text(), filename=str(f))


def test_no_hook_registration_outside_core_sites():
    found = [f"{f.relative_to(SRC)}:{line} {name}" for f, tree in _sources()
             for line, name in hook_calls(tree) if f.relative_to(SRC).as_posix() != HOOK_LAYER]
    assert not found, "hooks registered outside core/sites.py (use site_hooks / module sites / tap_grad): " + \
        "; ".join(found)
    assert hook_calls(ast.parse((SRC / HOOK_LAYER).read_text()))  # the walk does see registrations where they are


def test_core_imports_no_wing():
    found = [f"{f.relative_to(SRC)}:{line} imports {mod}" for f, tree in _sources()
             if f.relative_to(SRC).parts[0] == "core" for line, mod in wing_imports(tree, _package(f))]
    assert not found, "core/ imports a wing: " + "; ".join(found)


# tasks/ (the data registry) sits beside core/: it imports core/ and itself only; its cli.py, like every wing's, also
# the CLI kit (clikit), which is the root floor, not a wing
TASKS_MAY_IMPORT = ("core", "tasks")
TASKS_CLI_MAY_IMPORT = TASKS_MAY_IMPORT + ("clikit",)


def tasks_imports_outside(tree: ast.AST, package: str, allowed: tuple[str, ...]) -> list[tuple[int, str]]:
    """Imports of `probescope.<x>` with x not in `allowed` (nor the package root itself)."""
    return [(line, mod) for line, mod in imported_modules(tree, package)
            if mod.split(".")[0] == "probescope" and len(mod.split(".")) > 1 and mod.split(".")[1] not in allowed]


def test_tasks_imports_only_core_and_tasks():
    found, walked = [], 0
    for f, tree in _sources():
        rel = f.relative_to(SRC)
        if rel.parts[0] != "tasks":
            continue
        walked += 1
        allowed = TASKS_CLI_MAY_IMPORT if rel.as_posix() == "tasks/cli.py" else TASKS_MAY_IMPORT
        found += [f"{rel}:{line} imports {mod}" for line, mod in tasks_imports_outside(tree, _package(f), allowed)]
    assert walked >= 10, f"the walk saw only {walked} modules under tasks/"
    assert not found, "tasks/ imports a wing (move the code into tasks/ or core/, or the caller into its wing): " + \
        "; ".join(found)


def test_the_checks_catch_what_they_look_for():
    """Each check fails on a source that breaks its rule, written the ways the tree could (not only by text)."""
    src = ("import torch\nfrom torch import nn\nh = m.register_forward_hook(f)\nt.register_hook(g)\n"
           "getattr(m, 'x').register_full_backward_pre_hook(f)\n# m.register_forward_pre_hook(f) in a comment\n")
    assert [n for _, n in hook_calls(ast.parse(src))] == ["register_forward_hook", "register_hook",
                                                          "register_full_backward_pre_hook"]
    core = ("from ..curvature.targets import Target\nfrom .. import cli\nimport probescope.sae.run\n"
            "from .sites import site_hooks\nfrom ..core import io\nfrom . import sites\nimport torch\n"
            "def f():\n    from ..exit import live\n")
    bad = [m for _, m in wing_imports(ast.parse(core), "probescope.core")]
    assert bad == ["probescope.curvature.targets", "probescope.curvature.targets.Target", "probescope.cli",
                   "probescope.sae.run", "probescope.exit", "probescope.exit.live"]
    deep = wing_imports(ast.parse("from ...steering import jobs\nfrom ..registry import x\n"), "probescope.core.models")
    assert [m for _, m in deep] == ["probescope.steering", "probescope.steering.jobs"]
    tasks_src = ("from ..unlearn.subjects import ClozeItem\nfrom .cloze import ClozeItem\nfrom ..core.data import read_records\n"
                 "from ..clikit import config_command\ndef f():\n    from ..exit.answer import LETTERS\n")
    bad = [m for _, m in tasks_imports_outside(ast.parse(tasks_src), "probescope.tasks", TASKS_MAY_IMPORT)]
    assert bad == ["probescope.unlearn.subjects", "probescope.unlearn.subjects.ClozeItem", "probescope.clikit",
                   "probescope.clikit.config_command", "probescope.exit.answer", "probescope.exit.answer.LETTERS"]
    assert [m for _, m in tasks_imports_outside(ast.parse(tasks_src), "probescope.tasks", TASKS_CLI_MAY_IMPORT)
            if m.startswith("probescope.clikit")] == []


# ------------------------------------------------------------------------------------------ module sites, taps
def _ids(tok):
    return tok(["the quick brown fox", "hello there ok"], return_tensors="pt", padding=True)["input_ids"]


def test_module_sites_read_and_edit_a_named_linear(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ids = _ids(tok)
    path = "model.layers.2.mlp.down_proj"
    down = model.get_submodule(path)
    assert str(parse_site(f"module_in:{path}")) == f"module_in:{path}"
    assert resolve_site(model, f"module_out:{path}") == Site("module_out", 2, None, path)
    assert resolve_site(model, "module_out:model.norm").layer is None
    got = read_sites(model, ids, None, [f"module_in:{path}", f"module_out:{path}", "mlp_out.2"])
    a, out = got[resolve_site(model, f"module_in:{path}")], got[resolve_site(model, f"module_out:{path}")]
    with torch.no_grad():
        assert float((down(a) - out).abs().max()) <= 1e-6
    assert torch.equal(out, got[resolve_site(model, "mlp_out.2")])  # down_proj's output is the MLP's
    v = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with site_hooks(model, {f"module_out:{path}": lambda x: x + v}):
            edited = model(input_ids=ids).logits
        with site_hooks(model, {"mlp_out.2": lambda x: x + v}):
            same = model(input_ids=ids).logits
    assert float((edited - same).abs().max()) <= 1e-6
    with pytest.raises(ValueError, match="no module 'model.layers.2.mlp.nope'.*down_proj"):
        resolve_site(model, "module_in:model.layers.2.mlp.nope")
    with pytest.raises(ValueError, match="needs a module path"):
        parse_site("module_out")
    with pytest.raises(ValueError, match="only module_in:PATH and module_out:PATH take a path"):
        parse_site("mlp_out:model.layers.1")


def test_stop_at_a_module_site_runs_its_whole_block(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ids = _ids(tok)
    ran = []
    blocks = find_blocks(model).layers
    with site_hooks(model, {f"resid_post.{i}": (lambda x, i=i: ran.append(i)) for i in range(4)}):
        read_sites(model, ids, None, ["module_in:model.layers.1.mlp.up_proj"])
    assert ran == [0, 1] and len(blocks) == 4


def test_tap_grad_sees_and_replaces_the_gradient(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ids = _ids(tok)
    seen = []
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    assert tap_grad(torch.ones(3), seen.append) is None  # nothing to tap without a gradient
    handle = tap_grad(y, lambda g: seen.append(g) or g * 0)
    y.sum().backward()
    assert torch.equal(seen[0], torch.ones(3)) and torch.equal(x.grad, torch.zeros(3))
    handle.remove()
    # a tap at a module site: Σ g aᵀ over tokens (the gradient at down_proj's output, its input) = its weight's grad
    path = "model.layers.1.mlp.down_proj"
    weight = model.get_submodule(path).weight
    taps = []

    def tap(out: torch.Tensor) -> None:
        tap_grad(out, taps.append)

    with site_hooks(model, {f"module_out:{path}": tap}):
        loss = model(input_ids=ids).logits.logsumexp(-1).sum()
    ref = torch.autograd.grad(loss, [weight])[0]
    a = read_sites(model, ids, None, [f"module_in:{path}"])[resolve_site(model, f"module_in:{path}")]
    assert len(taps) == 1 and taps[0].shape == (*ids.shape, weight.shape[0])
    assert float((taps[0].flatten(0, 1).T @ a.flatten(0, 1) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_blocks_from_runs_the_top_blocks_only(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    ids = _ids(tok)
    blocks = find_blocks(model).layers
    assert module_path(model, blocks) == "model.layers"
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        with blocks_from(model, 2):
            assert len(find_blocks(model).layers) == 2
            top = model.model(inputs_embeds=ref[2]).last_hidden_state
    assert find_blocks(model).layers is blocks
    assert float((top - ref[-1]).abs().max()) <= 1e-5


def import_cycles(sources: dict[str, ast.AST]) -> list[list[str]]:
    """Strongly connected groups (more than one module) of the module-level import graph: the circles Python meets
    at import time (imports inside functions run later and are left out). `sources`: module name → its tree."""
    import sys

    def target(name: str) -> str | None:
        while name and name not in sources:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in sources}
    for mod, tree in sources.items():
        top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
        pkg = mod if mod in PACKAGES else mod.rsplit(".", 1)[0]
        for _, name in imported_modules(top, pkg):
            t = target(name)
            if t and t != mod:
                edges[mod].add(t)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return out


PACKAGES: set[str] = set()


def test_at_most_three_import_circles_each_inside_one_folder():
    """#30: ≤ 3 import circles, each inside one folder (curvature's Config/Job circle is gone)."""
    sources = {}
    for f, tree in _sources():
        rel = f.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            PACKAGES.add(".".join(parts))
        sources[".".join(parts)] = tree
    cycles = import_cycles(sources)
    assert len(cycles) <= 3, cycles
    for group in cycles:  # one folder: every module of the circle sits in the same package (or is it)
        folders = {m if m in PACKAGES else m.rsplit(".", 1)[0] for m in group}
        assert len(folders) == 1, f"an import circle across folders: {group}"


def test_the_cycle_finder_finds_a_circle():
    trees = {"p.a": ast.parse("from . import b\n"), "p.b": ast.parse("from .a import x\n"),
             "p.c": ast.parse("def f():\n    from . import a\n")}
    assert import_cycles(trees) == [["p.a", "p.b"]]


# ----------------------------------------------------------------------------------------------------------
# One job runner: shared option groups declared once, one naming rule for configs
# ----------------------------------------------------------------------------------------------------------

# Configs not yet moved onto the shared option groups (each wing's conversion removes its entries; goal: none).
NOT_YET_GROUPED: set[str] = set()
# Job configs still called ...Job (goal: none).
NOT_YET_RENAMED: set[str] = set()


def _job_configs() -> dict[str, type]:
    import probescope.cli  # noqa: F401  (registers every command)
    from probescope.clikit import COMMANDS

    return {k: c for k, c in COMMANDS.items() if c.__module__.startswith("probescope.")}  # not tests' own


def test_no_wing_declares_a_shared_option_itself():
    """model / seed / threads / device / LoRA fields come from core/options.py's groups (a job may change a
    default through DEFAULTS, never the field): every job config's shared field carries its group's metadata."""
    import dataclasses

    from probescope.clikit import _option_fields
    from probescope.core.options import GROUPS

    helps: dict[str, set] = {}
    for g in GROUPS:
        for f in dataclasses.fields(g):
            helps.setdefault(f.name, set()).add(f.metadata.get("help"))
    configs = _job_configs()
    assert len(configs) >= 38, sorted(configs)
    bad = []
    for name, cls in configs.items():
        if cls.__name__ in NOT_YET_GROUPED:
            continue
        for _path, f, _typ, _default in _option_fields(cls):  # nested configs flattened, as the CLI sees them
            if f.name in helps and f.metadata.get("help") not in helps[f.name]:
                bad.append(f"{name}: {f.name}")
    assert not bad, "declared in the wing, not taken from core/options.py's groups:\n" + "\n".join(bad)
    done = {c.__name__ for c in configs.values() if _grouped(c) and not any(
        f.name in helps and f.metadata.get("help") not in helps[f.name] for _p, f, _t, _d in _option_fields(c))}
    assert not NOT_YET_GROUPED & done, f"now on the groups: remove {sorted(NOT_YET_GROUPED & done)} from the list"


def _grouped(cls: type) -> bool:
    from probescope.core.options import Checked

    return issubclass(cls, Checked)


def test_one_naming_rule_for_job_configs():
    """Every job command's dataclass is called ...Config (no ...Job beside it)."""
    bad = [f"{n} -> {c.__name__}" for n, c in _job_configs().items()
           if not c.__name__.endswith("Config") and c.__name__ not in NOT_YET_RENAMED]
    assert not bad, bad


# ------------------------------------------------------------------------------------------- the runner loads data
CORPUS_READERS = {"read_texts"}  # a wing reads a text corpus through core.data.corpus_texts (or Job.texts), not these


def test_corpus_jobs_take_their_texts_from_the_runner():
    """A job that cuts texts into contexts (a `data` and a `context_len` option) takes `--data` / `--text-field` from
    core/options.py's CorpusOptions, and no module outside core/ calls a raw text reader: every corpus is read by
    `core.data.corpus_texts` (what `Job.texts()` calls), so the default corpus and the column rule live in one place."""
    import dataclasses

    from probescope.core.options import CorpusOptions

    corpus = {n: c for n, c in _job_configs().items()
              if {"data", "context_len"} <= {f.name for f in dataclasses.fields(c)}}
    assert len(corpus) >= 8, sorted(corpus)  # cache, sae train/eval/latents, circuit transcoders/labels, fit, clusters
    assert not [n for n, c in corpus.items() if not issubclass(c, CorpusOptions)]
    bad = []
    for f, tree in _sources():
        rel = f.relative_to(SRC).as_posix()
        if rel.startswith("core/"):
            continue
        bad += [f"{rel}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", getattr(n.func, "attr", None)) in CORPUS_READERS]
    assert not bad, "a wing reads a corpus itself (use Job.texts() or core.data.corpus_texts):\n" + "\n".join(bad)


def test_job_texts_reads_the_corpus_options(tmp_path):
    """Job.texts(): the built-in corpus by default; the user's file through its --text-field column otherwise; a
    missing column is refused by name."""
    import json

    from probescope.core.data import default_corpus
    from probescope.core.options import CorpusOptions
    from probescope.report.job import Job

    assert Job(CorpusOptions(), None).texts() == list(default_corpus())
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"body": f"text number {i}"}) + "\n" for i in range(3)))
    assert Job(CorpusOptions(data=str(f), text_field="body"), None).texts() == [f"text number {i}" for i in range(3)]
    with pytest.raises(ValueError, match="text"):
        Job(CorpusOptions(data=str(f)), None).texts()
    with pytest.raises(ValueError, match="text-field"):
        CorpusOptions(text_field="")
