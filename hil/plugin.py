"""pytest plugin for qkd-hil: options, markers and hooks. Thin: the work is done in hil/.

Options: ``--bench NAME|PATH`` (ini ``hil_bench``; default ``emulated``; a bench file or a bench
pool file, see hil/pool.py) and ``--results DIR`` (ini ``hil_results``; default ``results``).
Markers: ``emulator_only`` (needs the emulator's control instrument), ``needs(*roles)``.

With pytest-xdist (``-n N``) the controller names the run folder and gives it to the workers;
each worker opens its own bench (its own emulator, or one bench of a pool under a lock) and
sends its verdicts, series and bench identity back on its test reports; the controller writes
the one summary of the session. A session in which every test was skipped exits with
:data:`EXIT_ALL_SKIPPED`.
"""

from __future__ import annotations

import re

import pytest

from .config import EMULATOR, ConfigError, load_bench
from .criteria import load_criteria
from .pool import is_pool_file, load_pool
from .report import (
    Run,
    allure_attach_test,
    allure_dir,
    plan_criteria_files,
    terminal_lines,
    write_allure_environment,
)
from .roles import ROLES

# Exit status of a session whose tests were all skipped (e.g. a bench without the instruments the
# plan needs): pytest's own "no tests ran", so that CI treats it as it treats an empty selection.
EXIT_ALL_SKIPPED = pytest.ExitCode.NO_TESTS_COLLECTED


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "qkd-hil test bench")
    group.addoption(
        "--bench",
        dest="hil_bench",
        default=None,
        metavar="NAME|PATH",
        help="bench file, bench pool file, or the name of a shipped bench (default: emulated)",
    )
    group.addoption(
        "--results",
        dest="hil_results",
        default=None,
        metavar="DIR",
        help="folder for run outputs, one sub-folder per run (default: results)",
    )
    group.addoption(
        "--metrics",
        dest="hil_metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve the link's metrics (OpenMetrics) for Prometheus here while the plan runs",
    )
    group.addoption(
        "--syslog",
        dest="hil_syslog",
        default=None,
        metavar="[udp://|tcp://]HOST:PORT",
        help="also send the run's event log as RFC 5424 syslog to this collector",
    )
    parser.addini("hil_bench", "bench file or shipped bench name", default="emulated")
    parser.addini("hil_results", "folder for run outputs", default="results")
    parser.addini("hil_metrics", "HOST:PORT to serve metrics on (default: none)", default="")
    parser.addini("hil_syslog", "syslog collector for the event log (default: none)", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "emulator_only: needs the emulator's control instrument (skipped on a bench without it)",
    )
    config.addinivalue_line("markers", "needs(*roles): skip unless the bench has these roles")
    config._hil_state = {}
    config._hil_run = None
    if config.option.help:
        return
    bench_name = config.getoption("hil_bench") or config.getini("hil_bench")
    try:
        if is_pool_file(bench_name):
            pool, spec = load_pool(bench_name), None
            path = pool.path
        else:
            pool = None
            spec, path = load_bench(bench_name)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config._hil_pool = pool
    config._hil_bench_path = path
    config._hil_criteria_files = None
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        _check_workers(config, pool, spec, path)
        results = config.getoption("hil_results") or config.getini("hil_results")
        config._hil_run = Run(results, create=False)
    else:
        # a pytest-xdist worker: the controller named the run folder every worker shares
        config._hil_run = Run(
            workerinput.get("hil_results")
            or config.getoption("hil_results")
            or config.getini("hil_results"),
            workerinput.get("hil_run_id"),
            create=False,
        )
    _start_metrics(config, pool.path.stem if pool is not None else spec.name)
    # fixtures live in hil.fixtures (plugin -> fixtures, per DESIGN.md)
    from hil.fixtures import plugin_fixtures

    config.pluginmanager.register(plugin_fixtures, "hil-fixtures")
    config.pluginmanager.register(_Session(config), "hil-session")


