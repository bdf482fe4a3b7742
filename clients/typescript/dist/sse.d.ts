/**
 * Server-sent events read from a `fetch` body: browsers' `EventSource` can neither POST nor
 * send `Authorization`, so the execute request's own streamed answer is parsed here.
 */
/**
 * The longest line the parser holds while waiting for its end. One event is at most one
 * worker frame (16 MiB of UTF-8) with its envelope, so 32 Mi characters leave room; a
 * stream that passes it is refused rather than buffered without end.
 */
export declare const MAX_SSE_LINE: number;
/**
 * The `data:` payloads of a server-sent-event stream, JSON-decoded, until it ends. Each
 * chunk is scanned once (a line that spans many chunks is joined once, at its end), so a
 * large event costs time in proportion to its size.
 */
export declare function sseData(body: ReadableStream<Uint8Array>): AsyncGenerator<unknown>;
