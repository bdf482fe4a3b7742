"""bench/jupyter_driver.py: the Jupyter side of the pyrepl3 benchmark.

Owns: driving an ipykernel through jupyter_client (KernelManager + blocking client) for every
case of the driver protocol in bench/README.md. Requests come as JSON lines on stdin, replies go
as JSON lines on stdout; logs (and anything the kernels print) go to stderr.

"Until the result" here means until both the shell `execute_reply` and the iopub
`status: idle` of that request have arrived, i.e. all of its output has been consumed.
Messages are told apart by their parent msg_id; the client's three sockets (shell, iopub,
stdin) are waited on together with one zmq.Poller, so no wait is a sleep or a busy loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from queue import Empty
from typing import Callable

import ipykernel
import jupyter_client
import zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "pyrepl3-bench-python"
WAIT = 60.0  # generous bound on any single wait for the kernel, seconds
INTERRUPT_RETRIES = 3  # runs again of one interrupt sample that published no error event

INTERRUPT_CODE = {
    "interrupt_busy": "print('go', flush=True)\nwhile True: pass",
    "interrupt_sleep": "import time\nprint('go', flush=True)\nwhile True: time.sleep(0.01)",
}


class CaseError(Exception):
    """A case failed in a way worth reporting as its error message."""


def log(*args: object) -> None:
    print("jupyter_driver:", *args, file=sys.stderr, flush=True)


# --- /proc readings (Linux) -----------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise CaseError(f"no VmRSS in /proc/{pid}/status")


class Kernel:
    """One ipykernel with a started blocking client, and the waits the cases need."""

    def __init__(self, ksm: KernelSpecManager):
        self.km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        self.client = None

    def start(self) -> None:
        """Starts the kernel and returns once it answers (wait_for_ready)."""
        self.km.start_kernel()
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=WAIT)
        self.poller = zmq.Poller()
        self.channels = {}
        for name in ("shell", "iopub", "stdin"):
            channel = getattr(self.client, f"{name}_channel")
            self.poller.register(channel.socket, zmq.POLLIN)
            self.channels[channel.socket] = (name, channel)

    @property
    def pid(self) -> int:
        provisioner = self.km.provisioner
        pid = getattr(provisioner, "pid", None)
        if pid is None:
            pid = provisioner.process.pid
        return pid

    def shutdown(self) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)

    def poll(self, deadline: float) -> list[tuple[str, dict, float]]:
        """Waits for messages on any channel until `deadline` (perf_counter); returns them as
        (channel, message, arrival time). An empty list means the deadline passed."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return []
        ready = self.poller.poll(remaining * 1000)
        out = []
        for socket, _ in ready:
            name, channel = self.channels[socket]
            while True:
                try:
                    msg = channel.get_msg(timeout=0)
                except Empty:
                    break
                out.append((name, msg, time.perf_counter()))
        return out

    def execute(
        self,
        code: str,
        on_iopub: Callable[[dict, float], None] | None = None,
        on_stdin: Callable[[dict, float], None] | None = None,
        allow_stdin: bool = False,
        timeout: float = WAIT,
    ) -> tuple[str, dict, float]:
        """Runs `code` until its result: returns (msg_id, execute_reply, time of the result,
        i.e. of whichever of execute_reply and status idle came last)."""
        msg_id = self.client.execute(code, allow_stdin=allow_stdin)
        return (msg_id, *self.wait_result(msg_id, on_iopub, on_stdin, timeout))

    def next_batch(self, deadline: float, waiting_for: str) -> list[tuple[str, dict, float]]:
        """poll() until something arrives; a kernel that died or a passed deadline is an
        error. Not polling for work: the wait ends on the first message, and only a kernel
        silent for a whole second gets a liveness check (so a dead one fails fast)."""
        while True:
            batch = self.poll(min(deadline, time.perf_counter() + 1.0))
            if batch:
                return batch
            if time.perf_counter() >= deadline:
                raise CaseError(f"{waiting_for}: timed out")
            if not self.km.is_alive():
                raise CaseError(f"{waiting_for}: the kernel died")

    def wait_result(self, msg_id, on_iopub=None, on_stdin=None, timeout=WAIT):
        deadline = time.perf_counter() + timeout
        reply = None
        idle = False
        done_at = 0.0
        while reply is None or not idle:
            batch = self.next_batch(deadline, f"waiting for the result ({timeout:.0f} s bound)")
            for channel, msg, at in batch:
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue  # left over from an earlier request
                if channel == "shell" and msg["msg_type"] == "execute_reply":
                    reply, done_at = msg, at
                elif channel == "iopub":
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        idle, done_at = True, at
                    elif on_iopub is not None:
                        on_iopub(msg, at)
                elif channel == "stdin" and on_stdin is not None:
                    on_stdin(msg, at)
        return reply, done_at

    def check_ok(self, reply: dict) -> None:
        content = reply["content"]
        if content.get("status") != "ok":
            raise CaseError(
                f"execution failed: {content.get('ename', content.get('status'))}: "
                f"{content.get('evalue', '')}"
            )


