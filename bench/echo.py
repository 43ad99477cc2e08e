"""A bare aiohttp WebSocket echo server: the ceiling every load figure is compared with.

`python -m bench.echo --port P` serves ws://127.0.0.1:P/ws and sends every binary
frame straight back, with nothing else in the way; it prints READY when it listens.
"""

from __future__ import annotations

import argparse

from aiohttp import WSMsgType, web


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/ws", echo)

    async def ready(_: web.Application) -> None:
        print("READY", flush=True)

    app.on_startup.append(ready)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None,
                loop=loop_factory() if loop_factory else None)  # fmt: skip


if __name__ == "__main__":
    main()
