"""The GraphiQL page: offline (only vendored, integrity-checked assets) and usable with a key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gql_wallet.app import create_app
from gql_wallet.graphql.graphiql import ASSETS_URL
from gql_wallet.settings import Settings
from tests.conftest import LiveServer, start_server, stop_server

# The README's subscription, exactly.
SUBSCRIPTION = 'subscription { walletUpdated(customerId: "cus_42") { wallet { balance } } }'
ASSETS = Path(__file__).resolve().parents[1] / "gql_wallet" / "static" / "graphiql"
MANIFEST = json.loads((ASSETS / "manifest.json").read_text())

# CI sets this: there a missing Chromium is a failure, never a skip.
REQUIRE_BROWSER = os.environ.get("GQL_WALLET_TEST_REQUIRE_BROWSER") == "1"
CHROMIUM = os.environ.get("GQL_WALLET_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


async def make_client(tmp_path: Path, *, graphiql: bool) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'wallet.db'}", graphiql=graphiql)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in make_client(tmp_path, graphiql=True):
        yield client


async def graphiql_page(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    return response


class TestOfflinePage:
    async def test_the_page_loads_nothing_from_elsewhere(self, client: httpx.AsyncClient) -> None:
        page = (await graphiql_page(client)).text
        assert "http:" not in page and "https:" not in page and "//" not in page
        urls = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert urls and all(url.startswith(f"{ASSETS_URL}/") or url == "data:," for url in urls)

    async def test_every_asset_is_served_with_its_recorded_integrity(
        self, client: httpx.AsyncClient
    ) -> None:
        page = (await graphiql_page(client)).text
        tags = re.findall(r'(?:src|href)="(/static/[^"]+)" integrity="([^"]+)"', page)
        assert {url.rsplit("/", 1)[1] for url, _ in tags} == set(MANIFEST["assets"])
        for url, integrity in tags:
            served = await client.get(url)
            assert served.status_code == 200
            assert sri(served.content) == integrity, f"{url}: its integrity attribute is wrong"

    def test_the_manifest_matches_the_files_in_the_package(self) -> None:
        # Edited page.js or page.css? Run python3 .ci/vendor_graphiql.py to record their hashes.
        for name, integrity in MANIFEST["assets"].items():
            assert sri((ASSETS / name).read_bytes()) == integrity, name
        for package in MANIFEST["packages"].values():
            assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"])
            assert package["integrity"].startswith("sha512-")
            for vendored in package["files"].values():
                assert (ASSETS / vendored).is_file()

    async def test_the_page_allows_scripts_and_requests_to_this_server_only(
        self, client: httpx.AsyncClient
    ) -> None:
        policy = (await graphiql_page(client)).headers["content-security-policy"]
        assert "script-src 'self';" in policy and "connect-src 'self';" in policy
        assert "default-src 'none'" in policy

    async def test_the_page_tells_how_to_send_the_api_key(self, client: httpx.AsyncClient) -> None:
        page = (await graphiql_page(client)).text
        assert "<strong>Headers</strong>" in page
        assert '{"Authorization": "Bearer gqlw_sk_..."}' in page
        assert "defaultHeaders" in (await client.get(f"{ASSETS_URL}/page.js")).text

    async def test_turned_off_graphiql_serves_neither_page_nor_assets(self, tmp_path: Path) -> None:
        async for client in make_client(tmp_path, graphiql=False):
            assert (
                await client.get("/graphql", headers={"Accept": "text/html"})
            ).status_code == 404
            assert (await client.get(f"{ASSETS_URL}/page.js")).status_code == 404


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(f"sqlite:///{tmp_path / 'wallet.db'}", 1, tmp_path / "server.log")
    try:
        yield server
    finally:
        stop_server(server)


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)


def top_up(
    server: LiveServer, key: str, customer_id: str, amount: int, idempotency_key: str
) -> int:
    response = httpx.post(
        f"{server.url}/graphql",
        json={
            "query": "mutation($input: TopUpWalletInput!) "
            "{ topUpWallet(input: $input) { wallet { balance } } }",
            "variables": {
                "input": {
                    "customerId": customer_id,
                    "currency": "usd",
                    "amount": amount,
                    "idempotencyKey": idempotency_key,
                }
            },
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    balance: int = response.json()["data"]["topUpWallet"]["wallet"]["balance"]
    return balance


@contextmanager
def graphiql_in_chromium(server: LiveServer, shots: Path) -> Iterator[Browsing]:
    """GraphiQL open in a headless Chromium that may reach this server only; on leaving, no
    request went elsewhere and no script, integrity or CSP error happened."""
    from playwright.sync_api import Request as BrowserRequest
    from playwright.sync_api import Route, sync_playwright

    browsing = Browsing()

    def only_this_server(route: Route) -> None:
        if route.request.url.startswith(f"{server.url}/"):
            route.continue_()
        else:
            browsing.elsewhere.append(route.request.url)
            route.abort()

    def record(request: BrowserRequest) -> None:
        if request.method == "POST":
            browsing.posts.append(request.post_data or "")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            browsing.page = page
            page.route("**/*", only_this_server)
            page.on("request", record)
            page.on("pageerror", lambda error: browsing.problems.append(str(error)))
            page.on(
                "console",
                lambda message: (
                    browsing.problems.append(message.text)
                    if "integrity" in message.text or "Content Security Policy" in message.text
                    else None
                ),
            )
            page.goto(f"{server.url}/graphql")
            page.locator(".graphiql-container").wait_for(timeout=20_000)
            yield browsing
            page.screenshot(path=str(shots / "graphiql.png"))
        finally:
            browser.close()
    assert browsing.elsewhere == []
    assert browsing.problems == []


@dataclass
class Browsing:
    page: Any = None
    elsewhere: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)  # bodies of the page's POST requests

    def paste_key(self, key: str) -> None:
        page = self.page
        page.get_by_role("button", name="Headers").click()
        page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden)").click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(json.dumps({"Authorization": f"Bearer {key}"}))

    def run(self, operation: str) -> None:
        page = self.page
        page.locator(".graphiql-query-editor .CodeMirror").click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(operation)
        page.locator(".graphiql-execute-button").click()


def test_graphiql_in_chromium_waits_for_the_key_then_runs_a_query(
    server: LiveServer, tmp_path: Path
) -> None:
    """A real headless Chromium: the page renders offline and sends nothing (not even the
    schema's introspection) until the key is in Headers; then the schema loads and queries run."""
    require_chromium()
    from playwright.sync_api import expect

    key = server.new_key("acme")
    assert top_up(server, key, "cus_browser", 4200, "browser-1") == 4200
    with graphiql_in_chromium(server, tmp_path) as browsing:
        page = browsing.page
        hint = page.locator("#auth-hint")
        expect(hint).to_contain_text("Authorization")
        waiting = hint.locator(".when-waiting")
        expect(waiting).to_be_visible()
        expect(waiting).to_contain_text("Nothing is sent until the key is there")
        page.get_by_role("button", name="Show Documentation Explorer").click()
        page.locator(".graphiql-execute-button").click()  # the default query, without a key
        expect(page.locator(".result-window")).to_contain_text("Put your API key")
        page.wait_for_timeout(1_500)  # long enough for GraphiQL to have introspected
        assert browsing.posts == []
        body = page.locator("body")
        expect(body).not_to_contain_text("UNAUTHENTICATED")
        expect(body).not_to_contain_text("Error fetching schema")

        browsing.paste_key(key)
        # With the key in place the schema loads: the docs list the API's types.
        expect(page.locator(".graphiql-doc-explorer")).to_contain_text(
            "CustomerWallet", timeout=20_000
        )
        expect(waiting).to_be_hidden()
        assert any("IntrospectionQuery" in post for post in browsing.posts)

        browsing.run('{ customerWallet(customerId: "cus_browser", currency: "usd") { balance } }')
        expect(page.locator(".result-window")).to_contain_text('"balance": 4200', timeout=20_000)


def test_graphiql_in_chromium_runs_the_readme_subscription_over_websocket(
    server: LiveServer, tmp_path: Path
) -> None:
    """The README's subscription, run in GraphiQL, shows a top-up made over HTTP."""
    require_chromium()
    from playwright.sync_api import expect

    key = server.new_key("acme")
    with graphiql_in_chromium(server, tmp_path) as browsing:
        page = browsing.page
        browsing.paste_key(key)
        page.wait_for_timeout(600)  # the headers' debounce: the fetcher carries the key
        browsing.run(SUBSCRIPTION)
        page.wait_for_timeout(1_000)  # subscribed: cus_42 has no wallet yet, so nothing came
        result = page.locator(".result-window")
        expect(result).not_to_contain_text("error", ignore_case=True)
        assert top_up(server, key, "cus_42", 5000, "payment_pi_123") == 5000
        expect(result).to_contain_text('"balance": 5000', timeout=20_000)
        assert top_up(server, key, "cus_42", 1250, "payment_pi_124") == 6250
        expect(result).to_contain_text('"balance": 6250', timeout=20_000)
    # It went over the WebSocket, not as an HTTP request.
    assert not [post for post in browsing.posts if "walletUpdated" in post]
