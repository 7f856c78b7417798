"""The ``.env`` file as councils write it (issue 25, item 3; issue 26, items 2 and 3).

A misspelt name is named, with the setting it was probably meant to be, and a name the earlier
tool read that this one does not gets a note: warnings, never errors. A file saved by Windows'
own tools (UTF-16 from PowerShell 5.1, UTF-8 with a byte-order mark) is read; one saved as ANSI
is refused with the line to fix. A Windows path in double quotes keeps its backslashes, while
every other value is read as python-dotenv reads it, as the earlier tool read it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from api_pipeline.errors import ConfigError, ExitCode
from api_pipeline.job.logs import ERROR_LOG_NAME
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from conftest import db_env, insert, run_cli
from earlier_tool import earlier_env_example

REPO = Path(__file__).resolve().parents[1]


def write_env(folder: Path, lines: list[str], *, encoding: str = "utf-8", bom: bytes = b"") -> Path:
    path = folder / ".env"
    path.write_bytes(bom + "".join(f"{line}\n" for line in lines).encode(encoding))
    return path


def settings_lines(values: dict[str, str]) -> list[str]:
    return [f"{name}={value}" for name, value in values.items()]


def warnings_of(env_file: Path, command: str = "demo"):
    return list(load_settings(command=command, environ={}, env_file=env_file).warnings)


# -- issue 25, item 3: every name that is not a setting is named ------------------------------------


def test_a_misspelt_setting_is_named_with_the_nearest_one_and_the_run_goes_on(simulator, db_path, capfd) -> None:
    insert(db_path, list(make_children(2, seed=251)))
    folder = db_path.parent
    env_file = write_env(
        folder, [*settings_lines(simulator.settings_env() | db_env(db_path)), "USE_PARTIAL_PAYLOD=false"]
    )
    result = run_cli(["run"], cwd=folder)
    assert result.code == ExitCode.OK, result.err
    assert len(simulator.snapshot()) == 2  # a warning, never an error
    said = (
        f"USE_PARTIAL_PAYLOD on line 10 of {env_file} is not a setting, so it is ignored: "
        "did you mean USE_PARTIAL_PAYLOAD?"
    )
    console = capfd.readouterr().err
    assert console.count(said) == 1, console
    (log_file,) = folder.glob("logs/*.log")
    assert log_file.read_text(encoding="utf-8").count(said) == 1


def test_a_misspelt_secret_is_named_beside_the_setting_it_leaves_unset(simulator, tmp_path) -> None:
    values = simulator.settings_env() | {"DB_CONNECTION_STRING": "sqlite:///staging.db"}
    del values["CLIENT_SECRET"]
    env_file = write_env(tmp_path, [*settings_lines(values), "CLIENT_SECERT=sim-secret"])
    result = run_cli(["test-endpoint"], cwd=tmp_path)
    assert result.code == ExitCode.USAGE
    lines = result.err.splitlines()
    warning = (
        f"warning: CLIENT_SECERT on line {len(values) + 1} of {env_file} is not a setting, so it is ignored: "
        "did you mean CLIENT_SECRET?"
    )
    assert warning in lines and lines.index(warning) < next(
        i for i, line in enumerate(lines) if line.startswith("error: CLIENT_SECRET: not set")
    )
    assert "sim-secret" not in result.err  # the value is never shown
    trace = (tmp_path / "logs" / ERROR_LOG_NAME).read_text(encoding="utf-8")
    assert warning in trace  # under Task Scheduler, the error log is where it is read


def test_names_the_earlier_tool_read_that_this_one_ignores_get_a_note(db_path) -> None:
    env_file = write_env(
        db_path.parent,
        [
            *settings_lines(db_env(db_path)),
            "REQUESTS_CA_BUNDLE=C:\\CSC\\firewall.pem",
            "https_proxy=http://proxy.council.invalid:8080",
            "la_code=999",
            "SOMETHING_ELSE=1",
            "SOMETHING_ELSE=2",
        ],
    )
    result = run_cli(["test-db"], cwd=db_path.parent)
    assert result.code == ExitCode.OK, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: REQUESTS_CA_BUNDLE on line 3 of {env_file} is not read by this tool: the earlier tool's HTTP "
        "library took it from the environment. This tool's setting for it is CA_BUNDLE",
        f"warning: https_proxy on line 4 of {env_file} is not read, so it is ignored: write it in capitals, "
        "HTTPS_PROXY (the earlier tool read any case on Windows)",
        f"warning: la_code on line 5 of {env_file} is not read, so it is ignored: write it in capitals, LA_CODE "
        "(the earlier tool read any case on Windows)",
        f"warning: SOMETHING_ELSE on line 7 of {env_file} is not a setting of this tool, so it is ignored "
        "(configuration.md lists every setting)",
    ]


def test_the_earlier_tools_env_and_this_tools_example_give_no_warning(simulator, tmp_path) -> None:
    earlier = tmp_path / "earlier.env"
    earlier.write_text(earlier_env_example(simulator, sql_conn_str="sqlite:///staging.db"), encoding="utf-8")
    assert warnings_of(earlier) == []
    assert warnings_of(REPO / ".env.example") == []


# -- issue 26, item 2: the encodings Windows writes ------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE),  # Windows PowerShell 5.1: '>' and Out-File
        ("utf-16-be", codecs.BOM_UTF16_BE),
        ("utf-8", codecs.BOM_UTF8),  # Notepad's "UTF-8 with BOM"
        ("utf-8", b""),
    ],
)
def test_a_env_saved_as_utf16_or_with_a_byte_order_mark_is_read(db_path, encoding, bom) -> None:
    write_env(db_path.parent, ["# Büro: Łódź", *settings_lines(db_env(db_path))], encoding=encoding, bom=bom)
    result = run_cli(["test-db"], cwd=db_path.parent)
    assert result.code == ExitCode.OK, result.err
    assert "warning" not in result.err


def test_a_env_saved_as_ansi_names_the_line_and_says_save_it_as_utf8(db_path) -> None:
    env_file = write_env(db_path.parent, [*settings_lines(db_env(db_path)), "# für das Büro"], encoding="cp1252")
    result = run_cli(["test-db"], cwd=db_path.parent)
    assert result.code == ExitCode.USAGE
    assert result.err.startswith(f"error: the settings file {env_file} cannot be read: line 3 is not UTF-8 text")
    assert "save it as UTF-8" in result.err
    assert "--env-file" not in result.err  # none was given: the file was found beside the program
    given = run_cli(["test-db", "--env-file", str(env_file)], cwd=db_path.parent)
    assert given.code == ExitCode.USAGE and "line 3 is not UTF-8 text" in given.err


def test_a_env_saved_as_utf16_without_a_byte_order_mark_says_save_it_as_utf8(db_path) -> None:
    write_env(db_path.parent, settings_lines(db_env(db_path)), encoding="utf-16-le")
    result = run_cli(["test-db"], cwd=db_path.parent)
    assert result.code == ExitCode.USAGE
    assert "line 1 has NUL characters" in result.err and "save it as UTF-8" in result.err


# -- issue 26, item 3: Windows paths in quotes -------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ('"C:\\Logs\\new\\test"', "C:\\Logs\\new\\test"),  # \n and \t are a folder's names, not a new line and a tab
        ("'C:\\Logs\\new\\test'", "C:\\Logs\\new\\test"),
        ('"\\\\server\\share\\logs"', "\\\\server\\share\\logs"),  # python-dotenv would leave one leading backslash
        ("'\\\\server\\share\\logs'", "\\\\server\\share\\logs"),
        ('"C:\\\\Logs\\\\new"', "C:\\Logs\\new"),  # every backslash doubled, as written for escaping
        ('"\\\\\\\\server\\\\share"', "\\\\server\\share"),
        ("C:\\Logs\\new", "C:\\Logs\\new"),
    ],
)
def test_a_quoted_windows_path_keeps_its_backslashes(tmp_path, written, read) -> None:
    env_file = write_env(tmp_path, [f"{name}={written}" for name in ("LOG_DIR", "CA_BUNDLE", "PAYLOAD_SCHEMA")])
    settings = load_settings(command="demo", environ={}, env_file=env_file)
    assert str(settings.log_dir) == str(settings.ca_bundle) == str(settings.payload_schema) == read
    assert settings.warnings == ()


def test_a_quoted_sqlite_path_keeps_its_backslashes(tmp_path) -> None:
    env_file = write_env(tmp_path, ['DB_CONNECTION_STRING="sqlite:///C:\\data\\new.db"'])
    settings = load_settings(command="demo", environ={}, env_file=env_file)
    assert str(settings.sqlite_file) == "C:\\data\\new.db"


def test_a_quoted_relative_log_folder_is_made_as_written(simulator, db_path) -> None:
    insert(db_path, list(make_children(1, seed=263)))
    folder = db_path.parent
    write_env(folder, [*settings_lines(simulator.settings_env() | db_env(db_path)), 'LOG_DIR="runs\\nightly"'])
    result = run_cli(["run"], cwd=folder)
    assert result.code == ExitCode.OK, result.err
    assert list((folder / "runs\\nightly").glob("*.log"))  # on Linux a backslash is part of the name
    assert not any("\n" in path.name for path in folder.iterdir())


def test_other_settings_are_read_as_the_earlier_tool_read_them_with_a_warning_for_a_control_character(
    tmp_path,
) -> None:
    env_file = write_env(
        tmp_path,
        [
            'SQL_CONN_STR="Driver={ODBC Driver 17 for SQL Server};Server=SRV\\\\REPORTS;Database=HDM;UID=svc;"',
            'USER_SERVER="SRV\\new"',
            'USER_DATABASE="HDM"',
            'DB_PASSWORD="pa\\\\ss\\tword-Do-Not-Show"',
        ],
    )
    settings = load_settings(command="demo", environ={}, env_file=env_file)
    assert "Server=SRV\\REPORTS;" in settings.db_connection_string.reveal()  # \\ is one backslash, as before
    warnings = settings.warnings
    assert warnings == (
        f"USER_SERVER on line 2 of {env_file}: inside double quotes, \\n is read as a control character (a new line, "
        "a tab, ...), as python-dotenv and the earlier tool read it. For a backslash there, write it twice (\\\\) or "
        "put the value in single quotes",
        f"DB_PASSWORD on line 4 of {env_file}: inside double quotes, a backslash escape is read as a control "
        "character (a new line, a tab, ...), as python-dotenv and the earlier tool read it. For a backslash there, "
        "write it twice (\\\\) or put the value in single quotes",
    )


def test_a_backslash_before_the_closing_quote_is_named(tmp_path) -> None:
    env_file = write_env(tmp_path, ["LA_CODE=999", 'LOG_DIR="C:\\Logs\\"', "TABLE_NAME=t"])
    with pytest.raises(ConfigError) as caught:
        load_settings(command="demo", environ={}, env_file=env_file)
    (problem,) = caught.value.problems
    assert problem.startswith(f"LOG_DIR: line 2 of {env_file} cannot be read, so it would be ignored.")
    assert "A backslash just before the closing quote" in problem


def test_the_line_of_an_unreadable_setting_after_blank_lines_is_its_own(tmp_path) -> None:
    env_file = write_env(tmp_path, ["LA_CODE=999", "", "", "CLIENT_ID='abc"])
    with pytest.raises(ConfigError) as caught:
        load_settings(command="demo", environ={}, env_file=env_file)
    assert caught.value.problems[0].startswith(f"CLIENT_ID: line 4 of {env_file} cannot be read")
