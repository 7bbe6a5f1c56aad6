"""systemd/install.sh and uninstall.sh, run for real into a --root folder.

No systemd runs here, so the installer is pointed at a folder (`--root`): it writes the same
files, creates the user with systemd-sysusers and enables the unit with `systemctl --root`, builds
the real virtual environment, and skips only what needs a running system (daemon-reload, udev,
start). The installed tree is then checked with `systemd-analyze verify --root` and `security`.
CANN is a FAKE here (a set_env.sh and an `acl` module that only say where they are): the real
one needs an Ascend board.
"""

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


def board_root(folder: Path) -> Path:
    """An empty system root that looks like an Atlas board: Ascend device nodes and the HwHiAiUser group."""
    root = folder / "root"
    (root / "dev").mkdir(parents=True)
    for node in ("davinci0", "davinci1", "davinci_manager", "devmm_svm", "svm0", "ts_aisle"):
        (root / "dev" / node).touch()
    (root / "etc").mkdir()
    (root / "etc" / "group").write_text("HwHiAiUser:x:1000:\n", encoding="utf-8")
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
    for option in ("--repo", "--python", "--cann-set-env", "--no-cann", "--no-cpu-fallback", "--pip-option",
                   "--skip-venv", "--no-start", "--systemd-version", "--root", "--dry-run"):
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
    probe = subprocess.run([str(venv_python), "-c", "import acl, isic_station.sd_notify; print(acl.__file__)"],
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
