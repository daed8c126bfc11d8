"""The remote reward client against real HTTP servers on loopback: rewards come back in order and
batched as asked, transient failures (503, timeouts) are retried a bounded number of times, wrong
answers (a count mismatch, NaN) are never passed on as rewards, and a refused request (400) is not
retried. Each server records the queries it received, so the tests see what went over the wire."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from megatron_rm.errors import RewardServerError
from megatron_rm.ppo.config import RewardConfig
from megatron_rm.ppo.remote_reward import RemoteReward
from tests.conftest import REPO

# The server's answer to one request's queries (and how many requests came before): (status, body).
Respond = Callable[[list[str], int], tuple[int, bytes]]


def rewards_body(rewards: list) -> bytes:
    return json.dumps({"rewards": rewards, "scores": rewards, "extra_logs": {}}).encode()


def length_rewards(texts: list[str], _seen: int) -> tuple[int, bytes]:
    """A reward that identifies its text, so a reordering or a mix-up between batches shows."""
    return 200, rewards_body([float(len(text)) for text in texts])


@contextmanager
def reward_server(respond: Respond) -> Iterator[tuple[str, list[list[str]]]]:
    """A real server on a free loopback port: its base URL, and the queries of every request to /get_reward."""
    received: list[list[str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/get_reward" or self.headers["Content-Type"] != "application/json":
                status, body = 404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode()
            else:
                texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["query"]
                received.append(texts)
                status, body = respond(texts, len(received) - 1)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_rewards_come_back_in_order_for_exactly_the_texts_sent():
    texts = ["a", "bbb", "cc", "dddd"]
    with reward_server(length_rewards) as (url, received):
        assert RemoteReward(url, backoff_s=0.0).score(texts) == [1.0, 3.0, 2.0, 4.0]
    assert received == [texts]


def test_batch_size_splits_the_call_into_several_requests():
    texts = ["a", "bbb", "cc", "dddd", "eeeee"]
    with reward_server(length_rewards) as (url, received):
        assert RemoteReward(url, backoff_s=0.0, batch_size=2).score(texts) == [1.0, 3.0, 2.0, 4.0, 5.0]
    assert received == [["a", "bbb"], ["cc", "dddd"], ["eeeee"]]


@pytest.mark.parametrize("suffix", ["", "/", "/get_reward", "/get_reward/"])
def test_the_url_is_normalised_to_the_endpoint(suffix):
    with reward_server(length_rewards) as (url, received):
        client = RemoteReward(url + suffix, backoff_s=0.0)
        assert client.url == url + "/get_reward"
        assert client.score(["xy"]) == [2.0]
    assert received == [["xy"]]


def test_a_server_unavailable_twice_is_retried_until_it_answers():
    def unavailable_twice(texts: list[str], seen: int) -> tuple[int, bytes]:
        if seen < 2:
            return 503, json.dumps({"error": {"message": "warming up"}}).encode()
        return length_rewards(texts, seen)

    with reward_server(unavailable_twice) as (url, received):
        assert RemoteReward(url, retries=3, backoff_s=0.0).score(["abc", "d"]) == [3.0, 1.0]
    assert received == [["abc", "d"]] * 3


def test_the_wrong_number_of_rewards_fails_after_the_bounded_attempts():
    def one_short(texts: list[str], _seen: int) -> tuple[int, bytes]:
        return 200, rewards_body([0.5] * (len(texts) - 1))

    with reward_server(one_short) as (url, received):
        with pytest.raises(RewardServerError) as raised:
            RemoteReward(url, retries=2, backoff_s=0.0).score(["a", "b", "c", "d"])
    assert len(received) == 3
    message = str(raised.value)
    assert f"{url}/get_reward: 3 attempts failed" in message
    assert "returned 3 rewards for 4 queries" in message
    assert "nothing was trained" in message


@pytest.mark.parametrize("body", [b'{"rewards": [1.0, NaN]}', b'{"rewards": [1.0, "nan"]}',
                                  b'{"rewards": [1.0, Infinity]}', b'{"rewards": [1.0, true]}'])
def test_a_reward_that_is_not_a_finite_number_is_refused(body):
    with reward_server(lambda _texts, _seen: (200, body)) as (url, received):
        with pytest.raises(RewardServerError, match=r"rewards\[1\] is .*, not a finite number"):
            RemoteReward(url, retries=1, backoff_s=0.0).score(["a", "b"])
    assert len(received) == 2


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"scores": [1.0]}', b"[1.0]"])
def test_a_reply_without_a_rewards_list_is_a_failed_attempt(body):
    with reward_server(lambda _texts, _seen: (200, body)) as (url, received):
        with pytest.raises(RewardServerError, match="2 attempts failed; last: the reply (is not JSON|has no 'rewards)"):
            RemoteReward(url, retries=1, backoff_s=0.0).score(["a"])
    assert len(received) == 2


def test_a_bad_request_is_not_retried_and_its_message_is_shown():
    def refuse(_texts: list[str], _seen: int) -> tuple[int, bytes]:
        return 400, json.dumps({"error": {"message": "query[0]: an empty string", "code": 400}}).encode()

    with reward_server(refuse) as (url, received):
        with pytest.raises(RewardServerError) as raised:
            RemoteReward(url, retries=3, backoff_s=0.0).score([""])
    assert len(received) == 1
    message = str(raised.value)
    assert f"{url}/get_reward" in message and "HTTP 400: query[0]: an empty string" in message


def test_a_timeout_is_a_failed_attempt():
    def slow_once(texts: list[str], seen: int) -> tuple[int, bytes]:
        if seen == 0:
            time.sleep(0.5)
        return length_rewards(texts, seen)

    with reward_server(slow_once) as (url, received):
        assert RemoteReward(url, timeout_s=0.2, retries=1, backoff_s=0.0).score(["ab"]) == [2.0]
    assert len(received) == 2


def test_nothing_listening_fails_naming_the_url_after_the_bounded_attempts():
    # A socket bound but never listening: the port is ours, so connecting to it is refused, not taken by another.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(RewardServerError) as raised:
            RemoteReward(url, retries=2, backoff_s=0.001).score(["a"])
    message = str(raised.value)
    assert f"{url}/get_reward: 3 attempts failed" in message and "refused" in message.lower()


def test_the_shipped_retries_wait_out_a_server_restart():
    """conf/train_ppo.yaml's retries and back-off wait at least a minute in all (a reward server
    takes 20-30 s to start), and the client waits exactly those doubling times."""
    reward = yaml.safe_load((REPO / "conf" / "train_ppo.yaml").read_text())["reward"]
    assert (reward["retries"], reward["backoff_s"]) == (RewardConfig.retries, RewardConfig.backoff_s)
    waits = [reward["backoff_s"] * 2 ** attempt for attempt in range(reward["retries"])]
    assert sum(waits) >= 60, waits
    slept = []
    with socket.socket() as held, pytest.MonkeyPatch.context() as patch:
        held.bind(("127.0.0.1", 0))
        patch.setattr(time, "sleep", slept.append)
        with pytest.raises(RewardServerError, match=f"{reward['retries'] + 1} attempts failed"):
            RemoteReward(f"http://127.0.0.1:{held.getsockname()[1]}", retries=reward["retries"],
                         backoff_s=reward["backoff_s"]).score(["a"])
    assert slept == waits
