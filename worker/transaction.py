"""pyrepl3 worker agent, part 3 of 4: namespace transactions (docs/transactions.md).

A transaction's snapshot is a copy-on-write fork of the worker, taken just before the cell
runs and kept blocked. On commit it is killed. On rollback the worker hands it the cell's
terminal frame and exits; the snapshot, whose memory is the session exactly as it was before
the cell, carries on as the worker and sends that frame. The same happens when the worker dies
during the cell (killed at a timeout, by the kernel for memory, a crash in C code): the
snapshot then reports how it died.

For that the session's first process is its supervisor: it forks the worker at start-up and
then only waits for children. It is the worker's parent and the parent a snapshot gets when
its worker dies (the host makes it a reaper: the sandbox's pid 1, or a child subreaper); it
alone learns how the worker died, so it is the one that tells the snapshot to take over. It runs no user code and holds no channel to
the host: when the worker dies with no snapshot to take over, it exits the same way, and the
host sees the session's process end as before.
"""

_SNAPSHOT_SLOT = 128  # offset in the signal-target file: pid of the live snapshot (8 bytes)
_HAND_OVER_LIMIT = (1 << 20) - 4096  # bytes of a handed-over frame: fits the pipe's buffer


def _start_supervision(signal_fd, channels, reaper):
    """Splits the session's first process in two: the supervisor (this process, which never
    returns from here) and the worker (its child, which gets a `_Transactions`). Without a
    signal-target file (where the snapshot's pid is kept), or when the host did not make this
    process a reaper (`reaper`), there are no transactions and no supervisor: None."""
    if signal_fd < 0 or not reaper:
        return None
    promote_r, promote_w = os.pipe()  # supervisor and worker -> the blocked snapshot
    os.pwrite(signal_fd, bytes(8), _SNAPSHOT_SLOT)
    supervisor = os.getpid()
    worker = os.fork()
    if worker == 0:
        return _Transactions(supervisor, signal_fd, promote_r, promote_w)
    for fd in channels + (promote_r,):
        os.close(fd)
    _supervise(worker, signal_fd, promote_w)


def _supervise(worker, signal_fd, promote_w):
    """The supervisor's whole life: reap children; when the worker dies, promote its snapshot
    if it has one, else end as the worker ended."""
    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
                   _signal.SIGUSR1, _signal.SIGUSR2):
        _signal.signal(signum, _signal.SIG_IGN)  # the group's signals are for user code
    while True:
        try:
            pid, status = os.wait()  # not polling: untimed, returns when a child has ended
        except ChildProcessError:
            os._exit(0)
        if pid != worker:
            continue  # an orphan of user code, adopted and now reaped
        snapshot = int.from_bytes(os.pread(signal_fd, 8, _SNAPSHOT_SLOT), "little")
        if snapshot and _own_live_child(snapshot):
            os.pwrite(signal_fd, bytes(8), _SNAPSHOT_SLOT)
            _write_all(promote_w, b"P %d %d\n" % (snapshot, status))
            worker = snapshot
            continue
        _end_like(status)


def _own_live_child(pid):
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False  # not ours: the slot named a process that never became our child


