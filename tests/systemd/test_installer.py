"""systemd/install.sh and uninstall.sh, run for real into a --root folder.

No systemd runs here, so the installer is pointed at a folder (`--root`): it writes the same
files, creates the user with systemd-sysusers and enables the unit with `systemctl --root`, builds
the real virtual environment, and skips only what needs a running system (daemon-reload, udev,
start). The installed tree is then checked with `systemd-analyze verify --root` and `security`.
CANN is a FAKE here (a set_env.sh and an `acl` module that only say where they are): the real
one needs an Ascend board. The CANN layouts of the Atlas 200 DK (toolkit as HwHiAiUser in its
home), the Atlas 200I DK A2 (nnrt in /usr/local/Ascend) and a CANN 8.5 host (/usr/local/Ascend/cann)
are laid out as files in the --root folder, with the version file CANN writes.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "systemd"
INSTALL = SCRIPTS / "install.sh"
UNINSTALL = SCRIPTS / "uninstall.sh"
UNIT_DIR = Path("etc/systemd/system")
DROPINS = UNIT_DIR / "isic-station.service.d"


def run_script(script: Path, *args: str, check: bool = True, env: Optional[Dict[str, str]] = None,
               ) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=300,
                            env=env)
    if check:
        assert result.returncode == 0, f"{script.name} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def fake_cann(folder: Path) -> Path:
    """A FAKE CANN install: a set_env.sh in the shape of CANN's, and an `acl` module that is not pyACL."""
    (folder / "python" / "site-packages").mkdir(parents=True)
    (folder / "lib64").mkdir()
    (folder / "python" / "site-packages" / "acl.py").write_text(
        "FAKE_PYACL = True  # a FAKE: real pyACL needs an Ascend NPU\n", encoding="utf-8")
    set_env = folder / "set_env.sh"
    set_env.write_text(
        'echo "CANN environment set (noise on stdout, as the real script prints)"\n'
        f"export ASCEND_TOOLKIT_HOME={folder}\n"
        "export LD_LIBRARY_PATH=${ASCEND_TOOLKIT_HOME}/lib64:${ASCEND_TOOLKIT_HOME}/lib64:${LD_LIBRARY_PATH}\n"
        "export PYTHONPATH=${ASCEND_TOOLKIT_HOME}/python/site-packages:$PYTHONPATH\n"
        "export PATH=${ASCEND_TOOLKIT_HOME}/bin:$PATH\n"
        "export ASCEND_OPP_PATH=${ASCEND_TOOLKIT_HOME}/opp\n"
        'export ASCEND_NOTE="quote \\" dollar \\$ backslash \\\\ end"\n'
        "export UNRELATED_TOOL_SETTING=1\n",
        encoding="utf-8")
    return set_env


def cann_layout(root: Path, base: str, package: str, version: str, versioned: bool = True) -> Path:
    """A FAKE CANN package laid out as files under `root`: set_env.sh, the <arch>-linux/ascend_*_install.info
    with `version=`, and an `acl` module. `versioned`: the files live in a version folder behind a
    `latest` link (toolkit and nnrt before 8.5); CANN 8.5 installs them straight into Ascend/cann."""
    top = root / base.lstrip("/") / package
    home = top / version if versioned else top
    (home / "aarch64-linux").mkdir(parents=True)
    info = "ascend_nnrt_install.info" if package == "nnrt" else "ascend_toolkit_install.info"
    (home / "aarch64-linux" / info).write_text(f"package_name=Ascend-cann-{package}\nversion={version}\n",
                                               encoding="utf-8")
    (home / "python" / "site-packages").mkdir(parents=True)
    (home / "python" / "site-packages" / "acl.py").write_text("FAKE_PYACL = True  # a FAKE\n", encoding="utf-8")
    if versioned:
        (top / "latest").symlink_to(version)
        home = top / "latest"
    exported = "ASCEND_TOOLKIT_HOME" if package == "ascend-toolkit" else "ASCEND_HOME_PATH"
    lines = [f"export {exported}={home}"] if package != "nnrt" else []  # nnrt's script names no home
    lines += [f"export LD_LIBRARY_PATH={home}/lib64:${{LD_LIBRARY_PATH}}",
              f"export PYTHONPATH={home}/python/site-packages:${{PYTHONPATH}}"]
    (top / "set_env.sh").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return top / "set_env.sh"


