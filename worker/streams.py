"""pyrepl3 worker agent, part 3 of 8 (the host joins the parts into one program, in the
order agent.py lists): what user code reads and writes.
`input()`, `getpass()` and `sys.stdin` as protocol requests; stdout and stderr block-buffered
with a flusher thread that sends a burst of output within milliseconds, and a barrier between
them at each switch so they arrive in the order written; and the wrappers that keep output in
the order it was produced when code writes to fd 1/2 or starts processes."""

def input(prompt=""):
    """Read a line from the client (a protocol `input` request); EOFError at end-of-file."""
    data = _agent.request_input(prompt, False)
    if data is None:
        raise EOFError("EOF when reading a line")
    for ending in ("\r\n", "\n"):
        if data.endswith(ending):
            return data[:-len(ending)]
    return data


def getpass(prompt="Password: ", stream=None):
    """Read a password from the client (an `input` request with password=true)."""
    data = _agent.request_input(prompt, True)
    if data is None:
        raise EOFError
    return data[:-1] if data.endswith("\n") else data


class _Stdin(io.TextIOBase):
    """sys.stdin: a read that needs data becomes one `input` request to the client."""

    encoding, errors, name = "utf-8", "strict", "<stdin>"

    def __init__(self):
        super().__init__()
        self._pending = ""  # rest of a multi-line answer, served to the next reads

    def readable(self):
        return True

    def isatty(self):
        return False

    def close(self):
        pass  # `exit()` closes sys.stdin before raising SystemExit; the session lives on

    def _fill(self, newline, more=False):
        """Makes sure something is pending (with `more`: asks for more even so); False at
        end-of-file."""
        if more or not self._pending:
            data = _agent.request_input("", False)
            if data is None:
                return False
            self._pending += data + "\n" if newline and not data.endswith("\n") else data
        return True

    def readline(self, size=-1):
        if size == 0 or not self._fill(True):
            return ""
        cut = self._pending.find("\n") + 1 or len(self._pending)
        if size is not None and size > 0:
            cut = min(cut, size)
        line, self._pending = self._pending[:cut], self._pending[cut:]
        return line

    def read(self, size=-1):
        """Up to `size` characters, or everything to end-of-file (as a file's read: one
        `input` request per answer until the client answers end-of-file)."""
        whole = size is None or size < 0
        while (whole or len(self._pending) < size) and self._fill(False, more=True):
            pass
        cut = len(self._pending) if whole else size
        chunk, self._pending = self._pending[:cut], self._pending[cut:]
        return chunk


FLUSH_DELAY = 0.002  # seconds from the first unflushed write to the flush that sends it
STREAM_BUFFER = 1 << 16


class _Flusher:
    """Live output without a write() syscall per line: stdout/stderr are block-buffered, and
    the first write into a clean buffer arms one flush, FLUSH_DELAY later, from this thread.
    A burst of prints costs one flush per delay instead of one syscall per line (200k lines:
    ~0.1 s instead of ~0.4 s), while a print followed by a pause still shows within
    milliseconds. Nothing runs while nothing is written."""

    def __init__(self):
        self.dirty = False
        self.streams = []
        # Stream order (protocol.md, "Output ordering"): the stream Python wrote to last, and
        # the barrier written to both pipes (through `barrier_fds`) when writes switch stream.
        self.last = None
        self.barrier = None
        self.barrier_fds = ()
        self.lock = _thread.RLock()  # held while flushing: a transaction's fork waits for it
        # Held while disarmed: `arm` releases it, the flusher thread's acquire wakes.
        self._armed = _thread.allocate_lock()
        self._armed.acquire()
        _thread.start_new_thread(self._run, ())

    def arm(self):
        if not self.dirty:
            self.dirty = True
            try:
                self._armed.release()
            except RuntimeError:
                pass  # already armed: the flusher has not woken up yet

    def flush_all(self):
        with self.lock:
            self.dirty = False
            for stream in self.streams:
                try:
                    stream.flush()
                except Exception:
                    pass  # a closed or broken stream must not break the caller (a
                    # KeyboardInterrupt raised meanwhile is the code's: it goes on)

    def switch(self, stream):
        """`stream` (stdout's or stderr's text layer) is written to after the other one: what
        the other holds goes out first, then a barrier on both pipes, so that the host hands on
        the two in the order they were written. Called only on a switch: a run of writes to
        one stream costs one comparison each."""
        with self.lock:
            previous = self.last
            if previous is None or previous is stream or self.barrier is None:
                self.last = stream
                return
            try:
                previous.flush()  # while still `last`: its text layer's flush writes below
            except Exception:
                pass  # a broken stream must not stop the other (KeyboardInterrupt goes on)
            self.last = stream
            # Each is one write under PIPE_BUF: all or nothing. A signal handler that raises
            # between the two leaves one pipe a barrier short: the host's ordering copes (it
            # matches barriers within an execution only, and gives up holding text past 1 MiB).
            for fd in self.barrier_fds:
                try:
                    _write_all(fd, self.barrier)
                except OSError:
                    pass  # the host stopped reading that pipe

    def _run(self):
        while True:
            self._armed.acquire()  # not polling: untimed, released by the first unflushed write
            # not polling: one deadline per burst of output, armed by its first write.
            time.sleep(FLUSH_DELAY)
            self.flush_all()