# --- the driver -----------------------------------------------------------------------------


class Driver:
    def __init__(self) -> None:
        self.kernel: Kernel | None = None
        self.python = None
        self.tmp = tempfile.mkdtemp(prefix="pyrepl3-bench-jupyter-")
        self.ksm = None

    # -- setup / teardown --

    def setup(self, req: dict) -> dict:
        python = req["python"]
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise CaseError(f"python {python!r} is not an executable file")
        # The kernel runs exactly the given path (the venv's bin/python): that interpreter sees
        # the venv's site-packages, where ipykernel is installed. Its real binary is reported.
        self.python = python
        kernels = os.path.join(self.tmp, "kernels")
        spec_dir = os.path.join(kernels, KERNEL_NAME)
        os.makedirs(spec_dir, exist_ok=True)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump(
                {
                    "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "pyrepl3 bench python",
                    "language": "python",
                },
                f,
            )
        self.ksm = KernelSpecManager(kernel_dirs=[kernels])
        self.kernel = self.warm_kernel()
        return {
            "ok": True,
            "name": "jupyter",
            "version": f"jupyter_client {jupyter_client.__version__}, ipykernel {ipykernel.__version__}",
            "python": python,
            "python_real": os.path.realpath(python),
        }

    def new_kernel(self) -> Kernel:
        kernel = Kernel(self.ksm)
        try:
            kernel.start()
        except BaseException:
            kernel.shutdown()
            raise
        return kernel

    def warm_kernel(self) -> Kernel:
        """The kernel the warm cases use: started, and it has run code once already."""
        kernel = self.new_kernel()
        try:
            _, reply, _ = kernel.execute("1+1")
            kernel.check_ok(reply)
        except BaseException:
            kernel.shutdown()
            raise
        return kernel

    def close(self) -> None:
        if self.kernel is not None:
            try:
                self.kernel.shutdown()
            except Exception as e:  # exiting anyway
                log("shutdown failed:", e)
            self.kernel = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def recover(self) -> None:
        """After a failed case: leave a warm kernel that is idle, restarting it if need be."""
        if self.ksm is None:
            return
        k = self.kernel
        if k is not None:
            try:
                if k.km.is_alive():
                    k.km.interrupt_kernel()
                    _, reply, _ = k.execute("None", timeout=10)
                    k.check_ok(reply)
                    return
            except Exception as e:
                log("kernel did not recover, restarting it:", e)
            try:
                k.shutdown()
            except Exception as e:
                log("shutdown failed:", e)
        self.kernel = None
        self.kernel = self.warm_kernel()

    # -- cases --

    def run(self, req: dict) -> dict:
        case = req.get("case")
        n = int(req.get("n", 1))
        method = getattr(self, f"case_{case}", None)
        if method is None:
            return {"ok": False, "error": "unsupported"}
        if self.kernel is None:
            raise CaseError("no setup yet")
        samples, extra = method(n, req)
        return {"ok": True, "samples": samples, "extra": extra}

    def case_roundtrip(self, n, req):
        samples = []
        for _ in range(n):
            result = []
            t0 = time.perf_counter()
            _, reply, t1 = self.kernel.execute(
                "1+1", on_iopub=lambda m, at: result.append(m) if m["msg_type"] == "execute_result" else None
            )
            self.kernel.check_ok(reply)
            if not result or result[0]["content"]["data"].get("text/plain") != "2":
                raise CaseError(f"1+1 gave no result '2': {result!r}")
            samples.append(t1 - t0)
        return samples, {}

    def case_cold_start(self, n, req):
        """One sample: a new kernel (start_kernel, start_channels, wait_for_ready), then `1+1`
        until its result (execute_reply and status idle). extra `ready`: the part until
        wait_for_ready returned."""
        samples, ready = [], []
        for _ in range(n):
            kernel = Kernel(self.ksm)
            try:
                t0 = time.perf_counter()
                kernel.start()
                t_ready = time.perf_counter()
                result = []
                _, reply, t1 = kernel.execute(
                    "1+1", on_iopub=lambda m, at: result.append(m) if m["msg_type"] == "execute_result" else None
                )
                kernel.check_ok(reply)
            finally:
                kernel.shutdown()  # not timed
            if not result or result[0]["content"]["data"].get("text/plain") != "2":
                raise CaseError(f"1+1 of a new kernel gave no result '2': {result!r}")
            samples.append(t1 - t0)
            ready.append(t_ready - t0)
        return samples, {"ready": ready}

    def _output_case(self, n, code):
        samples = []
        nbytes = 0
        for _ in range(n):
            got = [0]

            def on_iopub(msg, at):
                if msg["msg_type"] == "stream":
                    got[0] += len(msg["content"]["text"].encode())

            t0 = time.perf_counter()
            _, reply, t1 = self.kernel.execute(code, on_iopub=on_iopub)
            self.kernel.check_ok(reply)
            samples.append(t1 - t0)
            nbytes = got[0]
        return samples, {"bytes": nbytes}

    def case_print_lines(self, n, req):
        return self._output_case(n, "for i in range(200000): print(i)")

    def case_print_10mb(self, n, req):
        return self._output_case(n, "print('x'*10_000_000)")

    def case_first_output(self, n, req):
        samples = []
        for _ in range(n):
            first = []

            def on_iopub(msg, at):
                if msg["msg_type"] == "stream" and not first:
                    first.append(at)

            t0 = time.perf_counter()
            _, reply, _ = self.kernel.execute("print('hi')", on_iopub=on_iopub)
            self.kernel.check_ok(reply)
            if not first:
                raise CaseError("print('hi') produced no stream message")
            samples.append(first[0] - t0)
        return samples, {}

    def _interrupt_case(self, n, code):
        """Per sample: run `code`, interrupt it once 'go' arrives; the sample is from the
        interrupt request to the KeyboardInterrupt error event. A sample whose execution was
        interrupted but published no error event (see _interrupt_once) is run again, at most
        INTERRUPT_RETRIES times in a row; extra `retried` has one note per such run."""
        samples, retried = [], []
        for _ in range(n):
            for _attempt in range(1 + INTERRUPT_RETRIES):
                sample, note = self._interrupt_once(code)
                if sample is not None:
                    samples.append(sample)
                    break
                retried.append(note)
            else:
                raise CaseError(f"{1 + INTERRUPT_RETRIES} runs in a row without an error event: {note}")
        return samples, ({"retried": retried} if retried else {})

    def _interrupt_once(self, code) -> tuple[float | None, str]:
        """Runs `code`, interrupts it once its 'go' arrives and returns (seconds from the
        interrupt request to the KeyboardInterrupt error event, ""), or (None, note) when the
        execution ended in KeyboardInterrupt without an error event.

        Only messages whose parent is this execute_request count, and the run ends only once
        its execute_reply and status idle have arrived too: they often come in the same batch
        as the error, and a reader that stopped at the error would wait for them in vain.

        No error event: 'go' arrives while the kernel is still between the print and the loop,
        so the SIGINT can land while IPython compiles the `while` statement. Python 3.11 then
        raises KeyboardInterrupt on the first instruction of codeop.Compile.__call__, a
        traceback entry whose line number is None; IPython's formatter asserts an int line
        (AssertionError in ultratb.format_record), and showtraceback falls back to printing
        "Unexpected exception formatting exception" and a plain traceback on stdout/stderr
        without publishing an `error` message. The execute_reply still says KeyboardInterrupt:
        the interrupt worked, but the event this case times never comes (rare: 5 in about
        23000 runs on a loaded 2-core machine)."""
        k = self.kernel
        msg_id = k.client.execute(code)
        deadline = time.perf_counter() + WAIT
        sent_at = None  # when the interrupt was requested
        interrupted_at = None
        reply = None
        idle = False
        stderr = []
        while reply is None or not idle:
            batch = k.next_batch(
                deadline, f"waiting for 'go' / KeyboardInterrupt / reply + idle ({WAIT:.0f} s bound)"
            )
            for channel, msg, at in batch:
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue  # left over from an earlier request
                kind, content = msg["msg_type"], msg["content"]
                if channel == "shell" and kind == "execute_reply":
                    reply = msg
                elif channel != "iopub":
                    continue
                elif kind == "stream" and content.get("name") == "stderr":
                    stderr.append(content["text"])
                elif kind == "stream" and sent_at is None and "go" in content["text"]:
                    sent_at = time.perf_counter()
                    k.km.interrupt_kernel()
                elif kind == "error":
                    if content.get("ename") != "KeyboardInterrupt" or sent_at is None:
                        raise CaseError(f"unexpected error: {content.get('ename')}: {content.get('evalue')}")
                    interrupted_at = at
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
        status, ename = reply["content"].get("status"), reply["content"].get("ename")
        if interrupted_at is not None:
            if ename != "KeyboardInterrupt":
                raise CaseError(f"execute_reply is not the KeyboardInterrupt: {reply['content']!r}")
            return interrupted_at - sent_at, ""
        lines = "".join(stderr).strip().splitlines()
        last = f", stderr ends {lines[-1][:200]!r}" if lines else ", nothing on stderr"
        if sent_at is not None and ename == "KeyboardInterrupt":
            return None, f"KeyboardInterrupt in execute_reply but no error event{last}"
        raise CaseError(
            f"execution ended without KeyboardInterrupt: execute_reply {status}"
            f"{'/' + ename if ename else ''}, 'go' {'seen' if sent_at is not None else 'never seen'}{last}"
        )

    def case_interrupt_busy(self, n, req):
        return self._interrupt_case(n, INTERRUPT_CODE["interrupt_busy"])

    def case_interrupt_sleep(self, n, req):
        return self._interrupt_case(n, INTERRUPT_CODE["interrupt_sleep"])

    def case_input(self, n, req):
        k = self.kernel
        samples, totals = [], []
        for _ in range(n):
            answered = []

            def on_stdin(msg, at):
                if msg["msg_type"] == "input_request" and not answered:
                    answered.append(time.perf_counter())
                    k.client.input("bench")

            t0 = time.perf_counter()
            _, reply, t1 = k.execute("x = input()", on_stdin=on_stdin, allow_stdin=True)
            k.check_ok(reply)
            if not answered:
                raise CaseError("input() sent no input_request")
            samples.append(t1 - answered[0])
            totals.append(t1 - t0)
        return samples, {"total": totals}

    def case_pids(self, n, req):
        """The processes of an attached client, for the orchestrator to watch while idle."""
        return [], {"kernel": self.kernel.pid, "driver": os.getpid()}

    def case_memory(self, n, req):
        kernel = self.new_kernel()
        try:
            _, reply, _ = kernel.execute("1+1")
            kernel.check_ok(reply)
            return [], {"worker_rss": rss_bytes(kernel.pid)}
        finally:
            kernel.shutdown()


def main() -> int:
    # Replies own the real stdout; fd 1 is pointed at stderr so that nothing else (a kernel
    # inheriting it, a stray print) can corrupt the protocol stream.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    # SIGTERM (the orchestrator giving up on us) still shuts the kernels down, via finally.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    driver = Driver()

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except json.JSONDecodeError as e:
                reply({"ok": False, "error": f"bad request: {e}"})
                continue
            cmd = req.get("cmd")
            if cmd == "quit":
                break
            try:
                if cmd == "setup":
                    reply(driver.setup(req))
                elif cmd == "run":
                    reply(driver.run(req))
                else:
                    reply({"ok": False, "error": f"unknown cmd {cmd!r}"})
            except Exception as e:
                log(f"{cmd} {req.get('case', '')} failed:\n{traceback.format_exc()}")
                reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
                try:
                    driver.recover()
                except Exception as e2:
                    log("could not restart the kernel:", e2)
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