def fake_python(folder: Path, version: str) -> Path:
    """A FAKE `python3.X` on PATH that only says its version (enough for the installer's choice under --dry-run)."""
    folder.mkdir(exist_ok=True)
    script = folder / f"python{version}"
    script.write_text(f"#!/bin/sh\n# FAKE python{version}: answers every -c with its version\necho {version}\n",
                      encoding="utf-8")
    script.chmod(0o755)
    return script


def board_root(folder: Path) -> Path:
    """An empty system root that looks like an Atlas board: Ascend device nodes and the HwHiAiUser group."""
    root = folder / "root"
    (root / "dev").mkdir(parents=True)
    for node in ("davinci0", "davinci1", "davinci_manager", "devmm_svm", "svm0", "ts_aisle"):
        (root / "dev" / node).touch()
    (root / "etc").mkdir()
    (root / "etc" / "group").write_text("HwHiAiUser:x:1000:\n", encoding="utf-8")
    (root / "etc" / "passwd").write_text("HwHiAiUser:x:1000:1000::/home/HwHiAiUser:/bin/bash\n", encoding="utf-8")
    return root


def env_file(path: Path) -> Dict[str, str]:
    """The variables an EnvironmentFile= sets, read by bash (systemd's parser shares its quoting rules)."""
    def bash_env(script: str) -> Dict[str, str]:
        out = subprocess.run(["env", "-i", "bash", "-c", script, "-", str(path)], capture_output=True,
                             check=True).stdout.decode()
        return dict(item.split("=", 1) for item in out.split("\0") if item)

    before = bash_env("env -0")
    after = bash_env('set -a; . "$1"; env -0')
    return {name: value for name, value in after.items() if before.get(name) != value}


def members(root: Path, group: str) -> List[str]:
    for line in (root / "etc" / "group").read_text(encoding="utf-8").splitlines():
        name, _, _, users = line.split(":")
        if name == group:
            return users.split(",") if users else []
    return []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Dict[str, Path]:
    """One full install into a --root, board dependencies included (~20 s: done once per module)."""
    folder = tmp_path_factory.mktemp("board")
    root = board_root(folder)
    set_env = fake_cann(folder / "cann")
    result = run_script(INSTALL, "--root", str(root), "--cann-set-env", str(set_env), "--python", sys.executable,
                        "--systemd-version", "252")
    return {"root": root, "set_env": set_env, "cann": folder / "cann", "log": result.stdout}


def test_scripts_parse_and_pass_shellcheck():
    scripts = [SCRIPTS / "install.sh", SCRIPTS / "uninstall.sh", SCRIPTS / "common.sh"]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (`make system-deps` installs it); bash -n passed")
    result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, cwd=SCRIPTS)
    assert result.returncode == 0, result.stdout


def test_help_names_every_option():
    text = run_script(INSTALL, "--help").stdout
    for option in ("--repo", "--python", "--cann-set-env", "--cann-version", "--no-cann", "--no-cpu-fallback",
                   "--pip-option", "--skip-venv", "--no-start", "--systemd-version", "--root", "--dry-run"):
        assert option in text
    assert "--purge" in run_script(UNINSTALL, "--help").stdout


def test_mistakes_stop_with_one_clear_line(tmp_path):
    bad = run_script(INSTALL, "--frobnicate", check=False)
    assert bad.returncode == 1 and "unknown option '--frobnicate'" in bad.stderr
    no_repo = run_script(INSTALL, "--root", str(tmp_path), "--repo", str(tmp_path), "--skip-venv", check=False)
    assert no_repo.returncode == 1 and f"--repo {tmp_path}: no pyproject.toml" in no_repo.stderr
    not_root = run_script(INSTALL, "--root", str(tmp_path / "missing"), check=False)
    assert not_root.returncode == 1 and "no such folder" in not_root.stderr


def test_dry_run_changes_nothing(tmp_path):
    result = run_script(INSTALL, "--root", str(tmp_path), "--dry-run", "--no-cann", "--python", sys.executable)
    assert list(tmp_path.iterdir()) == []
    assert "would write" in result.stdout and "+ systemctl --root=" in result.stdout