class _LiveBuffer(io.BufferedWriter):
    """The binary layer of stdout/stderr: bytes written here (sys.stdout.buffer) arm the
    flusher too. Writes and flushes hold the flusher's lock, which a transaction's fork takes
    (transaction.py): no thread is inside the buffer (holding its own internal lock, which
    the copy could never release) when the snapshot is taken. The text layer above calls in
    here once per ~8 KiB, not per print."""

    text = None  # the text layer above (stdout's or stderr's), set by the agent

    def write(self, data, _write=io.BufferedWriter.write):
        if _flusher.last is not self.text:
            _flusher.switch(self.text)
        with _flusher.lock:
            n = _write(self, data)
        _flusher.arm()
        return n

    def flush(self, _flush=io.BufferedWriter.flush):
        with _flusher.lock:
            return _flush(self)


class _LiveText(io.TextIOWrapper):
    """The text layer of stdout/stderr: the one place every print() passes through."""

    def write(self, text, _write=io.TextIOWrapper.write):
        if _flusher.last is not self:
            _flusher.switch(self)
        n = _write(self, text)
        if not _flusher.dirty:
            _flusher.arm()
        return n


_flusher = None  # the _Flusher, once the agent has set up its streams


def _flushing_first(function):
    """Wraps a way of writing to fd 1/2 (or of starting a process that inherits them) so
    that what print() buffered goes out first: output stays in the order it was produced."""
    def wrapper(*args, **kwargs):
        if _flusher is not None and _flusher.dirty:
            _flusher.flush_all()
        return function(*args, **kwargs)
    wrapper.__wrapped__ = function
    wrapper.__name__ = getattr(function, "__name__", "wrapper")
    wrapper.__doc__ = getattr(function, "__doc__", None)
    return wrapper


def _keep_output_order():
    import _posixsubprocess  # subprocess looks fork_exec up on this module at every call
    _posixsubprocess.fork_exec = _flushing_first(_posixsubprocess.fork_exec)
    for name in ("write", "system", "posix_spawn", "posix_spawnp", "writev"):
        if hasattr(os, name):
            setattr(os, name, _flushing_first(getattr(os, name)))
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _before_fork():
    """Any fork (user code's too): what print() buffered goes out first, and the flusher's
    lock is held across the fork, so that no thread is inside stdout's buffer in the copy
    (the flusher thread, which does not exist there, could never let go of it)."""
    if _flusher is not None:
        _flusher.lock.acquire()
        _flusher.flush_all()


def _after_fork_in_parent():
    if _flusher is not None:
        _flusher.lock.release()


def _after_fork_in_child():
    if _flusher is not None:
        _flusher.lock.release()
        # A child's barriers would interleave with the worker's (and a child killed between
        # the two writes would leave one pipe a barrier short). A transaction's snapshot gets
        # them back when it takes over.
        _flusher.barrier = None
