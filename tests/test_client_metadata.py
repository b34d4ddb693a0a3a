"""A tenant or API key gRPC cannot send is refused when the client is made, with
what is wrong, not as INTERNAL "Invalid metadata" on the first call."""

from __future__ import annotations

import pytest

from semcache_client import AsyncSemcacheClient, SemcacheClient
from service.cli import main

PASTED_KEY = "sk-sc-…"  # a key with the README's old ellipsis in it


@pytest.mark.parametrize("client", [SemcacheClient, AsyncSemcacheClient])
def test_a_value_grpc_cannot_send_is_refused_when_the_client_is_made(
    client: type[SemcacheClient] | type[AsyncSemcacheClient],
) -> None:
    with pytest.raises(ValueError, match=r"api_key has '…' \(U\+2026\) at position 6"):
        client("127.0.0.1:1", api_key=PASTED_KEY)
    with pytest.raises(ValueError, match=r"tenant has 'é' \(U\+00E9\) at position 3"):
        client("127.0.0.1:1", tenant="café")


def test_the_cli_says_what_is_wrong_with_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["complete", "hi", "--api-key", PASTED_KEY, "--target", "127.0.0.1:1"])
    assert status == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("semcache: api_key has '…' (U+2026)"), last