def test_files_land_where_the_unit_expects_them(installed):
    root = installed["root"]
    unit = root / UNIT_DIR / "isic-station.service"
    assert unit.read_text(encoding="utf-8") == (SCRIPTS / "isic-station.service").read_text(encoding="utf-8")
    assert (root / UNIT_DIR / "multi-user.target.wants" / "isic-station.service").is_symlink()
    rules = root / "etc/udev/rules.d/99-isic-station.rules"
    assert rules.read_bytes() == (REPO / "drivers/isic_drivers/udev/99-isic-station.rules").read_bytes()
    toml = root / "etc/isic-station/station.toml"
    assert toml.read_bytes() == (REPO / "config/atlas-200dk.toml").read_bytes()
    assert stat.S_IMODE(toml.stat().st_mode) == 0o640
    password = root / "etc/isic-station/mqtt-password"
    assert password.read_bytes() == b"" and stat.S_IMODE(password.stat().st_mode) == 0o600


def test_user_in_device_groups(installed):
    root = installed["root"]
    passwd = (root / "etc" / "passwd").read_text(encoding="utf-8")
    assert re.search(r"^isic-station:x:\d+:\d+:[^:]*:/var/lib/isic-station:/usr/sbin/nologin$", passwd, re.M)
    for group in ("dialout", "video", "HwHiAiUser"):
        assert "isic-station" in members(root, group), group


def test_cann_environment_file_keeps_only_what_pyacl_needs(installed):
    cann = installed["cann"]
    variables = env_file(installed["root"] / "etc/isic-station/cann.env")
    assert variables == {
        "ASCEND_TOOLKIT_HOME": str(cann),
        # No duplicate and no empty element (an empty one would mean the working folder).
        "LD_LIBRARY_PATH": f"{cann}/lib64",
        "PYTHONPATH": f"{cann}/python/site-packages",
        "ASCEND_OPP_PATH": f"{cann}/opp",
        "ASCEND_NOTE": 'quote " dollar $ backslash \\ end',
    }


