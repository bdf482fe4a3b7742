/**
 * Server-sent events read from a `fetch` body: browsers' `EventSource` can neither POST nor
 * send `Authorization`, so the execute request's own streamed answer is parsed here.
 */
import { ApiError } from "./errors.js";
/**
 * The longest line the parser holds while waiting for its end. One event is at most one
 * worker frame (16 MiB of UTF-8) with its envelope, so 32 Mi characters leave room; a
 * stream that passes it is refused rather than buffered without end.
 */
export const MAX_SSE_LINE = 32 * 1024 * 1024;
/**
 * The `data:` payloads of a server-sent-event stream, JSON-decoded, until it ends. Each
 * chunk is scanned once (a line that spans many chunks is joined once, at its end), so a
 * large event costs time in proportion to its size.
 */
export async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let pieces = []; // the line so far, when it spans chunks
    let pendingLength = 0;
    let data = [];
    // One line of the stream: a `data:` line adds to the event, an empty one ends it.
    function* line(raw) {
        const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (text.startsWith("data:")) {
            data.push(text.slice(text.startsWith("data: ") ? 6 : 5));
        }
        else if (text === "" && data.length > 0) {
            const payload = data.join("\n");
            data = [];
            yield parse(payload);
        }
    }
    // The server sends each event as one line of JSON: one that does not parse is the start
    // of an event whose end never came (the stream was cut), or not this API's stream.
    function parse(payload) {
        try {
            return JSON.parse(payload);
        }
        catch {
            throw new ApiError(0, "stream_ended", `an event of the stream is not whole JSON (${payload.length} characters): the stream was cut inside it?`);
        }
    }
    // A read that fails is a connection cut on the way (fetch's own TypeError, "terminated").
    async function read() {
        try {
            return await reader.read();
        }
        catch (error) {
            throw new ApiError(0, "stream_ended", `the event stream was cut: ${error}`);
        }
    }
    // The lines that `text` ends; what follows its last newline waits for the next chunk.
    function* feed(text) {
        let start = 0;
        for (let end = text.indexOf("\n"); end >= 0; end = text.indexOf("\n", start)) {
            pieces.push(text.slice(start, end));
            const whole = pieces.join("");
            pieces = [];
            pendingLength = 0;
            start = end + 1;
            yield* line(whole);
        }
        if (start < text.length) {
            pieces.push(text.slice(start));
            pendingLength += text.length - start;
            if (pendingLength > MAX_SSE_LINE) {
                throw new ApiError(0, "event_too_large", `an event stream line passed ${MAX_SSE_LINE} characters`);
            }
        }
    }
    try {
        for (;;) {
            const { value, done } = await read();
            if (done) {
                break;
            }
            yield* feed(decoder.decode(value, { stream: true }));
        }
        yield* feed(decoder.decode());
        if (pieces.length > 0) {
            yield* line(pieces.join(""));
        }
        yield* line("");
    }
    finally {
        // Early exit (the consumer stopped, an error): drop the rest of the stream.
        await reader.cancel().catch(() => undefined);
    }
}
