//! One running worker as the session actor holds it: the process, the framed reader and
//! writer of each protocol channel, the output pipes and the signal-target file; and the
//! kernel's view of whether its main thread is idle (for `core/overrun.rs`).

use std::os::fd::AsRawFd;

use tokio::net::unix::{pipe, OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::core::overrun::IdleProbe;
use crate::protocol::{Message, MessageCodec, ProtocolError};
use crate::worker::{self, SpawnedWorker, WorkerProcess};

/// One running worker process and the host's ends of its channels and pipes.
pub(super) struct LiveWorker {
    pub(super) process: WorkerProcess,
    /// `EXEC` and `CONTROL` (see `docs/protocol.md`); `None` once closed.
    pub(super) readers: [Option<FramedRead<OwnedReadHalf, MessageCodec>>; 2],
    pub(super) writers: [FramedWrite<OwnedWriteHalf, MessageCodec>; 2],
    /// Where the target of the next SIGINT is written.
    pub(super) signal_target: std::os::fd::OwnedFd,
    /// stdout and stderr; `None` once ended.
    pub(super) pipes: [Option<pipe::Receiver>; 2],
    /// The kernel showed the main thread's syscall when the worker started. If it stops
    /// doing so, the worker hid itself (`prctl(PR_SET_DUMPABLE, 0)` refuses the host's
    /// ptrace access), which only user code does: it counts as busy, not as unknown.
    pub(super) syscall_readable: bool,
}

pub(super) const EXEC: usize = 0;
pub(super) const CONTROL: usize = 1;

impl LiveWorker {
    pub(super) fn new(spawned: SpawnedWorker, max_frame_len: usize) -> Self {
        let SpawnedWorker {
            process,
            exec,
            control,
            signal_target,
            stdout,
            stderr,
        } = spawned;
        let (exec_r, exec_w) = exec.into_split();
        let (control_r, control_w) = control.into_split();
        let writer = |half| {
            let mut w = FramedWrite::new(half, MessageCodec::new(max_frame_len));
            // Frames are queued without waiting (the actor never blocks on the worker) and
            // written when the socket has room: the `select!` flushes while any are pending.
            w.set_backpressure_boundary(usize::MAX);
            w
        };
        let syscall_readable =
            worker::main_thread_reading(process.pid(), worker::EXEC_FD).is_some();
        LiveWorker {
            syscall_readable,
            process,
            readers: [
                Some(FramedRead::new(exec_r, MessageCodec::new(max_frame_len))),
                Some(FramedRead::new(control_r, MessageCodec::new(max_frame_len))),
            ],
            writers: [writer(exec_w), writer(control_w)],
            signal_target,
            pipes: [Some(stdout), Some(stderr)],
        }
    }

    /// The Python process that runs the code said its pid: at `ready`, or when a
    /// transaction's snapshot took over. It is located on the host, and whether its main
    /// thread's syscall is readable is known from then on.
    pub(super) fn on_worker_pid(&mut self, worker_pid: u32) {
        if !self.process.relocate(worker_pid) {
            tracing::warn!(worker_pid, "the worker's Python process could not be found on the host; interrupts and limits cannot reach it");
            return;
        }
        self.syscall_readable =
            worker::main_thread_reading(self.process.pid(), worker::EXEC_FD).is_some();
    }

    /// The kernel's view of whether the worker's main thread is idle (`core/overrun.rs`):
    /// blocked reading the exec channel, and how much of what was sent on it is unread
    /// (still in the socket, or not yet written to it).
    pub(super) fn probe_idle(&self) -> IdleProbe {
        let writer = &self.writers[EXEC];
        let mut in_socket: libc::c_int = 0;
        let fd = writer.get_ref().as_ref().as_raw_fd();
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through a valid pointer.
        let queried = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut in_socket) } == 0;
        let unread_exec_bytes = usize::try_from(in_socket)
            .ok()
            .filter(|_| queried)
            .map(|n| n + writer.write_buffer().len());
        let reading_exec = worker::main_thread_reading(self.process.pid(), worker::EXEC_FD)
            .or(self.syscall_readable.then_some(false));
        IdleProbe {
            reading_exec,
            unread_exec_bytes,
        }
    }
}

/// What one read from a protocol channel means.
pub(super) enum ChannelRead {
    Frame(Message),
    /// The channel ended. A read error counts as an end too: the kernel answers ECONNRESET
    /// when the worker died with bytes it never read, and the death is reported by the exit,
    /// not as a fault of the protocol.
    End,
    /// Bytes that are not the protocol: nothing more from this worker can be trusted.
    Broken(String),
}

impl From<Option<Result<Message, ProtocolError>>> for ChannelRead {
    fn from(read: Option<Result<Message, ProtocolError>>) -> Self {
        match read {
            Some(Ok(msg)) => ChannelRead::Frame(msg),
            None | Some(Err(ProtocolError::Io(_))) => ChannelRead::End,
            Some(Err(e)) => ChannelRead::Broken(e.to_string()),
        }
    }
}
