"""A real MCP client (the official `mcp` package, its streamable HTTP transport) driving
`/mcp` of a running `pyrepl3 serve`, as an agent would, with a tenant's bearer token. Run by
tests/mcp_http.rs: argv[1] is the server's base URL, argv[2] and argv[3] the tokens of two
tenants. Prints the transcript; exits non-zero on the first wrong answer."""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_checks import (Agent, both_transports_checks, check,
                        input_without_elicitation_is_end_of_file, text_of, server_is_described)

INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "raw", "version": "0"}}}).encode()


def status_of(base, token):
    """The status of an MCP initialize POSTed with `token` (None: no Authorization)."""
    headers = {"Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(base + "/mcp", data=INITIALIZE, headers=headers)
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.headers.get("content-type")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rest_sessions(base, token):
    request = urllib.request.Request(base + "/v1/sessions",
                                     headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request) as answer:
        return [s["id"] for s in json.loads(answer.read())["sessions"]]


def rest_new_session(base, token):
    request = urllib.request.Request(base + "/v1/sessions", data=b"{}", method="POST",
                                     headers={"Authorization": "Bearer " + token,
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())["id"]


def rest_execute(base, token, session_id, code):
    """The events of `code` run in the session over the REST API, as server-sent events
    (a generator: each event as it comes, to the end of the stream)."""
    request = urllib.request.Request(
        "%s/v1/sessions/%s/execute" % (base, session_id),
        data=json.dumps({"code": code}).encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json",
                 "Accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        for raw in answer:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                yield json.loads(line[5:])


def connect(base, token):
    http = httpx2.AsyncClient(headers={"Authorization": "Bearer " + token},
                              timeout=httpx2.Timeout(30.0, read=300.0))
    return streamable_http_client(base + "/mcp", http_client=http)


async def main(base, alice, bob):
    for token in (None, "not-a-token"):
        status, body = status_of(base, token)
        print("> POST /mcp initialize, token", repr(token), "\n<", status, body, flush=True)
        check(status == 401 and body["error"]["code"] == "unauthorized", (status, body))
    status, kind = status_of(base, alice)
    print("> POST /mcp initialize, alice's token\n<", status, kind, flush=True)
    check(status == 200, status)

    agent = Agent()
    async with connect(base, alice) as (read, write):
        async with ClientSession(read, write, elicitation_callback=agent.elicit) as session:
            server_is_described(await session.initialize())
            agent.session = session
            await both_transports_checks(agent)
            r = await agent.call("create_session", session="shown")
            shown = json.loads(text_of(r))["id"]
            # The MCP sessions are alice's sessions of the service, and only hers.
            alices, bobs = rest_sessions(base, alice), rest_sessions(base, bob)
            print("> GET /v1/sessions (alice)\n<", alices, "\n> GET /v1/sessions (bob)\n<",
                  bobs)
            check(shown in alices and shown not in bobs, (shown, alices, bobs))
            # Code waiting in one of them, followed over the REST API.
            waiting = rest_execute(base, alice, shown, "input('waiting? ')")
            first = next(waiting)
            print("> POST /v1/sessions/<shown>/execute (SSE)\n<", first["type"], flush=True)
            check(first["type"] == "input", first)

    # The connection is closed (DELETE /mcp): the sessions it made end with it, and the
    # code waiting in one of them ends too.
    last = list(waiting)[-1]
    print("> (the MCP connection closed)\n<", last["type"], last.get("exception_type"),
          flush=True)
    check(last["type"] == "error", last)
    check(shown not in rest_sessions(base, alice), "the connection's sessions are closed")
    # A session of alice's made over REST, for bob's tries below.
    shown = rest_new_session(base, alice)

    plain = Agent()
    async with connect(base, bob) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            plain.session = session
            r = await plain.call("list_sessions")
            check(shown not in text_of(r), "bob does not see alice's sessions: " + text_of(r))
            r = await plain.call("reset_session", session=shown)
            check(r.is_error and "no open session" in text_of(r), "nor reach them")
            r = await plain.call("list_checkpoints")
            check(json.loads(text_of(r)) == [], "nor her checkpoints: " + text_of(r))
            await input_without_elicitation_is_end_of_file(plain)
            check(len(rest_sessions(base, bob)) == 1, "bob's MCP session is his")
            # One MCP session names 16 sessions at most (bob may hold more).
            for n in range(15):
                r = await plain.session.call_tool("create_session", {"session": "s%d" % n})
                check(not r.is_error, text_of(r))
            r = await plain.call("create_session", session="one-too-many")
            check(r.is_error and "16 named sessions" in text_of(r), text_of(r))
            r = await plain.call("close_session", session="s0")
            r = await plain.call("create_session", session="one-more")
            check(not r.is_error, "a closed session frees its name: " + text_of(r))
    print("MCP HTTP OK")


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
