/**
 * The TypeScript client of a pyrepl3 server (`pyrepl3 serve`), for Node 20+ and browsers:
 * sessions, runs with live output and `input()`, cancel, files, checkpoints, the namespace,
 * over `fetch`, server-sent events and the WebSocket. No dependencies.
 */
export { ApiError, ExecutionError } from "./errors.js";
export { Display, Result, Run, } from "./events.js";
export { Client, Session, } from "./client.js";
export { MAX_QUEUED_EVENTS, SessionSocket } from "./socket.js";
export { MAX_SSE_LINE } from "./sse.js";
