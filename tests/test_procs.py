import subprocess
import sys

from fth.procs import terminate_group

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True, text=True)
    assert proc.stdout.readline().strip() == "ready"  # handlers installed before we signal
    return proc


def test_sigterm_is_enough_for_a_cooperative_child():
    proc = start("import time; print('ready', flush=True); time.sleep(60)")
    assert terminate_group(proc, grace=5) is False
    assert proc.returncode == -15


def test_a_child_ignoring_sigterm_is_killed_and_reaped():
    proc = start(STUBBORN)
    assert terminate_group(proc, grace=0.5) is True
    assert proc.returncode == -9
    assert terminate_group(proc, grace=0.5) is False  # already gone: nothing to do
