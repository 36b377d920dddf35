"""Settings: file, then environment, then flags; every bad value named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import load_settings
from hub.domain.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labdock.toml"
    path.write_text(text)
    return path


def test_defaults_serve_sqlite_under_data_on_loopback_8000() -> None:
    settings = load_settings()
    assert (settings.hub.ip, settings.hub.port) == ("127.0.0.1", 8000)
    assert settings.db_url == "sqlite:///data/labdock.sqlite"


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nport = 9000\nip = '0.0.0.0'\n[db]\nurl = 'sqlite:///a.db'\n")
    env = {"LABDOCK_HUB_PORT": "9001", "LABDOCK_DB_URL": "sqlite:///b.db"}
    settings = load_settings(path, env, {"hub.port": "9002", "db.url": None})
    assert settings.hub.port == 9002
    assert settings.hub.ip == "0.0.0.0"
    assert settings.db_url == "sqlite:///b.db"


def test_quota_sizes_accept_human_units(tmp_path: Path) -> None:
    path = write(tmp_path, "[quota]\nmemory = '8G'\nstorage = '500M'\n")
    settings = load_settings(path)
    assert settings.quota.memory == 8 * 1024**3
    assert settings.quota.storage == 500 * 1024**2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"hub.port": "notaport"}, "hub.port: expected a whole number, got 'notaport'"),
        ({"hub.port": "70000"}, "hub.port: must be between 1 and 65535"),
        ({"hub.ip": "not-an-ip"}, "hub.ip: expected an IP address"),
        ({"db.url": "mysql://x/y"}, "db.url: expected sqlite:///PATH or postgresql"),
    ],
)
def test_bad_flag_is_refused_naming_the_key(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags=flags)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_unknown_key_in_file_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nprot = 8000\n")
    with pytest.raises(ConfigError, match=r"unknown key hub\.prot \(known: .*port"):
        load_settings(path)


def test_unknown_section_in_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown section 'proxy'"):
        load_settings(write(tmp_path, "[proxy]\nport = 1\n"))


def test_wrong_type_in_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hub\.ip: expected a string, got 5"):
        load_settings(write(tmp_path, "[hub]\nip = 5\n"))


def test_invalid_toml_is_refused_with_the_parser_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[hub\nport = 1\n"))


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_unknown_variable_in_a_known_section_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"LABDOCK_HUB_PROT: unknown key hub\.prot"):
        load_settings(env={"LABDOCK_HUB_PROT": "1"})


def test_variables_outside_our_sections_are_left_alone() -> None:
    settings = load_settings(env={"LABDOCK_TEST_DB_URL": "x", "LABDOCK_PREFIX": "/user/a/"})
    assert settings.hub.port == 8000


def test_booleans_are_spelled_plainly() -> None:
    assert load_settings(env={"LABDOCK_DB_ECHO": "yes"}).db.echo is True
    with pytest.raises(ConfigError, match=r"db\.echo: expected true or false"):
        load_settings(env={"LABDOCK_DB_ECHO": "maybe"})


def test_backend_kind_is_docker_by_default_and_read_from_the_environment() -> None:
    assert load_settings().backend.kind == "docker"
    assert load_settings(env={"LABDOCK_BACKEND_KIND": "fake"}).backend.kind == "fake"


def test_swarm_backend_is_refused_as_not_yet_available_naming_the_accepted_kinds(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, "[backend]\nkind = 'swarm'\n"))
    message = refused.value.message
    assert message.startswith("backend.kind: 'swarm' is planned but not available yet")
    assert "'docker'" in message and "'fake'" in message


def test_unknown_backend_kind_is_refused_naming_the_accepted_kinds() -> None:
    with pytest.raises(ConfigError, match=r"backend.kind: 'k8s' is not a backend; accepted kinds"):
        load_settings(env={"LABDOCK_BACKEND_KIND": "k8s"})
