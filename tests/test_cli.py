"""The ``labdock`` command as an operator runs it: real processes, real exit codes."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from hub.db.migrate import head_revision

LABDOCK = [sys.executable, "-m", "hub.cli"]


# No runtime volumes: a hub started here would begin copying every built environment.
HUB_ENV = {
    "PYTHONPATH": str(Path(__file__).parent.parent),
    "LABDOCK_BACKEND_RUNTIME_VOLUMES": "off",
}


def run(*args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [*LABDOCK, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **HUB_ENV, **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_line_config_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--port", "notaport"], ["hub.port", "notaport"]),
        (["--port", "0"], ["hub.port", "between 1 and 65535"]),
        (["--ip", "999.1.1.1"], ["hub.ip"]),
        (
            ["--db-url", "postgresql+psycopg://u:pw@127.0.0.1:1/x"],
            ["db.url", "cannot connect", "***"],
        ),
        (["--db-url", "oracle://x"], ["db.url"]),
        (["--config", "absent.toml"], ["no such file"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_serve_with_bad_configuration_exits_2_with_one_line(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    assert_one_line_config_error(run("serve", *args, cwd=tmp_path), *needles)


def test_serve_with_an_unknown_key_in_the_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "labdock.toml").write_text("[hub]\nprot = 8000\n")
    done = run("serve", "--config", "labdock.toml", cwd=tmp_path)
    assert_one_line_config_error(done, "unknown key hub.prot")


def test_serve_with_a_bad_environment_variable_names_it(tmp_path: Path) -> None:
    done = run("serve", cwd=tmp_path, env={"LABDOCK_HUB_PORT": "eighty"})
    assert_one_line_config_error(done, "hub.port", "eighty")


# The hub asks the engine before it binds: without one it warns first, on more lines.
@pytest.mark.docker
def test_serve_on_a_port_in_use_exits_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("serve", "--port", str(port), cwd=tmp_path)
    assert_one_line_config_error(done, "already in use")


def _serve_until_ready(tmp_path: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    """Start ``labdock serve`` and return once it says it is serving, with what it printed.

    A thread reads the pipe: ``select`` on a text pipe misses lines already buffered
    inside Python, which is how the banner and the "serving on" line arrive together.
    """
    proc = subprocess.Popen(
        [*LABDOCK, "serve", "--port", str(port)],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **HUB_ENV},
    )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen = ""
    deadline = time.monotonic() + 60
    while "serving on" not in seen:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if not line:
            proc.kill()
            raise AssertionError(f"hub did not start:\n{seen}")
        seen += line
    return proc, seen


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_first_start_creates_admin_once_and_prints_its_password(tmp_path: Path) -> None:
    proc, output = _serve_until_ready(tmp_path, free_port())
    assert _stop(proc) == 0
    assert "username: admin" in output
    password = output.split("password: ", 1)[1].split()[0]
    assert len(password) >= 12
    assert (tmp_path / "data" / "labdock.sqlite").exists()
    assert oct((tmp_path / "data" / "cookie_secret").stat().st_mode & 0o777) == "0o600"

    proc, output = _serve_until_ready(tmp_path, free_port())
    assert _stop(proc) == 0
    assert "password:" not in output


def test_user_add_reads_a_password_from_stdin_and_refuses_duplicates(tmp_path: Path) -> None:
    done = run(
        "user",
        "add",
        "alice",
        "--team",
        "risk",
        "--password-stdin",
        cwd=tmp_path,
        stdin="correct horse\n",
    )
    assert done.returncode == 0, done.stderr
    assert "created user alice" in done.stdout and "one-time" not in done.stdout
    again = run("user", "add", "alice", "--password-stdin", cwd=tmp_path, stdin="correct horse\n")
    assert again.returncode == 1
    assert again.stderr.strip() == "labdock: user 'alice' already exists"


def test_user_add_without_password_prints_a_one_time_password(tmp_path: Path) -> None:
    done = run("user", "add", "bob", "--admin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "created user bob (admin)" in done.stdout
    assert "one-time password: " in done.stdout


@pytest.mark.parametrize("name", ["../../etc", "Kate", "\u212aate", "-rf", "a" * 40])
def test_user_add_refuses_hostile_names_with_a_reason(tmp_path: Path, name: str) -> None:
    done = run("user", "add", "--", name, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("labdock: username:") and "Traceback" not in done.stderr


def test_db_upgrade_reports_the_revision(tmp_path: Path) -> None:
    done = run("db", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"is at revision {head_revision()}" in done.stdout


def test_token_create_prints_a_token_once_and_refuses_unknown_scopes(tmp_path: Path) -> None:
    assert (
        run(
            "user", "add", "alice", "--password-stdin", cwd=tmp_path, stdin="correct horse\n"
        ).returncode
        == 0
    )
    done = run(
        "token", "create", "alice", "--scopes", "read:servers", "--expires-in", "7", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ldk_") and len(done.stdout.strip()) > 40
    bad = run("token", "create", "alice", "--scopes", "servers,root", cwd=tmp_path)
    assert bad.returncode == 1 and "unknown scope(s): root" in bad.stderr
    nobody = run("token", "create", "nobody", cwd=tmp_path)
    assert nobody.returncode == 1 and "no user 'nobody'" in nobody.stderr


def test_quota_set_reports_the_quota_and_checks_values(tmp_path: Path) -> None:
    assert (
        run(
            "user",
            "add",
            "alice",
            "--team",
            "risk",
            "--password-stdin",
            cwd=tmp_path,
            stdin="correct horse\n",
        ).returncode
        == 0
    )
    done = run("quota", "set", "--user", "alice", "--memory", "8G", "--servers", "2", cwd=tmp_path)
    # A user's first own quota starts from the hub's defaults: setting two limits
    # does not lift the other three.
    assert done.stdout.strip() == (
        "quota of user alice: cpus 4, memory 8 GiB, gpus 0, servers 2, storage 20 GiB"
    )
    team = run("quota", "set", "--team", "risk", "--cpus", "6", "--storage", "50G", cwd=tmp_path)
    assert team.stdout.strip() == "quota of team risk: cpus 6, storage 50 GiB"
    lifted = run("quota", "set", "--user", "alice", "--memory", "none", cwd=tmp_path)
    assert lifted.stdout.strip() == (
        "quota of user alice: cpus 4, gpus 0, servers 2, storage 20 GiB"
    )
    for args, needle in [
        (["--user", "alice", "--servers", "1.5"], "--servers: expected a whole number"),
        (["--user", "alice", "--cpus", "-1"], "--cpus: must not be negative"),
        (["--user", "alice"], "give at least one of"),
        (["--team", "ghosts", "--cpus", "1"], "no team 'ghosts'"),
    ]:
        bad = run("quota", "set", *args, cwd=tmp_path)
        assert bad.returncode in (1, 2) and needle in bad.stderr, bad.stderr
