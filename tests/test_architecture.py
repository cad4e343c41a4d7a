"""The architecture as checked facts: layer contracts, a torch-free query side, the
installed package (shipped tables as package data), and the README's Python examples."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import synthetic_table

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold():
    """`lint-imports` (import-linter, contracts in pyproject.toml) passes."""
    exe = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "4 kept, 0 broken" in p.stdout


def _modules_after(code: str) -> set[str]:
    p = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                        "print(json.dumps(sorted(sys.modules)))"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["space", "mbv3-w1.0"], ["search", "--help"],
                                  ["run", "--help"]])
def test_help_and_space_import_no_torch(argv):
    mods = _modules_after(
        f"from ofa.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert "torch" not in mods and "torchvision" not in mods


def test_target_package_imports_numpy_only():
    mods = _modules_after("import deploy.ontarget.agent")
    assert not {"torch", "optuna", "scipy", "ofa", "search"} & mods


def test_ofa_run_is_a_list_of_steps(tmp_path, monkeypatch):
    """`ofa run` is the steps of ofa.pipeline.STEPS run in order, each when its run needs it:
    adding one is one entry (here a step after the report sees every earlier output)."""
    import ofa.pipeline.steps as steps
    from ofa.pipeline import STEPS, RunConfig, Step, run_pipeline

    assert [s.name for s in STEPS] == ["train", "accuracy predictor", "latency table",
                                       "search", "measured budget", "fine-tune",
                                       "export + measure", "report"]
    assert all(s.outputs for s in STEPS)
    seen = []
    monkeypatch.setattr(steps, "_preflight", lambda rc: None)
    monkeypatch.setattr(steps, "start_block_conversion", lambda rc, reused: None)
    fake = [Step(n, ("x",), lambda rc, st, n=n: seen.append(n),
                 when=lambda rc, n=n: n != "skipped") for n in ("a", "skipped", "b")]
    run_pipeline(RunConfig(name="r", root=str(tmp_path)), steps=tuple(fake))
    assert seen == ["a", "b"] and (tmp_path / "r" / "config.json").is_file()


def test_search_query_needs_no_torch(tmp_path):
    """A whole `ofa search` on a table with our numpy predictor never imports torch."""
    from bad_inputs import random_predictor

    from ofa.space import get_space

    space = get_space("mbv3-cifar")
    random_predictor(space, tmp_path / "p.safetensors")
    synthetic_table(space).save(tmp_path / "t.json")
    code = ("from ofa.cli import main\n"
            f"rc = main(['search', '--predictor', {str(tmp_path / 'p.safetensors')!r}, '--table', "
            f"{str(tmp_path / 't.json')!r}, '--latency-ms', '30', '--generations', '2', "
            f"'--population', '10', '--shortlist', '4', '--shortlist-margin', '2', '--json', "
            f"'--out', {str(tmp_path / 'r.json')!r}])\n"
            "assert rc == 0")
    mods = _modules_after(code)
    assert "torch" not in mods
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["best"][0]["latency_ms"] <= 30 and res["shortlist"][0] == res["best"][0]
    assert all(r["acc"] >= res["best"][0]["acc"] - 2 and r["latency_ms"] <= 30
               for r in res["shortlist"])


def test_wheel_ships_tables_and_installed_run_finds_them(tmp_path):
    """A non-editable install carries latency_tables/*.json, and find_shipped_table reads
    them through importlib.resources from outside the checkout (CPU model faked)."""
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "ofa", "search", "deploy", "latency_tables"):
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
        copy(ROOT / item, src / item, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / item).is_dir() else {}))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(wheels), str(src)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (whl,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(whl).namelist()
    shipped = sorted(n for n in names if n.startswith("latency_tables/") and n.endswith(".json"))
    assert shipped == sorted(f"latency_tables/{f.name}"
                             for f in (ROOT / "latency_tables").glob("*.json"))
    assert "deploy/ontarget/agent.py" in names and "ofa/cli/__main__.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)  # what `pip install` lays out for a pure wheel
    table = json.loads((ROOT / "latency_tables" / Path(shipped[0]).name).read_text())
    code = (
        "import deploy.ontarget.facts as d, ofa.pipeline as pl, latency_tables\n"
        "from ofa.space import SearchSpace\n"
        f"t = {({k: table[k] for k in ('space', 'context', 'resolutions')})!r}\n"
        "d.machine_facts = lambda: {'cpu_model': t['context']['machine']['cpu_model']}\n"
        "sp = SearchSpace.from_dict({**t['space'], 'resolutions': t['resolutions']})\n"
        "found = pl.find_shipped_table(sp, t['context']['runtime'], t['context']['threads'])\n"
        "print(found.source, latency_tables.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    source, pkg = out.stdout.split()
    assert source.startswith(str(site)) and pkg.startswith(str(site))


def _readme_python_blocks() -> list[tuple[str, str]]:
    """Every ```python block of the README and the docs: (where, code)."""
    out = []
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```python\n(.*?)```", f.read_text(), flags=re.S)
        out += [(f"{f.relative_to(ROOT)} python block {i}", b) for i, b in enumerate(blocks)]
    return out


@pytest.mark.parametrize("i", range(len(_readme_python_blocks())))
def test_readme_python_examples_run(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where, code = _readme_python_blocks()[i]
    exec(compile(code, where, "exec"), {})


def test_the_readme_is_a_front_page():
    """At most 200 lines, and the repository names no working sessions."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: the tracked files are unknown")
    pat = re.compile(r"\bsessions? \d+\b", re.I)
    hits = [f for f in tracked if f.endswith((".py", ".md", ".toml", ".yaml", ".sh"))
            and (ROOT / f).exists() and pat.search((ROOT / f).read_text(errors="replace"))]
    assert not hits, hits
