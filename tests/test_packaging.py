"""Packaging: the license file matches the metadata, the project links exist, every imported package is a declared
dependency (offline: the source's imports are mapped to the installed distributions), the nnunetv2 pin matches the
version guard, and the start-up hook never prints an error at interpreter start-up."""
from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from nnunet_ext import _compat

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnunet_ext"
HOOK = PACKAGE / "trainers" / "_startup" / "nnunet_ext.pth"


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(project: dict) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


# -------------------------------------------------------------------------------------------- license, links

def test_license_file_is_the_apache_2_license_the_metadata_names(project):
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    words = " ".join(text.split())
    assert words.startswith("Apache License Version 2.0, January 2004 http://www.apache.org/licenses/")
    headings = ["1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                "4. Redistribution.", "5. Submission of Contributions.", "6. Trademarks.",
                "7. Disclaimer of Warranty.", "8. Limitation of Liability.",
                "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"]
    positions = [words.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert 'on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND' in words
    assert len(words.split()) > 1500  # the full text, not a stub


def test_project_urls(project):
    urls = project["urls"]
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    assert urls["Source"] == "https://github.com/nnunet-ext/nnunet-ext"
    assert urls["Issues"] == urls["Source"] + "/issues"


# -------------------------------------------------------------------------------------- declared dependencies

def _imported_top_level_names() -> dict[str, set[str]]:
    """Top-level module name -> source files of nnunet_ext that import it (absolute imports, any depth)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_a_declared_dependency(project):
    declared = set(_requirements(project))
    distributions = importlib.metadata.packages_distributions()
    undeclared, unknown = [], []
    imported = _imported_top_level_names()
    assert {"torch", "numpy", "nnunetv2"} <= set(imported)  # the scan sees the package's imports
    for name, files in sorted(imported.items()):
        if name in sys.stdlib_module_names or name in ("nnunet_ext", "__future__"):
            continue
        providers = {canonicalize_name(d) for d in distributions.get(name, [])}
        if not providers:
            unknown.append(f"{name} (imported by {', '.join(sorted(files))}) is not installed")
        elif not providers & declared:
            undeclared.append(f"{name} from {'/'.join(sorted(providers))} (imported by {', '.join(sorted(files))})")
    assert not unknown, unknown
    assert not undeclared, "imported but not declared in pyproject.toml [project] dependencies: " + "; ".join(undeclared)


def test_nnunetv2_pin_is_the_tested_range_of_the_version_guard(project):
    pin = _requirements(project)["nnunetv2"]
    assert pin.specifier == SpecifierSet(_compat.NNUNETV2_RANGE) == SpecifierSet(">=2.8,<2.9")
    assert all(v in pin.specifier for v in ("2.8.0", "2.8.1")) and "2.9.0" not in pin.specifier
    assert "2.7.9" not in pin.specifier
    with pytest.raises(RuntimeError, match=r"needs nnunetv2>=2\.8,<2\.9 .*found nnunetv2 2\.7\.9.*"
                                           r"pip install 'nnunetv2>=2\.8,<2\.9'"):
        _compat.require_nnunetv2("2.7.9")
    with pytest.warns(RuntimeWarning, match=r"tested with nnunetv2>=2\.8,<2\.9 .*found nnunetv2 2\.9\.0"):
        _compat.require_nnunetv2("2.9.0")


def test_torch_requirement_allows_the_installed_torch(project):
    installed = importlib.metadata.version("torch")
    assert _requirements(project)["torch"].specifier.contains(installed.split("+")[0], prereleases=True)


# ---------------------------------------------------------------------------------------- the start-up hook

def _start_python(tmp_path: Path, package: dict[str, str]) -> subprocess.CompletedProcess:
    """A Python without site-packages that processes only a copy of the hook, with a fake ``nnunet_ext`` package
    (``package``: relative file -> source) first on its path."""
    site_dir, fake = tmp_path / "site", tmp_path / "fake"
    site_dir.mkdir()
    (site_dir / "nnunet_ext.pth").write_text(HOOK.read_text())
    for relative, source in package.items():
        (fake / relative).parent.mkdir(parents=True, exist_ok=True)
        (fake / relative).write_text(source)
    code = (f"import sys, site; sys.path.insert(0, {str(fake)!r}); site.addsitedir({str(site_dir)!r}); "
            "print('started')")
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)


def test_hook_is_one_import_line():
    lines = HOOK.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import ")  # site.py executes only lines starting with "import"


def test_hook_registers_the_trainer_folder(tmp_path):
    registering = {"nnunet_ext/__init__.py": "", "nnunet_ext/trainers/__init__.py": "",
                   "nnunet_ext/trainers/discovery.py": "def register_trainer_folder():\n    print('registered')\n"}
    result = _start_python(tmp_path, registering)
    assert result.returncode == 0 and result.stdout.split() == ["registered", "started"] and result.stderr == ""


@pytest.mark.parametrize("broken", [
    {"nnunet_ext/__init__.py": "raise ImportError('half-removed install')"},
    {"nnunet_ext/__init__.py": "", "nnunet_ext/trainers/__init__.py": ""},  # discovery.py missing
    {"nnunet_ext/__init__.py": "", "nnunet_ext/trainers/__init__.py": "",
     "nnunet_ext/trainers/discovery.py": "def register_trainer_folder():\n    raise OSError('read-only')\n"},
])
def test_hook_stays_silent_when_the_package_is_broken(tmp_path, broken):
    result = _start_python(tmp_path, broken)
    assert result.returncode == 0 and result.stdout.split() == ["started"]
    assert result.stderr == ""  # site.py would print "Error processing line 1 of ...nnunet_ext.pth" and a traceback