def _end_like(status):
    """Exit as the worker did, so the host reports its death as it always has."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if os.getpid() != 1:  # the kernel does not let a namespace's pid 1 signal itself
            try:
                import resource
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the worker's crash, not ours
                if signum not in (_signal.SIGKILL, _signal.SIGSTOP):
                    _signal.signal(signum, _signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            except (OSError, ValueError):
                pass
        os._exit(128 + signum)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


class _TransactionUnavailable(Exception):
    pass


class _Transactions:
    """The worker's side of transactions: taking, discarding and handing over snapshots."""

    def __init__(self, supervisor, signal_fd, promote_r, promote_w):
        self.supervisor = supervisor
        self._signal_fd = signal_fd
        self._promote_r, self._promote_w = promote_r, promote_w
        self._snapshot = 0         # pid of the live snapshot (the worker's child), 0: none
        self._discarded = []       # committed snapshots, killed, not yet reaped (bounded:
                                   # each is reaped as soon as it has died)

    def begin(self, agent, execution_id):
        """Takes the snapshot. Returns None in the worker; in the snapshot, returns only if it
        is promoted, with the terminal frame it must send for `execution_id`. Raises
        _TransactionUnavailable when no snapshot could be taken (nothing ran)."""
        import gc, warnings
        if self._snapshot:  # left by an execution the agent failed to finish: discarded
            self.commit()
        self.reap_discarded()
        agent._flush_output()
        locks = (agent._state_lock, agent._ordered_lock, agent._send_lock, _flusher.lock)
        for lock in locks:  # no other thread may hold one in the copy (it could never let go)
            lock.acquire()
        try:
            # Objects that exist now are left out of collections until the commit: a
            # collection writes to each object it scans, which would copy its page.
            gc.freeze()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
        except OSError as exc:
            gc.unfreeze()
            raise _TransactionUnavailable("cannot take a snapshot of the session: %s" % exc)
        finally:
            for lock in reversed(locks):
                lock.release()
        if pid:
            self._snapshot = pid
            os.pwrite(self._signal_fd, pid.to_bytes(8, "little"), _SNAPSHOT_SLOT)
            return None
        return self._wait_for_promotion(agent, execution_id)

    def alive(self):
        """Whether the snapshot still exists (the kernel may have killed it for memory). One
        found dead is reaped and forgotten, so its pid is never signalled."""
        try:
            if os.waitpid(self._snapshot, os.WNOHANG) == (0, 0):
                return True
        except ChildProcessError:
            pass
        self._snapshot = 0
        os.pwrite(self._signal_fd, bytes(8), _SNAPSHOT_SLOT)
        return False

    def commit(self):
        import gc
        pid, self._snapshot = self._snapshot, 0
        os.pwrite(self._signal_fd, bytes(8), _SNAPSHOT_SLOT)  # first: never promote a corpse
        if pid > 0:  # 0: found dead by `alive` (and reaped): nothing to kill
            try:
                os.kill(pid, _signal.SIGKILL)
                self._discarded.append(pid)
            except OSError:
                pass
        gc.unfreeze()

    def reap_discarded(self):
        """Reaps the killed snapshots that have died (never waits for one)."""
        waiting = []
        for pid in self._discarded:
            try:
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    waiting.append(pid)
            except ChildProcessError:
                pass  # reaped by user code's os.wait()
        self._discarded = waiting

    def roll_back(self, agent, frame):
        """Hands `frame` to the snapshot and ends this process: the snapshot, told by the
        supervisor once this process is gone, sends it and carries on as the worker."""
        agent._flush_output()
        data = _encode(frame).encode("utf-8", "replace")
        if len(data) > _HAND_OVER_LIMIT:
            frame = {k: _clip(v, 1 << 15) if isinstance(v, str) else v for k, v in frame.items()}
            frame["value"] = None
            data = _encode(frame).encode("utf-8", "replace")
        try:
            import fcntl
            fcntl.fcntl(self._promote_w, 1031, 1 << 20)  # F_SETPIPE_SZ: the frame fits at once
        except OSError:
            pass  # the default 64 KiB: a larger frame waits for the snapshot to read
        _write_all(self._promote_w, b"F %d %s\n" % (self._snapshot, data))
        os._exit(0)

    def _wait_for_promotion(self, agent, execution_id):
        """In the snapshot: blocks until the supervisor promotes it (then returns the frame to
        send) or it is killed (a commit)."""
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # a group SIGINT is not for us
        self._discarded = []  # the worker's children, not ours
        me, handed, buf = os.getpid(), None, bytearray()
        while True:
            chunk = os.read(self._promote_r, 1 << 16)  # not polling: untimed, until promoted
            if not chunk:
                os._exit(0)
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    break
                line = bytes(buf[:end])
                del buf[:end + 1]
                kind, pid, rest = line.split(b" ", 2)
                if int(pid) != me:
                    continue
                if kind == b"F":
                    handed = rest
                elif kind == b"P":
                    return self._take_over(agent, execution_id, handed, int(rest))

    def _take_over(self, agent, execution_id, handed, status):
        """The snapshot becomes the worker: the threads the fork left behind start again."""
        global _flusher
        import gc
        gc.unfreeze()  # frozen by the worker just before the fork, for the execution's length
        agent._pid = os.getpid()
        _flusher = _Flusher()
        _flusher.streams = agent._streams[:2]
        _signal.signal(_signal.SIGINT, agent._sigint_handler)
        _refresh_event_loop(agent._loop)
        _thread.start_new_thread(agent.read_loop, ())
        if handed is not None:
            try:
                frame = _decode(handed.decode("utf-8"))
            except ValueError:
                frame = None
            if isinstance(frame, dict):
                frame["worker_pid"] = agent._pid
                return frame
        frame = {"type": "error", "execution_id": execution_id,
                 "exception_type": "ExecutionKilled", "traceback": "",
                 "exception_message": "the worker running this execution %s; the session was "
                 "rolled back to its state before the execution" % _describe_status(status)}
        frame["traceback"] = "ExecutionKilled: %s\n" % frame["exception_message"]
        frame["transaction"] = "rolled_back"
        frame["worker_pid"] = agent._pid
        return frame


def _describe_status(status):
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            import signal
            name = signal.Signals(signum).name
        except (ImportError, ValueError):
            name = "signal %d" % signum
        return "was killed by %s" % name
    return "exited with status %d" % (os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1)


def _refresh_event_loop(loop):
    """The session's event loop, copied by the fork, shares its epoll instance with the
    worker that just died, which may have changed what it watches: a fresh one is built from
    what this copy's loop knows it watches."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return
    try:
        import selectors
        fresh = type(selector)()
        for key in list(selector.get_map().values()):
            fresh.register(key.fileobj, key.events, key.data)
        loop._selector = fresh
        selector.close()
    except Exception:
        pass  # the loop keeps the shared instance: the worst case is a missed wake-up
