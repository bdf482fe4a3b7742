"""pyrepl3 worker agent, part 5 of 8: namespace transactions (docs/transactions.md).

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
_HAND_OVER_AT = 4096  # offset in the signal-target file where a handed-over frame is put
_SIGNAL_FILE_LEN = 136
_PROMOTE_LINE_LIMIT = 256  # bytes of one line on the promote pipe ("F|P <pid> ..."), at most


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
    cpu_before = 0.0  # CPU seconds of the workers that have ended (their successors go on)
    while True:
        try:
            # not polling: untimed, returns when a child has ended
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid != worker:
            continue  # an orphan of user code, adopted and now reaped
        cpu_before += usage.ru_utime + usage.ru_stime
        snapshot = int.from_bytes(os.pread(signal_fd, 8, _SNAPSHOT_SLOT), "little")
        if snapshot and _own_live_child(snapshot):
            os.pwrite(signal_fd, bytes(8), _SNAPSHOT_SLOT)
            _write_all(promote_w, b"P %d %d %r\n" % (snapshot, status, cpu_before))
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
        self._random_state = None  # the random module's state when the snapshot was taken
        self._froze = False        # whether begin() froze the collector (see there)

    def begin(self, agent, execution_id):
        """Takes the snapshot. Returns None in the worker; in the snapshot, returns only if it
        is promoted, with the terminal frame it must send for `execution_id`. Raises
        _TransactionUnavailable when no snapshot could be taken (nothing ran)."""
        import gc, warnings
        if self._snapshot:  # left by an execution the agent failed to finish: discarded
            self.commit()
        agent._flush_output()
        # The random module reseeds itself in a forked child: its state is put back at a
        # takeover, so a seeded session stays reproducible.
        rnd = sys.modules.get("random")
        self._random_state = _guarded(rnd.getstate, None) if rnd is not None else None
        locks = (agent._read_lock, agent._state_lock, agent._ordered_lock, agent._send_lock,
                 _flusher.lock)
        # Signals are blocked across the fork, first: no handler can break in while the locks
        # are taken; the snapshot starts with them blocked (no handler, user code's or ours,
        # may run in it while it waits); the worker gets what arrived meanwhile once they are
        # unblocked.
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
        held = []
        self._froze = False
        try:
            for lock in locks:  # no other thread may hold one in the copy (it could never go)
                lock.acquire()
                held.append(lock)
            # Objects that exist now are left out of collections until the commit: a
            # collection writes to each object it scans, which would copy its page. Not when
            # user code froze objects itself: unfreezing would undo that too.
            self._froze = gc.get_freeze_count() == 0
            if self._froze:
                gc.freeze()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
        except BaseException as exc:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            if self._froze:
                gc.unfreeze()
            if isinstance(exc, OSError):
                raise _TransactionUnavailable("cannot take a snapshot of the session: %s" % exc)
            raise
        finally:
            for lock in reversed(held):
                lock.release()
        if pid:
            self._snapshot = pid
            os.pwrite(self._signal_fd, pid.to_bytes(8, "little"), _SNAPSHOT_SLOT)
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            return None
        try:
            return self._wait_for_promotion(agent, execution_id, mask)
        except BaseException:
            os._exit(1)  # it cannot take over: its worker commits or reports the loss

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
            except OSError:
                pid = 0
            if pid:
                # Reaped as soon as it has died, by a thread that only waits for that (no
                # zombie left for user code's os.wait() to find); with no thread to spare
                # (the session's process limit), here.
                try:
                    _thread.start_new_thread(_reap, (pid,))
                except RuntimeError:
                    _reap(pid)
        if self._froze:
            gc.unfreeze()

    def abandon(self):
        """The worker ends (shutdown, the host gone): the snapshot must not take over."""
        if self._snapshot:
            self.commit()

    def roll_back(self, agent, frame):
        """Hands `frame` to the snapshot and ends this process: the snapshot, told by the
        supervisor once this process is gone, sends it and carries on as the worker. The
        frame goes in the signal-target file (shared with the snapshot; any size a frame can
        have), its length through the pipe. The reader thread is stopped between frames and
        no other thread is mid-send: nothing is left half read or half written."""
        agent._flush_output()
        data = _encode(frame).encode("utf-8", "replace")
        # Never released if this works: this process ends holding them. Same order as begin().
        locks = (agent._read_lock, agent._ordered_lock, agent._send_lock)
        for lock in locks:
            lock.acquire()
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self._signal_fd, data[written:], _HAND_OVER_AT + written)
            _write_all(self._promote_w, b"F %d %d\n" % (self._snapshot, len(data)))
        except OSError:
            # The frame could not be handed over (the file-size limit, no memory): the
            # execution's changes stay, and the caller reports that.
            _guarded(lambda: os.ftruncate(self._signal_fd, _SIGNAL_FILE_LEN), None)
            for lock in reversed(locks):
                lock.release()
            return False
        os._exit(0)

    def _wait_for_promotion(self, agent, execution_id, mask):
        """In the snapshot: blocks until the supervisor promotes it (then returns the frame to
        send) or it is killed (a commit)."""
        me, handed, buf = os.getpid(), None, bytearray()
        while True:
            chunk = os.read(self._promote_r, 1 << 16)  # not polling: untimed, until promoted
            if not chunk:
                os._exit(0)
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0 and len(buf) > _PROMOTE_LINE_LIMIT:
                    raise ValueError("not a promotion message")  # garbage: not ours to act on
                if end < 0:
                    break
                line = bytes(buf[:end])
                del buf[:end + 1]
                kind, pid, rest = line.split(b" ", 2)
                if int(pid) != me:
                    continue
                if kind == b"F":
                    handed = _read_at(self._signal_fd, int(rest), _HAND_OVER_AT)
                    os.ftruncate(self._signal_fd, _SIGNAL_FILE_LEN)
                elif kind == b"P":
                    status, cpu_before = rest.split(b" ")
                    agent._cpu_before = float(cpu_before)
                    return self._take_over(agent, execution_id, handed, int(status), mask)

    def _take_over(self, agent, execution_id, handed, status, mask):
        """The snapshot becomes the worker: the threads the fork left behind start again."""
        global _flusher
        import gc
        if self._froze:
            gc.unfreeze()  # frozen by the worker just before the fork, for the execution's length
        if self._random_state is not None:
            _guarded(lambda: sys.modules["random"].setstate(self._random_state), None)
        agent._pid = os.getpid()
        _flusher = _Flusher()
        # The interpreter's own stdout/stderr objects are not the agent's to flush here: a
        # thread may have been inside one at the fork (their buffers were flushed before it).
        agent._streams = agent._streams[:2]
        agent._configure_flusher()
        _signal.signal(_signal.SIGINT, agent._sigint_handler)
        # Signals that came while it waited were sent during the execution, to the worker's
        # group (the worker had its own copy): dropped, not delivered now.
        for _ in range(len(_signal.valid_signals())):
            pending = _signal.sigpending()
            if not pending:
                break
            _signal.sigtimedwait(pending, 0)  # not polling: takes one already pending
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        _refresh_event_loop(agent._loop)
        _thread.start_new_thread(agent.read_loop, ())
        if handed is not None:
            try:
                frame = _decode(handed.decode("utf-8"))
            except ValueError:
                frame = None
            if isinstance(frame, dict):
                frame["worker_pid"] = agent._pid
                frame["cpu_time_before"] = agent._cpu_before
                return frame
        frame = {"type": "error", "execution_id": execution_id,
                 "exception_type": "ExecutionKilled", "traceback": "",
                 "exception_message": "the worker running this execution %s; the session was "
                 "rolled back to its state before the execution" % _describe_status(status)}
        frame["traceback"] = "ExecutionKilled: %s\n" % frame["exception_message"]
        frame["transaction"] = "rolled_back"
        frame["worker_pid"] = agent._pid
        frame["cpu_time_before"] = agent._cpu_before
        return frame


def _reap(pid):
    try:
        os.waitpid(pid, 0)  # not polling: untimed, it was SIGKILLed a moment ago
    except OSError:
        pass  # reaped already (user code's os.wait())


def _read_at(fd, size, offset):
    data = bytearray()
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), offset + len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


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
        fresh = type(selector)()
        for key in list(selector.get_map().values()):
            fresh.register(key.fileobj, key.events, key.data)
        loop._selector = fresh
        selector.close()
    except Exception:
        pass  # the loop keeps the shared instance: the worst case is a missed wake-up
