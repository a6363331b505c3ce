"""Client ID metadata documents (gateway/auth/metadata_docs.py): which URLs are ones, which
documents are taken, and that a host with no public address is not fetched unless allowed."""

from __future__ import annotations

import json

import anyio
import pytest

from gateway.auth.metadata_docs import MetadataDocumentError, client_of, fetch_client, is_metadata_url

URL = "https://app.example/oauth/client.json"
CB = ["https://a.example/cb"]


@pytest.mark.parametrize(
    ("client_id", "yes"),
    [
        (URL, True),
        ("https://app.example/", False),
        ("https://app.example", False),
        ("http://app.example/client.json", False),
        ("https://user@app.example/client.json", False),
        ("https://app.example/c.json#x", False),
        ("https://app.example/" + "a" * 600, False),
        ("3f1c-uuid-like", False),
    ],
)
def test_is_metadata_url(client_id: str, yes: bool) -> None:
    assert is_metadata_url(client_id) is yes


def test_a_good_document_becomes_a_public_client() -> None:
    doc = {"client_id": URL, "client_name": "app", "redirect_uris": ["http://127.0.0.1:9/cb"]}
    client = client_of(URL, json.dumps(doc).encode(), ["tools:call:*"])
    assert client.client_id == URL and client.token_endpoint_auth_method == "none"
    assert client.grant_types == ["authorization_code", "refresh_token"] and client.scope == "tools:call:*"


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (
            {"client_id": "https://other.example/c.json", "redirect_uris": CB},
            "its own URL",
        ),
        ({"client_id": URL}, "redirect_uris"),
        ({"client_id": URL, "redirect_uris": ["javascript:alert(1)"]}, "redirect URI"),
        (
            {
                "client_id": URL,
                "redirect_uris": CB,
                "token_endpoint_auth_method": "private_key_jwt",
            },
            "only 'none'",
        ),
        (
            {"client_id": URL, "redirect_uris": CB, "grant_types": ["refresh_token"]},
            "grant_types",
        ),
    ],
)
def test_bad_documents(doc: dict[str, object], why: str) -> None:
    with pytest.raises(MetadataDocumentError, match=why):
        client_of(URL, json.dumps(doc).encode(), [])


def test_a_loopback_host_is_not_fetched_unless_allowed() -> None:
    async def main() -> None:
        await fetch_client("https://127.0.0.1:9/client.json", scopes=[])

    with pytest.raises(MetadataDocumentError, match="not a public address"):
        anyio.run(main)
