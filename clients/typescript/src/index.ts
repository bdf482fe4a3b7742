/**
 * The TypeScript client of a pyrepl3 server (`pyrepl3 serve`), for Node 20+ and browsers:
 * sessions, runs with live output and `input()`, cancel, files, checkpoints, the namespace,
 * over `fetch`, server-sent events and the WebSocket. No dependencies.
 */

export { ApiError, ExecutionError } from "./errors.js";
export {
  Display,
  Result,
  Run,
  type DisplayEvent,
  type ExecutionErrorEvent,
  type ExecutionEvent,
  type InputEvent,
  type InputHandler,
  type MimeBundle,
  type Output,
  type OutputEvent,
  type ResultEvent,
  type RunCallbacks,
} from "./events.js";
export {
  Client,
  Session,
  type CancelOutcome,
  type CheckpointRecord,
  type ClientOptions,
  type CreateSessionOptions,
  type ExecuteOptions,
  type FileEntry,
  type NamespaceEntry,
  type RunOptions,
  type SessionInfo,
} from "./client.js";
export { MAX_QUEUED_EVENTS, SessionSocket, type SocketRunOptions, type WebSocketConstructor, type WebSocketLike } from "./socket.js";
export { MAX_SSE_LINE } from "./sse.js";
