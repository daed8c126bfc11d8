"""Rewards from a reward model served elsewhere, over OpenRLHF's remote reward-model protocol:
`POST /get_reward` with `{"query": [text, ...]}`, answered `{"rewards": [float, ...], ...}`, which
our server (`megatron_rm.server.app`) and OpenRLHF's own both speak.

PPO scores this way when the reward model cannot sit in the training job: it has another tokenizer
than the actor (so it must read text, not the actor's ids), or it runs on other machines. Only the
standard library is used, so the client adds no dependency. A server that is down, overloaded or
answers in the wrong shape is retried a bounded number of times, then the run stops with an error
naming the URL: a reward is never made up, so no step trains on a missing one.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.request

from megatron_rm.errors import ConfigError, RewardServerError

ENDPOINT = "/get_reward"
NOTHING_TRAINED = "nothing was trained on the missing rewards"


class _Failed(Exception):
    """One attempt that may succeed if made again; the message says what went wrong."""


class RemoteReward:
    """Scores whole (prompt + response) texts with the reward server at `url`."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0,
                 batch_size: int = 0):
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or batch_size < 0:
            raise ConfigError(f"RemoteReward({url!r}): timeout_s must be > 0 and retries, backoff_s and batch_size "
                              f">= 0 (got {timeout_s}, {retries}, {backoff_s}, {batch_size})")
        url = url.rstrip("/")
        self.url = url if url.endswith(ENDPOINT) else url + ENDPOINT
        self.timeout_s, self.retries, self.backoff_s, self.batch_size = timeout_s, retries, backoff_s, batch_size

    def score(self, texts: list[str]) -> list[float]:
        """One finite reward per text, in order; at most `batch_size` texts per request when it is set."""
        size = self.batch_size or max(len(texts), 1)
        return [reward for start in range(0, len(texts), size) for reward in self._scored(texts[start:start + size])]

    def _scored(self, texts: list[str]) -> list[float]:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._request(texts)
            except _Failed as failure:
                last = str(failure)
            if attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise RewardServerError(f"{self.url}: {attempts} attempts failed; last: {last}; {NOTHING_TRAINED}")

    def _request(self, texts: list[str]) -> list[float]:
        request = urllib.request.Request(self.url, data=json.dumps({"query": texts}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            why = f"HTTP {error.code}: {_server_message(error)}"
            if error.code >= 500 or error.code == 429:
                raise _Failed(why) from None
            raise RewardServerError(f"{self.url}: the server refused the request ({why}); not retried, as the "
                                    f"request itself is wrong; {NOTHING_TRAINED}") from None
        except urllib.error.URLError as error:  # refused, unknown host, or a timeout while connecting
            raise _Failed(f"no answer ({error.reason})") from None
        except (OSError, http.client.HTTPException) as error:  # reset, closed or timed out mid-reply
            raise _Failed(f"no answer ({type(error).__name__}: {error})") from None
        return _rewards(body, len(texts))


def _rewards(body: bytes, expected: int) -> list[float]:
    """The reply's rewards, checked; integers are read as floats so a huge one is infinite, not an error."""
    try:
        reply = json.loads(body, parse_int=float)
    except ValueError:  # also bytes that are not UTF-8
        raise _Failed(f"the reply is not JSON: {body[:200]!r}") from None
    rewards = reply.get("rewards") if isinstance(reply, dict) else None
    if not isinstance(rewards, list):
        raise _Failed(f"the reply has no 'rewards' list: {body[:200]!r}")
    if len(rewards) != expected:
        raise _Failed(f"returned {len(rewards)} rewards for {expected} queries")
    for index, reward in enumerate(rewards):
        if not isinstance(reward, float) or not math.isfinite(reward):
            raise _Failed(f"rewards[{index}] is {reward!r}, not a finite number")
    return rewards


def _server_message(error: urllib.error.HTTPError) -> str:
    """Our server's `{"error": {"message": ...}}`, else the start of whatever body came back."""
    try:
        body = error.read()
    except (OSError, http.client.HTTPException):
        return str(error.reason)
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace") or str(error.reason)
