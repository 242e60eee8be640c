"""The tests' own helpers: waiting on a condition, and processes that end with the test that started
them, or with pytest when it is interrupted (Ctrl-C, `kill`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import alive, started, terminal_sigint, wait_until

TESTS = Path(__file__).resolve().parent

# A process that starts two more that sleep, one in a process group of its own (as `timeout` starts
# its command: a Ctrl-C in the terminal does not reach it), one in a session of its own, and writes
# the three pids to the file named by its argument.
FAMILY = textwrap.dedent(
    """
    import os, subprocess, sys, time
    sleep = "import time; time.sleep(600)"
    group = subprocess.Popen([sys.executable, "-c", "import os; os.setpgid(0, 0); " + sleep])
    session = subprocess.Popen([sys.executable, "-c", sleep], start_new_session=True)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {group.pid} {session.pid}")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
    """
)


def pids(path: Path) -> list[int] | None:
    return [int(p) for p in path.read_text().split()] if path.exists() else None


def test_wait_until_returns_what_the_condition_returned_or_fails_naming_what_it_waited_for():
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3 and "done", every=0.001) == "done"
    with pytest.raises(AssertionError, match="waited 0.05 s for the moon"):
        wait_until(lambda: None, timeout=0.05, what="the moon", every=0.01)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds a process's descendants in /proc")
def test_a_stopped_process_ends_with_everything_it_started(tmp_path):
    with started([sys.executable, "-c", FAMILY, str(tmp_path / "family")]):
        family = wait_until(lambda: pids(tmp_path / "family"), what="the family's pids")
        assert all(alive(pid) for pid in family)
    wait_until(lambda: not any(alive(pid) for pid in family), timeout=30, what=f"{family} to end")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds a process's descendants in /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_an_interrupted_pytest_leaves_no_process_of_its_tests_running(tmp_path, signum):
    """pytest, run on a test that started two process families (one stopped by the test's own `with`
    block, one left to conftest's end of session), is interrupted while the test waits: both end."""
    (tmp_path / "family.py").write_text(FAMILY)
    (tmp_path / "test_waits.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            from helpers import start, started, wait_until

            def test_waits():
                start([sys.executable, {str(tmp_path / "family.py")!r}, {str(tmp_path / "left")!r}])
                with started([sys.executable, {str(tmp_path / "family.py")!r}, {str(tmp_path / "held")!r}]):
                    wait_until(lambda: False, timeout=600, what="an interrupt")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    # the real conftest (-p conftest): its hooks stop what is left and turn SIGTERM into an interrupt
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:randomly", "-p", "no:cacheprovider"]
    log = tmp_path / "pytest.log"
    with (
        open(log, "w") as out,
        started(
            [*cmd, "test_waits.py"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=terminal_sigint,
        ) as pytest_run,
    ):

        def families():
            assert pytest_run.poll() is None, log.read_text()[-3000:]
            both = [pids(tmp_path / name) for name in ("held", "left")]
            return None if None in both else both[0] + both[1]

        family = wait_until(families, what="the test's processes")
        try:
            assert all(alive(pid) for pid in family)
            os.kill(pytest_run.pid, signum)  # pytest alone, as Ctrl-C reaches it: the others have sessions of their own
            assert pytest_run.wait(timeout=120) == pytest.ExitCode.INTERRUPTED, log.read_text()[-3000:]
            wait_until(lambda: not any(alive(pid) for pid in family), timeout=30, what=f"{family} to end")
        finally:  # (if not)
            for pid in filter(alive, family):
                os.kill(pid, signal.SIGKILL)
