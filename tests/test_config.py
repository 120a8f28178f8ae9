"""Hostile bench files: each malformed file in tests/data/bench_bad is refused in one line that
names the file, the line and the problem; none is accepted, none ends in a traceback. Drivers come
only from the registry in hil.roles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hil import roles
from hil.config import MAX_BYTES, ConfigError, load_bench, load_yaml
from hil.criteria import load_criteria

ROOT = Path(__file__).resolve().parent.parent
BAD_DIR = Path(__file__).parent / "data" / "bench_bad"
BAD = sorted(BAD_DIR.glob("*.yaml"))

DRIVER_CHOICES = "installed drivers: " + ", ".join(sorted(roles.DRIVERS))

# file -> (line, key path or None, the specific problem the message must state). The message
# must begin "FILE:LINE: KEY: " (or "FILE:LINE: " where no key applies) and contain the problem.
EXPECT: dict[str, tuple[int | None, str | None, str]] = {
    # aliases
    "billion_laughs.yaml": (7, "e", "more than 50000 values once aliases are expanded (at *d"),
    "quadratic_blowup.yaml": (3, "d", "characters of values once aliases are expanded (at *s"),
    "alias_to_itself.yaml": (3, "source", "alias *i refers to a value containing it"),
    "alias_undefined.yaml": (1, "name", "found undefined alias 'lab'"),
    "anchor_twice.yaml": (1, "name", "found duplicate anchor 'n'"),
    # duplicate keys, at every depth
    "duplicate_key_top.yaml": (3, "name", "duplicate key (first given on line 1)"),
    "duplicate_role.yaml": (5, "instruments.source", "duplicate key (first given on line 3)"),
    "duplicate_key_instrument.yaml": (
        6,
        "instruments.source.timeout_s",
        "duplicate key (first given on line 5)",
    ),
    "duplicate_key_flow.yaml": (
        3,
        "instruments.source.resource",
        "duplicate key (first given on line 3)",
    ),
    "duplicate_key_options.yaml": (
        7,
        "instruments.source.options.baud_rate",
        "duplicate key (first given on line 6)",
    ),
    "duplicate_key_emulator.yaml": (4, "emulator.seed", "duplicate key (first given on line 3)"),
    # text
    "not_utf8.yaml": (2, None, "not UTF-8 text: byte 0xe9 at offset 26"),
    "utf16_bom.yaml": (1, None, "UTF-16 text (byte-order mark); save the file as UTF-8"),
    "utf16_without_bom.yaml": (1, None, "control character U+0000 at byte offset 1"),
    "nul_byte.yaml": (3, None, "control character U+0000 at byte offset 40"),
    "escape_character.yaml": (1, None, "control character U+001B at byte offset 9"),
    "tab_indent.yaml": (3, "instruments.source", "found character '\\t' that cannot start"),
    "unclosed_flow.yaml": (2, "instruments", "invalid YAML: while parsing a flow mapping"),
    "bad_indent.yaml": (
        5,
        "instruments.source.timeout_s",
        "invalid YAML: mapping values are not allowed here",
    ),
    # depth
    "deep_nesting_flow.yaml": (3, "x", "nested deeper than 32 levels"),
    "deep_nesting_block.yaml": (34, None, "nested deeper than 32 levels"),
    # shape
    "empty.yaml": (1, "(top level)", "expected a mapping, got NoneType"),
    "only_comments.yaml": (1, "(top level)", "expected a mapping, got NoneType"),
    "top_level_list.yaml": (1, "(top level)", "expected a mapping, got list"),
    "top_level_scalar.yaml": (1, "(top level)", "expected a mapping, got str"),
    "multiple_documents.yaml": (1, "name", "but found another document on line 3"),
    "complex_key.yaml": (3, "instruments", "a key must be a plain value, not a list"),
    "instruments_list.yaml": (2, "instruments", "valid dictionary, got a list"),
    "instrument_null.yaml": (3, "instruments.source", "got nothing (null)"),
    "name_missing.yaml": (1, "name", "required key is missing"),
    "name_number.yaml": (1, "name", "valid string, got the number 12"),
    "name_control_character.yaml": (1, "name", "holds a control character"),
    "role_number.yaml": (3, "instruments.1", "key: Input should be a valid string"),
    "unknown_key_top.yaml": (3, "safestate", "unknown key"),
    "unknown_key_instrument.yaml": (5, "instruments.source.timeout", "unknown key"),
    "unknown_role.yaml": (3, "instruments.laser", "unknown role 'laser'; roles are source,"),
    # tags: nothing but plain data is constructed
    "python_tag.yaml": (1, "name", "could not determine a constructor for the tag"),
    "unknown_tag.yaml": (1, "name", "could not determine a constructor for the tag '!secret'"),
    "bool_tag_not_bool.yaml": (3, "safe_state", "'maybe' is not a valid tag:yaml.org,2002:bool"),
    # booleans
    "safe_state_string.yaml": (3, "safe_state", "valid boolean, got the string 'false'"),
    "safe_state_yes.yaml": (3, "safe_state", "valid boolean, got the string 'yes'"),
    "safe_state_number.yaml": (3, "safe_state", "valid boolean, got the number 0"),
    "check_errors_string.yaml": (
        5,
        "instruments.source.check_errors",
        "valid boolean, got the string 'yes'",
    ),
    "check_errors_null.yaml": (5, "instruments.source.check_errors", "valid boolean, got nothing"),
    # numbers
    "timeout_string.yaml": (5, "instruments.source.timeout_s", "valid number, got the string '5'"),
    "timeout_bool.yaml": (5, "instruments.source.timeout_s", "valid number, got the boolean true"),
    "timeout_negative.yaml": (
        5,
        "instruments.source.timeout_s",
        "greater than 0, got the number -1",
    ),
    "timeout_zero.yaml": (5, "instruments.source.timeout_s", "greater than 0, got the number 0"),
    "timeout_nan.yaml": (5, "instruments.source.timeout_s", "finite number, got the number nan"),
    "timeout_infinite.yaml": (5, "instruments.source.timeout_s", "finite number"),
    "timeout_huge.yaml": (5, "instruments.source.timeout_s", "less than or equal to 600"),
    "timeout_list.yaml": (5, "instruments.source.timeout_s", "valid number, got a list"),
    "seed_float.yaml": (3, "emulator.seed", "valid integer, got the number 1.5"),
    "seed_string.yaml": (3, "emulator.seed", "valid integer, got the string '1'"),
    "seed_huge.yaml": (3, "emulator.seed", "an integer of 400 digits (at most 30)"),
    "seed_above_63_bits.yaml": (3, "emulator.seed", "less than or equal to 9223372036854775807"),
    "seed_negative.yaml": (3, "emulator.seed", "greater than or equal to 0, got the number -1"),
    "start_timeout_string.yaml": (
        3,
        "emulator.start_timeout_s",
        "valid number, got the string '2 min'",
    ),
    # drivers: registry names only
    "driver_unknown.yaml": (
        5,
        "instruments.source.driver",
        f"unknown driver 'FancySource'; {DRIVER_CHOICES}",
    ),
    "driver_dotted_path.yaml": (
        5,
        "instruments.source.driver",
        f"unknown driver 'os.system' (drivers are registry names, not import paths); "
        f"{DRIVER_CHOICES}",
    ),
    "driver_module_colon.yaml": (
        5,
        "instruments.source.driver",
        "unknown driver 'subprocess:Popen' (drivers are registry names",
    ),
    "driver_old_dotted_name.yaml": (
        5,
        "instruments.source.driver",
        "(write 'QKDSource': drivers are named, not imported by path)",
    ),
    "driver_not_string.yaml": (5, "instruments.source.driver", "valid string, got a list"),
    # resources and options
    "resource_not_visa.yaml": (
        4,
        "instruments.source.resource",
        "'TCPIP::10.0.0.5:5025' is not a VISA resource string",
    ),
    "resource_port_out_of_range.yaml": (
        4,
        "instruments.source.resource",
        "port 70000 is not in 1..65535",
    ),
    "resource_number.yaml": (4, "instruments.source.resource", "valid string, got the number"),
    "resource_shell.yaml": (
        4,
        "instruments.source.resource",
        "'$(reboot)' is not a VISA resource string",
    ),
    "emulator_without_section.yaml": (
        4,
        "instruments.source.resource",
        "'emulator' needs an 'emulator:' section",
    ),
    "option_unknown.yaml": (
        6,
        "instruments.source.options.visalib",
        "unknown option 'visalib'; options are baud_rate,",
    ),
    "option_nested_value.yaml": (
        6,
        "instruments.source.options.baud_rate",
        "an option is a number, string or boolean, not a dict",
    ),
}


def _expected_start(path: Path, line: int | None, key: str | None) -> str:
    return f"{path}" + (f":{line}" if line else "") + (f": {key}: " if key else ": ")


def test_the_corpus_has_at_least_40_files_each_with_an_expected_error():
    assert len(BAD) >= 40
    assert sorted(p.name for p in BAD) == sorted(EXPECT)
    assert all(p.stat().st_size <= 16_384 for p in BAD)  # tiny files; the big one is generated


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_bench_file_is_refused_in_one_line_naming_file_line_and_problem(path):
    line, key, problem = EXPECT[path.name]
    with pytest.raises(ConfigError) as info:
        load_bench(path)
    text = str(info.value)
    assert "\n" not in text and "\r" not in text, text
    assert len(text) < 400, text
    assert text.startswith(_expected_start(path, line, key)), text
    assert problem in text, text


def _pytest_with_bench(bench: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "test_nothing.py").write_text("def test_x():\n    pass\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--bench", str(bench)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


# the bomb, and one of each kind: key, encoding, depth, type, driver
CLI_CASES = [
    "billion_laughs.yaml",
    "duplicate_role.yaml",
    "not_utf8.yaml",
    "deep_nesting_flow.yaml",
    "safe_state_string.yaml",
    "driver_dotted_path.yaml",
]


@pytest.mark.parametrize("name", CLI_CASES, ids=[Path(n).stem for n in CLI_CASES])
def test_pytest_with_a_malformed_bench_prints_one_line_and_exits_4(name, tmp_path):
    path = BAD_DIR / name
    with pytest.raises(ConfigError) as info:
        load_bench(path)
    result = _pytest_with_bench(path, tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    out = [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]
    assert out == [f"ERROR: {info.value}"], out
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["billion_laughs.yaml", "not_utf8.yaml"])
def test_hil_run_with_a_malformed_bench_prints_one_line_and_fails(name, tmp_path):
    path = BAD_DIR / name
    (tmp_path / "test_nothing.py").write_text("def test_x():\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", "test_nothing.py", "--bench", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert len(out) == 1 and out[0].startswith(f"ERROR: {path}:"), out
    assert EXPECT[name][2] in out[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_five_megabyte_file_is_refused_without_being_read_whole(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"name: lab\ninstruments: {}\ndescription: " + b"x" * (5 << 20) + b"\n")
    with pytest.raises(ConfigError) as info:
        load_bench(big)
    assert str(info.value) == f"{big}: larger than {MAX_BYTES} bytes (1 MiB); not a bench file?"
    result = _pytest_with_bench(big, tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert [x for x in result.stderr.splitlines() if x.strip()] == [f"ERROR: {info.value}"]


def test_a_device_or_folder_is_not_read_as_a_bench(tmp_path):
    with pytest.raises(ConfigError, match=r"^/dev/zero: not a regular file$"):
        load_bench("/dev/zero")
    with pytest.raises(ConfigError, match=r": not a regular file$"):
        load_yaml(tmp_path)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("billion_laughs.yaml", "more than 50000 values once aliases are expanded"),
        ("not_utf8.yaml", "not UTF-8 text: byte 0xe9"),
        ("deep_nesting_flow.yaml", "nested deeper than 32 levels"),
        ("utf16_bom.yaml", "UTF-16 text"),
    ],
)
def test_criteria_files_are_read_by_the_same_bounded_loader(name, problem):
    with pytest.raises(ConfigError) as info:
        load_criteria(BAD_DIR / name)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{BAD_DIR / name}:"), text
    assert problem in text, text


# ----------------------------------------------------------------------------- what is accepted


def test_the_shipped_emulated_bench_loads():
    bench, path = load_bench(ROOT / "fixtures" / "benches" / "emulated.yaml")
    assert bench.name == "emulated" and bench.safe_state is True
    assert set(bench.instruments) == set(roles.ROLES)
    assert bench.instruments["tagger"].timeout_s == 20.0
    assert load_bench("emulated")[0] == bench


def test_aliases_within_the_bounds_and_yaml_1_2_scalars_are_accepted(tmp_path):
    f = tmp_path / "lab.yaml"
    f.write_text(
        textwrap.dedent(
            """\
            name: lab
            description: no            # YAML 1.2: a string, not false
            instruments:
              source: &scpi
                resource: "TCPIP::10.0.0.5::5025::SOCKET"
                timeout_s: 1.5e1
                check_errors: false
              detectors:
                <<: *scpi
                resource: "TCPIP::10.0.0.6::5025::SOCKET"
                driver: DetectorUnit
              switch:
                resource: "ASRL/dev/ttyUSB0::INSTR"
                options: {baud_rate: 9600, flow_control: 0}
            safe_state: true
            """
        )
    )
    bench, _ = load_bench(f)
    assert bench.description == "no"
    assert bench.instruments["source"].timeout_s == 15.0
    det = bench.instruments["detectors"]
    assert (det.resource, det.timeout_s, det.check_errors) == (
        "TCPIP::10.0.0.6::5025::SOCKET",
        15.0,
        False,
    )
    assert bench.instruments["switch"].options == {"baud_rate": 9600, "flow_control": 0}


def test_pydantic_errors_keep_the_line_of_their_key(tmp_path):
    f = tmp_path / "lab.yaml"
    f.write_text("name: lab\n\n# comment\ninstruments:\n  tagger:\n\n    timeout_s: 5\n")
    with pytest.raises(ConfigError) as info:
        load_bench(f)
    assert str(info.value) == f"{f}:5: instruments.tagger.resource: required key is missing"


# ----------------------------------------------------------------------------- driver registry


def test_every_role_has_a_registered_default_driver_that_imports():
    from hil.instruments.base import Instrument

    assert set(roles.DEFAULT_DRIVERS) == set(roles.ROLES)
    for role, name in roles.DEFAULT_DRIVERS.items():
        klass = roles.driver_class(name)
        assert issubclass(klass, Instrument) and klass.__name__ == name, role


@pytest.mark.parametrize("name", ["os.system", "subprocess:Popen", "hil.bench.Bench", "", None])
def test_driver_class_imports_nothing_outside_the_registry(name):
    before = set(sys.modules)
    with pytest.raises(ConfigError) as info:
        roles.driver_class(name)
    assert str(info.value).startswith(f"unknown driver {name!r}")
    assert str(info.value).endswith(DRIVER_CHOICES)
    assert set(sys.modules) == before


def test_hil_schema_bench_offers_the_roles_registered_drivers_and_options():
    result = subprocess.run(
        [sys.executable, "-m", "hil.cli", "schema", "bench"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["properties"]["instruments"]["propertyNames"] == {"enum": list(roles.ROLES)}
    spec = schema["$defs"]["InstrumentSpec"]["properties"]
    assert {"enum": sorted(roles.DRIVERS)} in spec["driver"]["anyOf"]
    assert "baud_rate" in spec["options"]["propertyNames"]["enum"]
    assert schema["$defs"]["InstrumentSpec"]["additionalProperties"] is False