def test_venv_runs_the_station_and_sees_cann_acl(installed):
    venv_python = installed["root"] / "opt/isic-station/venv/bin/python"
    clean_env = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: the .pth file alone must reach CANN's folder
    probe = subprocess.run([str(venv_python), "-c", "import acl, isic_station.daemon.sd_notify; print(acl.__file__)"],
                           capture_output=True, text=True, env=clean_env, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(installed["cann"] / "python/site-packages/acl.py")
    cli = subprocess.run([str(installed["root"] / "opt/isic-station/venv/bin/isic-station"), "--help"],
                         capture_output=True, text=True, env=clean_env, timeout=60)
    assert cli.returncode == 0 and "run" in cli.stdout, cli.stderr
    assert "pyACL imports in the venv" in installed["log"]


def test_venv_holds_the_board_dependencies_only(installed):
    venv_python = installed["root"] / "opt/isic-station/venv/bin/python"
    listing = subprocess.run([str(venv_python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                             capture_output=True, text=True, timeout=120, check=True).stdout.lower()
    names = {line.split("==")[0] for line in listing.splitlines()}
    assert {"numpy", "opencv-python-headless", "pyserial", "paho-mqtt", "jsonschema", "onnxruntime"} <= names
    numpy = next(line for line in listing.splitlines() if line.startswith("numpy=="))
    assert int(numpy.split("==")[1].split(".")[0]) < 2, numpy  # CANN's pyACL needs numpy below 2
    assert not names & {"torch", "scikit-learn", "scipy", "matplotlib"}, names


def test_dropin_allows_this_boards_extra_ascend_nodes(installed):
    dropin = (installed["root"] / DROPINS / "ascend-devices.conf").read_text(encoding="utf-8")
    allowed = re.findall(r"^DeviceAllow=(\S+) rw$", dropin, re.M)
    # davinci0, davinci_manager and devmm_svm are in the unit itself; absent nodes are not listed.
    assert allowed == ["/dev/davinci1", "/dev/svm0", "/dev/ts_aisle"]
    assert not (installed["root"] / DROPINS / "credentials-compat.conf").exists()
    assert not (installed["root"] / DROPINS / "cann-home.conf").exists()  # the fake CANN is not in /home


def test_cann_in_a_home_folder_gets_read_only_home_access(tmp_path):
    set_env = tmp_path / "set_env.sh"
    set_env.write_text("export ASCEND_TOOLKIT_HOME=/home/HwHiAiUser/Ascend/ascend-toolkit/latest\n"
                       "export LD_LIBRARY_PATH=/usr/local/Ascend/driver/lib64:${ASCEND_TOOLKIT_HOME}/lib64\n",
                       encoding="utf-8")
    root = tmp_path / "root"
    root.mkdir()
    out = run_script(INSTALL, "--root", str(root), "--dry-run", "--skip-venv", "--cann-set-env", str(set_env)).stdout
    assert f"would write {root}/{DROPINS}/cann-home.conf" in out


def test_installed_tree_passes_both_systemd_checks(installed, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (`make system-deps` installs the systemd package)")
    root = installed["root"]
    # verify resolves the unit's dependencies (sysinit.target, ...) inside the root: give it the system's units.
    system_units = root / "usr/lib/systemd/system"
    if not system_units.exists():
        shutil.copytree("/usr/lib/systemd/system", system_units, symlinks=True)
    verify = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", "isic-station.service"],
                            capture_output=True, text=True, timeout=60)
    # ExecStart is the real console script in the installed venv, so verify checks it exists.
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", "--threshold=20", f"--root={root}",
                               "isic-station.service"], capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout + security.stderr
    assert "/dev/svm0:rw" in security.stdout  # the drop-in was read


def test_rerun_keeps_local_edits_and_old_systemd_gets_the_password_by_file(installed):
    root = installed["root"]
    toml = root / "etc/isic-station/station.toml"
    password = root / "etc/isic-station/mqtt-password"
    toml.write_text(toml.read_text(encoding="utf-8") + "# edited on the board\n", encoding="utf-8")
    password.write_text("s3cret", encoding="utf-8")
    result = run_script(INSTALL, "--root", str(root), "--cann-set-env", str(installed["set_env"]), "--skip-venv",
                        "--systemd-version", "237")
    assert "keeping" in result.stdout
    assert toml.read_text(encoding="utf-8").endswith("# edited on the board\n")
    assert password.read_text(encoding="utf-8") == "s3cret"
    compat = (root / DROPINS / "credentials-compat.conf").read_text(encoding="utf-8")
    assert "Environment=CREDENTIALS_DIRECTORY=/etc/isic-station" in compat
    assert stat.S_IMODE(password.stat().st_mode) == 0o640
    # Back on a systemd with LoadCredential=, the compatibility drop-in goes away again.
    run_script(INSTALL, "--root", str(root), "--cann-set-env", str(installed["set_env"]), "--skip-venv",
               "--systemd-version", "252")
    assert not (root / DROPINS / "credentials-compat.conf").exists()


def test_uninstall_keeps_state_unless_purged(installed):
    root = installed["root"]
    run_script(UNINSTALL, "--root", str(root))
    for gone in (UNIT_DIR / "isic-station.service", DROPINS, Path("etc/udev/rules.d/99-isic-station.rules"),
                 Path("opt/isic-station"), Path("etc/isic-station/cann.env"), Path("etc/sysusers.d/isic-station.conf"),
                 UNIT_DIR / "multi-user.target.wants/isic-station.service"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert (root / "etc/isic-station/station.toml").exists()
    assert (root / "etc/isic-station/mqtt-password").exists()
    run_script(UNINSTALL, "--root", str(root), "--purge")
    assert not (root / "etc/isic-station").exists()


def _dry_run(root: Path, *args: str, check: bool = True, path_prefix: Optional[Path] = None):
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return run_script(INSTALL, "--root", str(root), "--dry-run", "--systemd-version", "252", *args, check=check,
                      env=env)


def test_atlas_200dk_cann_in_hwhiaiusers_home_is_found_with_the_driver_paths(tmp_path):
    root = board_root(tmp_path)
    cann_layout(root, "/home/HwHiAiUser/Ascend", "ascend-toolkit", "6.0.RC1")
    for sub in ("lib64/common", "lib64/driver"):
        (root / "usr/local/Ascend/driver" / sub).mkdir(parents=True)
    out = run_script(INSTALL, "--root", str(root), "--skip-venv", "--systemd-version", "252").stdout
    assert f"environment script {root}/home/HwHiAiUser/Ascend/ascend-toolkit/set_env.sh" in out
    assert "CANN 6.0.RC1: pyACL for Python 3.7-3.9, numpy>=1.19.2,<1.25" in out
    variables = env_file(root / "etc/isic-station/cann.env")
    home = f"{root}/home/HwHiAiUser/Ascend/ascend-toolkit/latest"
    driver = f"{root}/usr/local/Ascend/driver"
    assert variables["LD_LIBRARY_PATH"] == f"{home}/lib64:{driver}/lib64:{driver}/lib64/common:{driver}/lib64/driver"
    assert variables["PYTHONPATH"] == f"{home}/python/site-packages"
    # CANN in a home folder: the service may read (not write) home folders.
    assert "ProtectHome=read-only" in (root / DROPINS / "cann-home.conf").read_text(encoding="utf-8")


def test_atlas_200dk_python_is_picked_from_cann_and_numpy_pinned(tmp_path):
    root = board_root(tmp_path)
    cann_layout(root, "/home/HwHiAiUser/Ascend", "ascend-toolkit", "6.0.RC1")
    fake_python(tmp_path / "bin", "3.9")
    out = _dry_run(root, path_prefix=tmp_path / "bin").stdout
    assert "python3.9 (Python 3.9); numpy>=1.19.2,<1.25" in out
    assert re.search(r"\+ \S+/venv/bin/python -m pip install .*\[runtime\] numpy>=1\.19\.2,<1\.25$", out, re.M), out


def test_cann_5_is_refused_because_its_pyacl_is_for_python_37_only(tmp_path):
    root = board_root(tmp_path)
    cann_layout(root, "/home/HwHiAiUser/Ascend", "ascend-toolkit", "5.1.RC2")
    result = _dry_run(root, "--python", sys.executable, check=False)
    assert result.returncode == 1
    assert "CANN 5.1.RC2 ships pyACL for Python 3.7 only and the station needs 3.8 or newer" in result.stderr
    assert "--no-cann" in result.stderr


def test_atlas_200i_dk_a2_nnrt_is_found_and_a_python_it_lacks_is_refused(tmp_path):
    root = board_root(tmp_path)
    cann_layout(root, "/usr/local/Ascend", "nnrt", "23.0.RC2")
    version = "{}.{}".format(*sys.version_info[:2])
    result = _dry_run(root, "--python", sys.executable, check=False)
    assert f"environment script {root}/usr/local/Ascend/nnrt/set_env.sh" in result.stdout
    assert "CANN 23.0.RC2: pyACL for Python 3.7-3.9" in result.stdout
    assert result.returncode == 1
    assert (f"--python {sys.executable} is Python {version}; CANN 23.0.RC2's pyACL is built for Python 3.7-3.9"
            in result.stderr)


def test_cann_85_comes_first_and_cann_set_env_still_wins(tmp_path):
    root = board_root(tmp_path)
    newest = cann_layout(root, "/usr/local/Ascend", "cann", "8.5.0", versioned=False)
    older = cann_layout(root, "/usr/local/Ascend", "ascend-toolkit", "8.0.RC2")
    out = _dry_run(root, "--python", sys.executable).stdout
    assert f"environment script {newest}" in out
    assert "CANN 8.5.0: pyACL for Python 3.7-3.12, numpy>=1.19.2,<2" in out
    assert re.search(r"pip install .*numpy>=1\.19\.2,<2$", out, re.M)
    chosen = _dry_run(root, "--python", sys.executable, "--cann-set-env", str(older), check=False)
    assert f"environment script {older}" in chosen.stdout
    assert "CANN 8.0.RC2: pyACL for Python 3.7-3.10, numpy>=1.19.2,<1.25" in chosen.stdout
    if sys.version_info >= (3, 11):
        assert chosen.returncode == 1 and "built for Python 3.7-3.10" in chosen.stderr


def test_cann_version_is_also_read_from_share_info_version_info(tmp_path):
    root = board_root(tmp_path)
    set_env = cann_layout(root, "/usr/local/Ascend", "cann", "8.5.0", versioned=False)
    for info in (set_env.parent / "aarch64-linux").iterdir():
        info.unlink()
    (set_env.parent / "share/info/runtime").mkdir(parents=True)
    (set_env.parent / "share/info/runtime/version.info").write_text("Version=8.5.0\ntimestamp=0\n", encoding="utf-8")
    assert "CANN 8.5.0: pyACL for Python 3.7-3.12" in _dry_run(root, "--skip-venv").stdout


def test_without_cann_the_installer_says_where_it_looked(tmp_path):
    root = board_root(tmp_path)
    result = _dry_run(root, "--skip-venv")
    assert "no CANN found (looked for" in result.stderr
    assert f"{root}/usr/local/Ascend/cann/set_env.sh" in result.stderr
    assert f"{root}/home/HwHiAiUser/Ascend/ascend-toolkit/set_env.sh" in result.stderr
    assert "NPU check under the service's sandbox\n    skipped: no CANN" in result.stdout
    # The shipped manifest records no .om: the first start runs on the CPU, and the installer says how to change that.
    assert "the manifest records no compiled .om: backend auto runs on ONNX Runtime (CPU)" in result.stdout


@pytest.mark.parametrize("systemd_version", ["252", "237"])
def test_npu_check_runs_under_the_units_own_sandbox(tmp_path, systemd_version):
    root = board_root(tmp_path)
    cann_layout(root, "/usr/local/Ascend", "cann", "8.5.0", versioned=False)
    out = run_script(INSTALL, "--root", str(root), "--dry-run", "--skip-venv", "--systemd-version",
                     systemd_version).stdout
    line = next(line for line in out.splitlines() if line.startswith("    + systemd-run "))
    assert line.startswith("    + systemd-run --quiet --wait --pipe --collect --unit=isic-station-npu-check ")
    for prop in ("User=isic-station", "SupplementaryGroups=dialout video", "DevicePolicy=closed",
                 "DeviceAllow=/dev/davinci0 rw", "DeviceAllow=/dev/davinci_manager rw",
                 "EnvironmentFile=-/etc/isic-station/cann.env", "ProtectSystem=strict", "MemoryDenyWriteExecute=yes",
                 "SystemCallFilter=@system-service"):
        assert f" -p {prop} " in line, prop
    assert "ExecStart" not in line and "WatchdogSec" not in line and "Type=" not in line
    assert line.endswith("/opt/isic-station/venv/bin/python -c # The installer's NPU smoke check, run by "
                         'systemd/install.sh as `python -c "$(cat npu-check.py)"`')  # the script follows, whole
    assert (SCRIPTS / "npu-check.py").read_text(encoding="utf-8").strip() in out
    # A transient unit refuses keys its systemd does not know (the unit file only warns).
    assert (" -p ProtectProc=invisible " in line) == (systemd_version == "252")


NPU_CHECK = SCRIPTS / "npu-check.py"


def _npu_check_with_fake(failing: Optional[str] = None) -> subprocess.CompletedProcess:
    """systemd/npu-check.py against the FAKE acl (tests/fakes/fake_acl.py), as the installer runs it (-c)."""
    setup = ("import sys; sys.path.insert(0, sys.argv[1]); from fakes.fake_acl import FakeAcl; fake = FakeAcl(); "
             f"fake.fail_next({failing!r}, 507033) if {failing!r} else None; sys.modules['acl'] = fake; ")
    code = setup + "exec(compile(open(sys.argv[2]).read(), 'npu-check', 'exec'))"
    return subprocess.run([sys.executable, "-c", code, str(REPO / "tests"), str(NPU_CHECK)], capture_output=True,
                          text=True, timeout=60)


def test_npu_check_script_opens_device_0_on_the_fake():
    ok = _npu_check_with_fake()
    assert ok.returncode == 0, ok.stderr
    assert "opened device 0, run mode ACL_DEVICE" in ok.stdout


def test_npu_check_script_names_the_failing_call_and_code():
    failed = _npu_check_with_fake("acl.rt.set_device")
    assert failed.returncode == 1
    assert failed.stderr.strip() == "NPU check: acl.rt.set_device(0) returned ACL error 507033"
