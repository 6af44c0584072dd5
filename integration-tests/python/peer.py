"""Python peers for the interop tests, driven line by line over stdin and stdout.

Each mode runs one of the real fastapi-websocket-rpc / fastapi-websocket-pubsub objects.
Commands arrive as JSON lines on stdin, {"id": N, "op": ...}, and every reply is a JSON line
{"id": N, "result": ...} or {"id": N, "error": "..."} on stdout. Events the peer receives are
written as {"event": ...} lines. Logs go to stderr.

Modes:
  pubsub-client URL   a PubSubClient
  rpc-client URL      a WebSocketRpcClient exposing multiply() and greet()
  server              a PubSubEndpoint on 127.0.0.1 with an ephemeral port, printed first as
                      {"event": "listening", "port": N}; pass --broadcaster URL (and
                      --channel NAME) to share publications through an EventBroadcaster
"""

import argparse
import asyncio
import json
import logging
import socket
import sys

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def commands():
    """Yields one parsed command per stdin line until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        yield json.loads(line)


async def serve_commands(handlers):
    """Runs each command through handlers[op] and writes its reply."""
    async for command in commands():
        handler = handlers.get(command["op"])
        try:
            if handler is None:
                raise ValueError(f"unknown op {command['op']!r}")
            result = await handler(command)
            emit({"id": command["id"], "result": result})
        except Exception as error:  # reported to the test, which decides
            emit({"id": command["id"], "error": f"{type(error).__name__}: {error}"})


async def run_pubsub_client(url):
    from fastapi_websocket_pubsub import PubSubClient
    from tenacity import wait_fixed

    connects = 0

    async def on_connect(_client, _channel):
        nonlocal connects
        connects += 1
        emit({"event": "connected", "count": connects})

    client = PubSubClient(on_connect=[on_connect], retry_config={"wait": wait_fixed(0.2)})

    async def on_event(data=None, topic=None):
        emit({"event": "notify", "topic": topic, "data": data})

    async def subscribe(command):
        for topic in command["topics"]:
            await client.subscribe(topic, on_event)
        return True

    async def unsubscribe(command):
        await client.unsubscribe(command["topic"])
        return True

    async def publish(command):
        response = await client.publish(
            command["topics"], data=command.get("data"), sync=command.get("sync", True)
        )
        return response.result

    async def start(command):
        client.start_client(url)
        await client.wait_until_ready()
        return True

    async def wait_ready(command):
        await client.wait_until_ready()
        return True

    await serve_commands(
        {
            "subscribe": subscribe,
            "unsubscribe": unsubscribe,
            "publish": publish,
            "start": start,
            "wait_ready": wait_ready,
        }
    )
    await client.disconnect()


async def run_rpc_client(url):
    from fastapi_websocket_rpc import RpcMethodsBase, WebSocketRpcClient

    class ClientMethods(RpcMethodsBase):
        async def multiply(self, a: int, b: int) -> int:
            return a * b

        async def greet(self, name: str) -> str:
            return f"hello {name}"

    async with WebSocketRpcClient(url, ClientMethods(), default_response_timeout=10) as client:
        emit({"event": "connected", "channel_id": client.channel.id})

        async def call(command):
            response = await client.call(command["method"], command.get("args", {}))
            return {"result": response.result, "result_type": response.result_type}

        await serve_commands({"call": call})


async def run_server(broadcaster_url, channel):
    import uvicorn
    from fastapi import FastAPI, WebSocket
    from fastapi_websocket_pubsub import EventBroadcaster, PubSubEndpoint
    from fastapi_websocket_pubsub.rpc_event_methods import RpcEventServerMethods
    from fastapi_websocket_pubsub.websocket_rpc_event_notifier import WebSocketRpcEventNotifier

    class ServerMethods(RpcEventServerMethods):
        async def add(self, a: int, b: int) -> int:
            return a + b

    # A method of the Python server cannot call its client back: the Python channel handles
    # requests inside its read loop, so it would wait forever for the response. Calls to the
    # client are made from the command loop instead.
    channels = []

    async def on_connect(channel):
        channels.append(channel)

    notifier = WebSocketRpcEventNotifier()
    broadcaster = None
    if broadcaster_url:
        broadcaster = EventBroadcaster(broadcaster_url, notifier=notifier, channel=channel)
    app = FastAPI()
    endpoint = PubSubEndpoint(
        methods_class=ServerMethods,
        notifier=notifier,
        broadcaster=broadcaster,
        on_connect=[on_connect],
    )

    # PubSubEndpoint.register_route routes to the inner RPC endpoint and so skips the
    # broadcaster; the endpoint's own main_loop is the one that shares publications.
    @app.websocket("/pubsub")
    async def pubsub(websocket: WebSocket):
        await endpoint.main_loop(websocket)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="websockets")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    emit({"event": "listening", "port": port})

    async def publish(command):
        await endpoint.publish(command["topics"], data=command.get("data"))
        return True

    async def call_client(command):
        method = getattr(channels[-1].other, command["method"])
        response = await method(**command.get("args", {}))
        return response.result

    await serve_commands({"publish": publish, "call_client": call_client})
    server.should_exit = True
    await serving


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pubsub-client", "rpc-client", "server"])
    parser.add_argument("url", nargs="?")
    parser.add_argument("--broadcaster")
    parser.add_argument("--channel", default="EventNotifier")
    args = parser.parse_args()
    if args.mode == "pubsub-client":
        asyncio.run(run_pubsub_client(args.url))
    elif args.mode == "rpc-client":
        asyncio.run(run_rpc_client(args.url))
    else:
        asyncio.run(run_server(args.broadcaster, args.channel))


if __name__ == "__main__":
    main()
