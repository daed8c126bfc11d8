"""--header-timeout-s: a client that opens a connection and does not finish its request headers
in time is answered 408 (or, having sent nothing, closed) instead of holding the connection
forever, while other clients are served. The timer covers headers only: a slow body that keeps
arriving, and a kept-alive connection idle between requests, are not cut by it. Real stalled
sockets against real uvicorn on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import requests

from megatron_rm.server.app import HeaderTimeout, build_app
from megatron_rm.server.serving_loop import Batcher, Lead
from tests.scoring.test_server import one, running  # noqa: F401 (a fixture)

TIMEOUT_S = 0.5
SLACK_S = 3.0
ITEMS = {"items": [{"prompt": "What is 2+2?", "response": " It is 4."}]}


@pytest.fixture(scope="module")
def timed(one):  # noqa: F811
    scorer = one[1]
    app = build_app(scorer, Batcher(Lead(scorer)), name="rm-timed")
    with running(app, http=HeaderTimeout.after(TIMEOUT_S)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield url, (host, int(port)), requests.post(url + "/score", json=ITEMS, timeout=30).json()["rewards"]


def until_closed(client: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    data = b"".join(iter(lambda: client.recv(65536), b""))
    return data, time.monotonic()


def serving_meanwhile(url: str, stop: threading.Event, answers: list) -> None:
    while not stop.is_set():
        answers.append(requests.get(url + "/health", timeout=10).status_code)
        time.sleep(0.05)


def test_headers_that_stall_are_answered_408_while_others_are_served(timed):
    url, address, expected = timed
    stop, answers = threading.Event(), []
    health = threading.Thread(target=serving_meanwhile, args=(url, stop, answers))
    start = time.monotonic()  # the timer starts as the connection opens
    with socket.create_connection(address, timeout=30) as client:
        health.start()
        client.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        answer, closed = until_closed(client)
        stop.set()
        health.join()
    assert TIMEOUT_S - 0.05 <= closed - start < TIMEOUT_S + SLACK_S
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408 ") and "connection: close" in head.lower(), answer
    error = json.loads(body)["error"]
    assert error["code"] == 408 and f"did not arrive within {TIMEOUT_S:g} s (--header-timeout-s)" in error["message"]
    assert len(answers) >= 3 and set(answers) == {200}, answers  # /health answered all along
    assert requests.post(url + "/score", json=ITEMS, timeout=30).json()["rewards"] == expected


def test_headers_that_trickle_are_cut_too(timed):
    """The timer runs from the request's first byte: headers that keep dribbling in are still cut."""
    _, address, _ = timed
    with socket.create_connection(address, timeout=30) as client:
        start = time.monotonic()
        client.sendall(b"POST /score HTTP/1.1\r\n")
        try:
            for _ in range(20):
                time.sleep(0.1)
                client.sendall(b"X-Slow: y\r\n")
        except OSError:  # the server has closed the connection
            pass
        answer, closed = until_closed(client)
    assert answer.startswith(b"HTTP/1.1 408 ") and closed - start < TIMEOUT_S + SLACK_S, answer


def test_a_connection_that_sends_nothing_is_closed(timed):
    _, address, _ = timed
    start = time.monotonic()
    with socket.create_connection(address, timeout=30) as client:
        answer, closed = until_closed(client)
    assert answer == b"" and TIMEOUT_S - 0.05 <= closed - start < TIMEOUT_S + SLACK_S


def test_a_slow_body_and_an_idle_kept_alive_connection_are_not_cut(timed):
    url, address, expected = timed
    connection = http.client.HTTPConnection(*address, timeout=30)
    body = json.dumps(ITEMS).encode()
    parts = [body[i:i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]

    def slowly():
        for part in parts:  # the whole body takes about 4 x TIMEOUT_S, each part within --body-timeout-s
            time.sleep(TIMEOUT_S)
            yield part

    connection.request("POST", "/score", body=slowly(), headers={"Content-Type": "application/json",
                                                                 "Content-Length": str(len(body))})
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["rewards"] == expected
    kept = connection.sock
    time.sleep(3 * TIMEOUT_S)  # idle between requests: uvicorn's keep-alive timeout (5 s) applies, not ours
    connection.request("GET", "/health")
    response = connection.getresponse()
    assert response.status == 200 and connection.sock is kept
    response.read()
    connection.close()


def test_a_kept_alive_connection_that_stalls_in_its_next_headers_is_cut(timed):
    _, address, _ = timed
    with socket.create_connection(address, timeout=30) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"status":"ok"' not in first:
            first += client.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        client.sendall(b"GET /health HTTP/1.1\r\nHo")
        answer, closed = until_closed(client)
    assert answer.startswith(b"HTTP/1.1 408 ") and TIMEOUT_S - 0.05 <= closed - start < TIMEOUT_S + SLACK_S
