"""The set-up script ./run, with a stand-in Python whose venv and pip only log what they are asked
(no real environment is built here): what it installs, and that a complete set-up is skipped."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a stand-in for python3: `-m venv DIR` makes DIR/bin/python, a stand-in that logs every call and
# fails the one whose arguments end with $FAIL
FAKE_PYTHON = r"""#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin"
    cat > "$3/bin/python" <<'EOF'
#!/bin/sh
[ "$1" = "-c" ] && exit 0
echo "$*" >> "$LOG"
case "$*" in *"$FAIL") [ -n "$FAIL" ] && exit 1 ;; esac
exit 0
EOF
    chmod +x "$3/bin/python"
    echo "venv $3" >> "$LOG"
    exit 0
fi
exit 3
"""


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "run", root / "run")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"

    def run(*args, venv=".venv", fail="", where=root):
        env = {**os.environ, "VENV": venv, "PYTHON": str(fake), "LOG": str(log), "FAIL": fail}
        env.pop("TORCH", None)
        log.write_text("")
        done = subprocess.run(["sh", str(where / "run"), *args], env=env, capture_output=True, text=True, timeout=60)
        return done.returncode, log.read_text().splitlines(), done.stderr

    return root, run


INSTALLS = ["-m pip install --quiet --upgrade pip", "-m pip install --quiet torch==2.13.0",
            "-m pip install --quiet -e .[test,llm]"]


def test_first_call_sets_up_and_later_calls_skip_it(project):
    root, run = project
    assert run("status")[0] == 1
    rc, calls, _ = run("test", "-k", "x")
    assert rc == 0 and calls == ["venv .venv"] + INSTALLS + ["-m pytest -q -k x"]
    assert run("status")[:2] == (0, [])
    rc, calls, err = run("test")
    assert rc == 0 and calls == ["-m pytest -q"] and "setting up" not in err
    rc, calls, _ = run("demo", "--layers", "1", "2")
    assert rc == 0 and calls == ["-m oe_assets materialize --layers 1 2"]


def test_a_changed_pyproject_or_folder_sets_up_again(project, tmp_path):
    root, run = project
    assert run("setup")[0] == 0
    with open(root / "pyproject.toml", "a") as f:
        f.write("# a new dependency\n")
    assert run("status")[0] == 1
    rc, calls, _ = run("demo")
    assert rc == 0 and calls == ["-m pip --version"] + INSTALLS + ["-m oe_assets materialize"]  # the venv is kept
    assert run("status")[0] == 0
    moved = tmp_path / "moved"
    shutil.copytree(root, moved, symlinks=True)  # the editable install points at the old folder
    assert run("status", where=moved)[0] == 1


def test_without_the_pinned_torch_the_project_range_is_installed(project):
    _, run = project
    rc, calls, err = run("setup", venv="other-venv", fail="torch==2.13.0")
    assert rc == 0 and calls[-1] == "-m pip install --quiet -e .[test,llm]"
    assert "torch==2.13.0 is not available here: installing the project's torch range instead" in err
    assert run("status", venv="other-venv")[0] == 0 and run("status")[0] == 1  # each venv has its own stamp


def test_a_failed_install_leaves_the_set_up_incomplete(project):
    _, run = project
    rc, calls, _ = run("test", fail="-e .[test,llm]")
    assert rc != 0 and "-m pytest -q" not in calls
    assert run("status")[0] == 1
    rc, calls, _ = run("test")
    assert rc == 0 and calls == ["-m pip --version"] + INSTALLS + ["-m pytest -q"]


def test_unknown_command(project):
    rc, calls, err = project[1]("tests")
    assert rc == 2 and calls == [] and "usage: ./run demo|test|setup|status" in err
