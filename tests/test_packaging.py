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
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("ceds_deploy-*.whl")
    return path


def test_wheel_holds_training_and_export_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ceds_deploy/training/__init__.py" in names
    assert "ceds_deploy/export/__init__.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"ceds_deploy"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ceds = ceds_deploy.cli.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_in_a_fresh_venv_imports_the_namespace_and_not_bare_training(wheel, tmp_path):
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True)
    probe = ("import importlib.util as u; "
             "assert u.find_spec('ceds_deploy.training') is not None; "
             "assert u.find_spec('ceds_deploy.export') is not None; "
             "assert u.find_spec('training') is None, 'bare training importable'; "
             "assert u.find_spec('export') is None, 'bare export importable'; print('ok')")
    done = subprocess.run([str(python), "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert (env / "bin" / "ceds").exists()


def test_the_command_line_lets_idle_openmp_threads_sleep_unless_the_user_chose():
    """`ceds` sets OMP_WAIT_POLICY=PASSIVE for its own process before torch starts (spinning threads
    slow everything on a shared machine); a user's own setting wins; importing the library does not."""
    import os
    import subprocess
    import sys

    probe = ("import os; import ceds_deploy.cli.app as app; assert 'OMP_WAIT_POLICY' not in os.environ; "
             "app.main(['--version']); print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    plain = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split()[-1] == "PASSIVE"
    probe_user = probe.replace("assert 'OMP_WAIT_POLICY' not in os.environ; ", "")
    chosen = subprocess.run([sys.executable, "-c", probe_user], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.split()[-1] == "ACTIVE"
