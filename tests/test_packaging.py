"""The wheel installs training/ and export/ inside the ceds_deploy namespace only."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("ceds_deploy-*.whl")
    return path


def test_wheel_holds_training_and_export_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ceds_deploy/training/__init__.py" in names
    assert "ceds_deploy/export/__init__.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"ceds_deploy"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ceds = ceds_deploy.cli.app:console_main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_in_a_fresh_venv_imports_the_namespace_and_not_bare_training(wheel, tmp_path):
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util as u; "
        "assert u.find_spec('ceds_deploy.training') is not None; "
        "assert u.find_spec('ceds_deploy.export') is not None; "
        "assert u.find_spec('training') is None, 'bare training importable'; "
        "assert u.find_spec('export') is None, 'bare export importable'; print('ok')"
    )
    done = subprocess.run([str(python), "-I", "-c", probe], cwd=tmp_path, capture_output=True, encoding="utf-8")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert (env / "bin" / "ceds").exists()


def test_the_command_line_lets_idle_openmp_threads_sleep_on_a_busy_machine(monkeypatch):
    """`ceds` sets OMP_WAIT_POLICY=PASSIVE for its own process when the load says other jobs are
    running (spinning threads slow everything then), keeps spinning on an idle machine, and never
    overrides a user's own choice."""
    import os

    from ceds_deploy.cli.app import patient_openmp_threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not patient_openmp_threads(load=0.3, cores=2) and "OMP_WAIT_POLICY" not in os.environ
    assert patient_openmp_threads(load=2.5, cores=2) and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not patient_openmp_threads(load=9.0, cores=2) and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_library_leaves_the_openmp_policy_alone():
    """Importing and using the library sets nothing in the environment (only `ceds` main does)."""
    import os
    import subprocess
    import sys

    probe = "import os, ceds_deploy.inference, ceds_deploy.training.loop; print(os.environ.get('OMP_WAIT_POLICY', '-'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, encoding="utf-8", check=True)
    assert done.stdout.split()[-1] == "-"
