"""The code base stays ruff-clean (rules in pyproject.toml), and no test pins float results to
digests stored from one CPU; CI runs this with the suite."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    if (
        shutil.which("ruff") is None
        and subprocess.run(
            [sys.executable, "-m", "ruff", "--version"], capture_output=True
        ).returncode
    ):
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# No test pins float results to stored digests: XLA:CPU emits different code per CPU (the study
# moved by ~1e-7 between an AMD and an Intel VM), so a SHA-256 or float.hex() of trained params
# recorded on one machine fails on another. Tests compute their reference in the same run.
# --------------------------------------------------------------------------------------------

HEX_DIGEST = re.compile(r"[0-9a-fA-F]{16,}")  # a (truncated) hexdigest: 64 bits or more
FLOAT_HEX = re.compile(r"-?0x[01]\.[0-9a-fA-F]*p[+-]?\d+")  # float.hex(): exact float bits
DIGEST_USE = re.compile(r"hashlib|hexdigest|sha256|sha1|md5|blake2|digest")

# Stored digests that no CPU changes, by (file under tests/, the module-level name holding them),
# with the reason. A digest of float arithmetic never belongs here.
ALLOWED_DIGESTS = {
    ("test_data.py", "OFFICIAL_MD5"): "MD5s Zalando publishes for the data files' bytes",
    ("test_data.py", "FROZEN"): "SHA-256 of int64 split indices (numpy integer draws, no floats)",
}


def _holder(tree: ast.Module, node: ast.AST) -> str | None:
    """The module-level name whose assignment contains ``node``, else None."""
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign | ast.AnnAssign):
            continue
        if any(n is node for n in ast.walk(stmt)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            return names[0] if names else None
    return None


def stored_digests(source: str, filename: str) -> list[str]:
    """One line per stored digest of results in a test module's ``source``: a string literal
    that is a float.hex() value, or a 16+ hex-digit literal in a module that hashes
    (``DIGEST_USE``), unless ``ALLOWED_DIGESTS`` names its holder with a reason."""
    tree = ast.parse(source, filename)
    hashes = bool(DIGEST_USE.search(source))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value.strip()
        if not (FLOAT_HEX.fullmatch(text) or (hashes and HEX_DIGEST.fullmatch(text))):
            continue
        holder = _holder(tree, node)  # float bits are never CPU-independent: no allowance
        if FLOAT_HEX.fullmatch(text) or (filename, holder) not in ALLOWED_DIGESTS:
            found.append(
                f"{filename}:{node.lineno}: stored digest {text!r} (in {holder or 'code'}): "
                "compute the reference in the same run (it differs per CPU), or, for bytes or "
                "integers no CPU changes, add it to ALLOWED_DIGESTS in tests/test_lint.py "
                "with the reason"
            )
    return found


def test_no_test_pins_float_results_to_stored_digests():
    found = [
        line
        for path in sorted((REPO / "tests").rglob("*.py"))
        for line in stored_digests(path.read_text(), path.relative_to(REPO / "tests").as_posix())
    ]
    assert not found, "\n".join(found)


OLD_FORM = """
import hashlib

FROZEN = {  # activation: (history digest, params digest, model 0's last train loss)
    "relu": ("6de9b0560edbfff9", "d792e08ddd59a2ca", "0x1.25dd7a0000000p+1"),
}


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def test_frozen():
    assert got == FROZEN["relu"] and float(last).hex() == "0x1.2573b60000000p+1"
"""


def test_the_digest_guard_flags_the_old_frozen_form():
    """tests/test_train.py's digests of trained params before it computed its reference in the
    same run: every literal flagged, in the file's FROZEN as in any test function."""
    found = stored_digests(OLD_FORM, "test_train.py")
    assert len(found) == 4, found
    assert sum("(in FROZEN)" in line for line in found) == 3
    assert all("same run" in line and "\n" not in line for line in found)
    # An allowed holder name covers hex digests only, never float.hex() bits ...
    assert len(stored_digests(OLD_FORM, "test_data.py")) == 2
    # ... and hex that is no digest (a colour, a short id) in a module that hashes is not.
    assert not stored_digests('import hashlib\nCOLOR = "ff8800"\nID = "0x10"\n', "t.py")
    old_file = subprocess.run(
        ["git", "show", "e950a73:tests/test_train.py"], capture_output=True, text=True, cwd=REPO
    )
    if old_file.returncode == 0:  # the whole file as it was, where the history is there to read
        assert len(stored_digests(old_file.stdout, "test_train.py")) == 9
