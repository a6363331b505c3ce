"""Client ID metadata documents (the MCP authorization spec, 2025-11-25; draft-ietf-oauth-client-
id-metadata-document): a client whose `client_id` is an https URL publishes its metadata at
that URL, and the authorization server reads it there instead of asking it to register. The MCP
SDK's `OAuthClientProvider(client_metadata_url=...)` uses it when the metadata says
`client_id_metadata_document_supported`.

Fetching a URL a stranger names is a server-side request forgery risk, so the fetch is narrow:
https only, no redirects, 5 s, 16 KiB, and addresses that are not public (loopback, private,
link-local) refused unless `registration.metadataPrivateHosts` allows them (tests, a LAN). The
document must name itself (`client_id` equal to its URL), list redirect URIs that pass
`check_redirect_uri`, and ask for no client secret (`token_endpoint_auth_method: none`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlparse

import httpx2
from mcp.shared.auth import OAuthClientInformationFull

from gateway.auth.redirects import check_redirect_uri

MAX_BYTES = 16_384
TIMEOUT_S = 5.0
MAX_URL = 512


class MetadataDocumentError(Exception):
    """Why a client ID metadata document was not accepted (safe to log and to show)."""


def is_metadata_url(client_id: str) -> bool:
    """Whether a client id is a metadata document URL: https, a host, a path below the root."""
    if len(client_id) > MAX_URL or not client_id.startswith("https://"):
        return False
    parsed = urlparse(client_id)
    return (
        bool(parsed.hostname)
        and parsed.path not in ("", "/")
        and not parsed.fragment
        and "@" not in parsed.netloc
    )


async def _public_host(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MetadataDocumentError(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise MetadataDocumentError(f"{host} resolves to {address}, not a public address")


async def fetch_client(
    url: str, *, scopes: list[str], private_hosts: bool = False, ca_file: str | None = None
) -> OAuthClientInformationFull:
    """The client a metadata document at `url` describes, checked (see the module)."""
    if not is_metadata_url(url):
        raise MetadataDocumentError("a client id metadata document URL is https, with a path")
    parsed = urlparse(url)
    if not private_hosts:
        await _public_host(parsed.hostname or "", parsed.port or 443)
    verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
    try:
        async with (
            httpx2.AsyncClient(verify=verify, follow_redirects=False, timeout=TIMEOUT_S) as http,
            http.stream("GET", url, headers={"accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise MetadataDocumentError(f"{url} answered {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise MetadataDocumentError(f"the document is over {MAX_BYTES} bytes")
    except httpx2.HTTPError as exc:
        raise MetadataDocumentError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
    return client_of(url, body, scopes)


def client_of(url: str, body: bytes, scopes: list[str]) -> OAuthClientInformationFull:
    """The document's client, or MetadataDocumentError saying what is wrong with it. Pure."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MetadataDocumentError("the document is not JSON") from None
    if not isinstance(doc, dict):
        raise MetadataDocumentError("the document is not a JSON object")
    if doc.get("client_id") != url:
        raise MetadataDocumentError("the document's client_id is not its own URL")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > 10 or not all(isinstance(u, str) for u in uris):
        raise MetadataDocumentError("redirect_uris must be a list of 1 to 10 URLs")
    for uri in uris:
        why = check_redirect_uri(uri)
        if why is not None:
            raise MetadataDocumentError(f"redirect URI {uri[:200]!r}: {why}")
    method = doc.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise MetadataDocumentError(f"token_endpoint_auth_method {str(method)[:40]!r}: only 'none' is taken")
    grants = doc.get("grant_types", ["authorization_code", "refresh_token"])
    if (
        not isinstance(grants, list)
        or "authorization_code" not in grants
        or not set(grants)
        <= {
            "authorization_code",
            "refresh_token",
        }
    ):
        raise MetadataDocumentError("grant_types must be authorization_code, and refresh_token if any")
    name = doc.get("client_name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise MetadataDocumentError("client_name must be a string of at most 200 characters")
    try:
        return OAuthClientInformationFull.model_validate(
            {
                "client_id": url,
                "redirect_uris": uris,
                "token_endpoint_auth_method": "none",
                "grant_types": grants,
                "response_types": ["code"],
                "client_name": name,
                "scope": " ".join(scopes) or None,
            }
        )
    except ValueError as exc:
        raise MetadataDocumentError(f"not valid client metadata: {exc}") from None
