"""A deliberately naive pass-through proxy: what a Python user would write first.

aiohttp's web.Application, one ClientSession per process, uvloop, no authentication; the
response is read whole and answered. `--workers N` processes share the port (SO_REUSEPORT), as
the gateway's workers do.

    python -m bench.baselines.naive_proxy --port 8001 --upstream http://127.0.0.1:9000 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SKIP = {"host", "content-length", "transfer-encoding", "connection"}


def make_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=0)

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    async def proxy(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIP}
        data = request.content if request.body_exists else None
        async with session.request(request.method, upstream + request.path_qs,
                                   headers=headers, data=data) as upstream_response:
            body = await upstream_response.read()
            out = {k: v for k, v in upstream_response.headers.items() if k.lower() not in SKIP}
            return web.Response(status=upstream_response.status, body=body, headers=out)

    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def run_worker(port: int, upstream: str) -> None:
    uvloop.install()
    web.run_app(make_app(upstream), host="127.0.0.1", port=port, reuse_port=True,
                access_log=None, print=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    workers = [multiprocessing.Process(target=run_worker, args=(args.port, args.upstream))
               for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