def _start_metrics(config: pytest.Config, link: str) -> None:
    """--metrics HOST:PORT: serve the metrics from this process (one process: not with -n)."""
    address = config.getoption("hil_metrics") or config.getini("hil_metrics")
    syslog = config.getoption("hil_syslog") or config.getini("hil_syslog")
    if syslog:
        from .telemetry.events import parse_syslog_target

        try:
            parse_syslog_target(syslog)
        except ValueError as exc:
            raise pytest.UsageError(f"--syslog: {exc}") from None
    if not address or hasattr(config, "workerinput"):
        return
    n = getattr(config.option, "numprocesses", None)
    if isinstance(n, int) and n > 1:
        raise pytest.UsageError(
            f"--metrics {address}: one endpoint serves one process's monitor; run without -n"
        )
    from .telemetry import metrics

    try:
        tel = metrics.start(address, link=link)
    except (ValueError, OSError) as exc:
        raise pytest.UsageError(f"--metrics {address}: {exc}") from None
    config._hil_state["metrics"] = tel


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Around the ``bench`` fixture: open the run's event log first (the bench's errors are
    events), and once the bench is open let the metrics poll it until its teardown."""
    if (
        fixturedef.argname != "bench"
        or getattr(fixturedef.func, "__module__", "") != "hil.fixtures.plugin_fixtures"
        or not hasattr(request.config, "_hil_run")
    ):
        yield  # a test module's own bench fixture opens no run folder
        return
    from .telemetry import events

    config = request.config
    run, worker = config._hil_run, _worker(config)
    syslog = config.getoption("hil_syslog") or config.getini("hil_syslog") or None
    try:
        events.open_log(run.dir / f"events{'-' + worker if worker else ''}.jsonl", syslog)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"event log in {run.dir}: {exc}") from None
    outcome = yield
    if outcome.excinfo is not None:
        events.emit("bench_error", error=config._hil_state.get("bench_error") or "bench")
        return
    bench = fixturedef.cached_result[0]
    if not hasattr(bench, "instruments"):
        return
    events.watch_instruments(bench)
    events.emit(
        "bench_open",
        bench=bench.spec.name,
        emulated=bench.emulated,
        resources={r: i.resource_name for r, i in bench.instruments.items()},
    )
    tel = config._hil_state.get("metrics")
    if tel is not None:
        tel.watch_bench(bench)
        fixturedef.addfinalizer(tel.unwatch_bench)  # runs before the bench closes (LIFO)


def _check_workers(config: pytest.Config, pool, spec, path) -> None:
    """Refuse -n N that would give two workers one set of instruments, or wait for a bench that
    no one will release during the session."""
    n = getattr(config.option, "numprocesses", None)
    if not isinstance(n, int) or n <= 1:
        return
    if pool is not None:
        if n > len(pool.benches):
            raise pytest.UsageError(
                f"{path}: the pool lists {len(pool.benches)} benches for {n} workers (-n {n}): "
                "each worker needs a bench of its own"
            )
    elif any(i.resource != EMULATOR for i in spec.instruments.values()):
        raise pytest.UsageError(
            f"{path}: a hardware bench serves one worker: run without -n, or name a bench pool "
            f"of {n} benches with --bench (README: Parallel benches)"
        )


def _worker(config: pytest.Config) -> str:
    """The pytest-xdist worker id (gw0, gw1, ...); "" in the controller or without xdist."""
    return getattr(config, "workerinput", {}).get("workerid", "")


def _is_bench_error(exc: BaseException) -> bool:
    """An exception that says the bench failed the test (an action not issued on time, an
    instrument that stopped answering), as opposed to a measured result."""
    from .bench import BenchError
    from .capture import BenchTimingError

    return isinstance(exc, (BenchTimingError, BenchError))


def _outcome(report: pytest.TestReport) -> str:
    """passed/failed/skipped/xfailed/xpassed for the call; error or skipped for setup and
    teardown; "" for a setup or teardown that passed (it says nothing of the test)."""
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        if report.failed and getattr(report, "hil_bench_error", False):
            return "error"  # the bench could not do what the test asked: not a result
        return report.outcome
    if report.failed:
        return "error"
    return "skipped" if report.skipped else ""


def _message(report: pytest.TestReport) -> str:
    """The one-line reason of a failure, error or skip (the first line of the exception's or
    pytest.fail's message, without pytest's "Failed: " prefix)."""
    if report.passed and not hasattr(report, "wasxfail"):
        return ""
    if hasattr(report, "wasxfail") and report.passed:
        text = f"xpassed: {report.wasxfail}"
    elif isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        text = str(report.longrepr[2])
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else report.longreprtext
    # pytest-xdist heads a crashed worker's report with "[gw0] linux -- Python ..."
    lines = [
        line.strip()
        for line in str(text).splitlines()
        if line.strip() and not re.match(r"\[gw\d+\] ", line)
    ]
    first = lines[0] if lines else ""
    for prefix in ("Failed: ", "Skipped: "):
        first = first.removeprefix(prefix)
    return first[:500]


class _Session:
    """Hooks that keep per-session state: test outcomes, interruption, pytest-xdist."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.worker = _worker(config)
        self.running = ""

    @property
    def run(self) -> Run:
        return self.config._hil_run

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.running = nodeid

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.running = ""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.worker:
            return  # the controller records every report, its own summary is the one
        data = getattr(report, "hil", None)  # what a worker's run gained (see makereport)
        if data:
            self.run.merge(data, worker=getattr(report, "worker_id", "") or "")
        outcome = _outcome(report)
        if outcome:
            self.run.record_test(report.nodeid, outcome, _message(report))

    def pytest_deselected(self, items) -> None:
        self.run.deselected += len(items)

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        what = str(excinfo.value).strip()
        what = f"{excinfo.typename}: {what}" if what else excinfo.typename
        where = f" during {self.running}" if self.running else ""
        self.run.interrupted = f"{what}{where}"

    # -- pytest-xdist (optional hooks: defined only when xdist is installed) --------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        node.workerinput["hil_run_id"] = self.run.run_id
        node.workerinput["hil_results"] = str(self.run.results_dir.resolve())

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        # the controller collects nothing itself: the workers' test ids name the plan's files
        if self.config._hil_criteria_files is None:
            root = self.config.rootpath
            files = plan_criteria_files(
                (root / i.split("::")[0] for i in ids), base=self.config.invocation_params.dir
            )
            self.config._hil_criteria_files = files
            error = _bad_criteria(files)
            if error:  # a UsageError here would be an xdist internal error: exit as one
                self.config._hil_state["usage_error"] = error  # and leave no run folder
                pytest.exit(error, returncode=pytest.ExitCode.USAGE_ERROR)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        out = getattr(node, "workeroutput", None) or {}
        self.run.deselected = max(self.run.deselected, int(out.get("hil_deselected", 0)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("emulator_only"):
            item.fixturenames.append("_hil_require_control")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("needs")
    state = getattr(item.config, "_hil_state", {})
    if state.get("bench_error") and "bench" in item.fixturenames:
        # reported once, by the first test that needed the bench; here a reference only
        run = item.config._hil_run
        pytest.skip(f"bench did not open: see the first error above and {run.dir}/summary.json")
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
        if call.excinfo is not None and _is_bench_error(call.excinfo.value):
            report.hil_bench_error = True  # reported as an error of the bench, not a FAIL
            from .telemetry.events import emit

            emit("bench_error", test=item.nodeid, error=_message(report))
    run = getattr(item.config, "_hil_run", None)
    if run is not None and _worker(item.config):
        # pytest-xdist carries a report's attributes to the controller: the verdicts, series
        # and bench identity this worker gained ride on the report of the phase that made them
        data = run.export_new()
        if data:
            report.hil = data


def _bad_criteria(files) -> str:
    """The one-line error of the first criteria file that does not load, or ""."""
    for path in files:
        try:
            load_criteria(path)
        except ConfigError as exc:
            return str(exc)
    return ""


def pytest_collection_finish(session: pytest.Session) -> None:
    # the plan's criteria files, so that criteria no test measured are reported as such
    files = plan_criteria_files(
        (i.path for i in session.items), base=session.config.invocation_params.dir
    )
    session.config._hil_criteria_files = files
    # a bad criteria file stops the plan with one line, as a bad bench file (the controller of
    # pytest-xdist workers says it once, see pytest_xdist_node_collection_finished)
    error = "" if _worker(session.config) else _bad_criteria(files)
    if error:
        session.config._hil_state["usage_error"] = error  # no run folder for a plan not started
        raise pytest.UsageError(error)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    run = getattr(item.config, "_hil_run", None)
    if run is not None:
        run.set_current_test(item.nodeid)  # series and verdicts belong to the running test
    yield
    if run is not None:
        run.set_current_test("")
        if allure_dir(item.config) and (run.verdicts or run.series):
            allure_attach_test(run, item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    run = getattr(config, "_hil_run", None)
    if run is None:
        return
    if _worker(config):
        config.workeroutput["hil_deselected"] = run.deselected
        from .telemetry.events import close_log

        close_log()
        return
    if config._hil_state.get("usage_error") or config.option.collectonly:
        return
    files = getattr(config, "_hil_criteria_files", None) or []
    # a session that used no bench, judged nothing and ran no plan leaves no run folder
    if not (run.created or run.has_data or files):
        return
    run.selected = session.testscollected
    if exitstatus == pytest.ExitCode.INTERRUPTED and not run.interrupted:
        run.interrupted = "the session was interrupted"
    stop = session.shouldfail or session.shouldstop
    if stop and not run.interrupted and len(run.outcomes) < run.selected:
        run.interrupted = stop if isinstance(stop, str) else "the session stopped early"
    for path in files:
        run.add_criteria_file(path)
    run.finish()
    if allure_dir(config):
        write_allure_environment(allure_dir(config), run)
    if run.all_skipped() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = EXIT_ALL_SKIPPED
        config._hil_state["exit_note"] = (
            f"exit status {int(EXIT_ALL_SKIPPED)}: every test was skipped, nothing was tested"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    from .telemetry import events

    events.close_log()  # a run that wrote no summary (or a worker's) leaves its log closed
    if getattr(config, "_hil_state", {}).get("metrics") is not None:
        from .telemetry import metrics

        metrics.stop()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    run = getattr(config, "_hil_run", None)
    if run is None or not run.created or _worker(config):
        return
    tr = terminalreporter
    tr.section("qkd-hil verdicts")
    for text, outcome in terminal_lines(run):
        markup = {
            "PASS": {"green": True},
            "MARGINAL": {"yellow": True, "bold": True},
            "FAIL": {"red": True, "bold": True},
            "NOT RUN": {"red": True, "bold": True},
            "INCOMPLETE": {"yellow": True},
        }.get(outcome, {})
        tr.write_line(text, **markup)
    note = config._hil_state.get("exit_note")
    if note:
        tr.write_line(note, yellow=True)
    tr.write_line(f"run folder: {run.dir}  (summary.html, summary.json, manifest.sha256)")
