"""pytest plugin for qkd-hil: options, markers and hooks. Thin: the work is done in hil/.

Options: ``--bench NAME|PATH`` (ini ``hil_bench``; default ``emulated``) and ``--results DIR``
(ini ``hil_results``; default ``results``). Markers: ``emulator_only`` (needs the emulator's
control instrument), ``needs(*roles)``.
"""

from __future__ import annotations

import pytest

from .config import ConfigError, load_bench
from .criteria import load_criteria
from .report import (
    Run,
    allure_attach_test,
    allure_dir,
    plan_criteria_files,
    terminal_lines,
    write_allure_environment,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "qkd-hil test bench")
    group.addoption(
        "--bench",
        dest="hil_bench",
        default=None,
        metavar="NAME|PATH",
        help="bench file, or the name of a shipped bench (default: emulated)",
    )
    group.addoption(
        "--results",
        dest="hil_results",
        default=None,
        metavar="DIR",
        help="folder for run outputs, one sub-folder per run (default: results)",
    )
    parser.addini("hil_bench", "bench file or shipped bench name", default="emulated")
    parser.addini("hil_results", "folder for run outputs", default="results")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "emulator_only: needs the emulator's control instrument (skipped on a bench without it)",
    )
    config.addinivalue_line("markers", "needs(*roles): skip unless the bench has these roles")
    config._hil_state = {}
    if config.option.help:
        return
    bench_name = config.getoption("hil_bench") or config.getini("hil_bench")
    try:
        _, path = load_bench(bench_name)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config._hil_bench_path = path
    config._hil_run = None
    config._hil_results = config.getoption("hil_results") or config.getini("hil_results")
    # fixtures live in hil.fixtures (plugin -> fixtures, per DESIGN.md)
    from hil.fixtures import plugin_fixtures

    config.pluginmanager.register(plugin_fixtures, "hil-fixtures")


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "_hil_bench_path") and getattr(config, "workerinput", None) is None:
        config._hil_run = _LazyRun(config._hil_results)


class _LazyRun:
    """Creates the run folder on first use, so a session that uses no bench leaves none."""

    def __init__(self, results_dir: str):
        self._results_dir = results_dir
        self._run: Run | None = None

    @property
    def created(self) -> bool:
        return self._run is not None

    def __getattr__(self, name: str):
        if self._run is None:
            self._run = Run(self._results_dir)
        return getattr(self._run, name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("emulator_only"):
            item.fixturenames.append("_hil_require_control")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("needs")
    state = getattr(item.config, "_hil_state", {})
    criteria_file = item.path.with_name("criteria.yaml")
    state["criteria_file"] = criteria_file if criteria_file.exists() else None
    bench = state.get("bench")
    if bench is not None:
        bench.criteria_file = state["criteria_file"]
        for role in sorted(_needed_roles(item) & set(bench.broken)):
            pytest.skip(f"{role} is broken: {bench.broken[role]}")
    if marker and bench is not None:
        for role in marker.args:
            if not bench.has(role):
                pytest.skip(f"the bench has no {role!r} instrument")


ROLES = ("source", "attenuator", "switch", "detectors", "tagger", "powermeter", "control")


def _needed_roles(item: pytest.Item) -> set[str]:
    """The roles a test uses: its role fixtures and ``needs`` marker; a test that asks for the
    whole ``bench`` may use any."""
    roles = {r for r in ROLES if r in item.fixturenames}
    for m in item.iter_markers("needs"):
        roles.update(m.args)
    if not roles and "bench" in item.fixturenames:
        roles = set(ROLES)
    return roles


def _check_health(item: pytest.Item, call) -> None:
    """After a failure: an instrument that stopped answering marks the bench broken."""
    state = getattr(item.config, "_hil_state", {})
    bench = state.get("bench")
    if bench is None or call.excinfo is None:
        return
    from .instruments.base import InstrumentError

    exc = call.excinfo.value
    while exc is not None and not isinstance(exc, InstrumentError):
        exc = exc.__cause__ or exc.__context__
    if exc is not None and exc.unreachable:
        bench.mark_broken(exc.instrument, str(exc))
    emu = bench.emulator
    if emu is not None and emu.proc is not None and not emu.alive():
        why = f"the emulator process exited (code {emu.proc.returncode})"
        for role in bench.instruments:
            bench.mark_broken(role, why)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _check_health(item, call)
    run = getattr(item.config, "_hil_run", None)
    if run is not None and run.created and (report.when == "call" or report.outcome != "passed"):
        run.outcomes[item.nodeid] = report.outcome


def pytest_collection_finish(session: pytest.Session) -> None:
    # the plan's criteria files, so that criteria no test measured are reported as such
    files = plan_criteria_files(
        (i.path for i in session.items), base=session.config.invocation_params.dir
    )
    for path in files:  # a bad criteria file stops the plan with one line, as a bad bench file
        try:
            load_criteria(path)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    session.config._hil_criteria_files = files


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    run = getattr(item.config, "_hil_run", None)
    uses_run = run is not None and (run.created or "run" in getattr(item, "fixturenames", ()))
    if uses_run:
        run.set_current_test(item.nodeid)  # series and verdicts belong to the running test
    yield
    if uses_run:
        run.set_current_test("")
        if allure_dir(item.config):
            allure_attach_test(run, item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = getattr(session.config, "_hil_run", None)
    if run is not None and run.created:
        for path in getattr(session.config, "_hil_criteria_files", []):
            run.add_criteria_file(path)
        run.finish()
        if allure_dir(session.config):
            write_allure_environment(allure_dir(session.config), run)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    run = getattr(config, "_hil_run", None)
    if run is None or not run.created:
        return
    tr = terminalreporter
    tr.section("qkd-hil verdicts")
    for text, outcome in terminal_lines(run):
        markup = {
            "PASS": {"green": True},
            "MARGINAL": {"yellow": True, "bold": True},
            "FAIL": {"red": True, "bold": True},
        }.get(outcome, {})
        tr.write_line(text, **markup)
    tr.write_line(f"run folder: {run.dir}  (summary.html, summary.json, manifest.sha256)")
