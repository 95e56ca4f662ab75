"""The GraphiQL page: offline (only vendored, integrity-checked assets) and usable with a key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gql_wallet.app import create_app
from gql_wallet.graphql.graphiql import ASSETS_URL
from gql_wallet.settings import Settings
from tests.conftest import LiveServer, start_server, stop_server

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


def test_graphiql_in_chromium_runs_a_query_with_the_api_key(
    server: LiveServer, tmp_path: Path
) -> None:
    """A real headless Chromium: the page renders offline, the key goes in Headers, the query runs."""
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import Route, expect, sync_playwright

    key = server.new_key("acme")
    top_up = httpx.post(
        f"{server.url}/graphql",
        json={
            "query": 'mutation { topUpWallet(input: {customerId: "cus_browser", currency: "usd", '
            'amount: 4200, idempotencyKey: "browser-1"}) { wallet { balance } } }'
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert top_up.json()["data"]["topUpWallet"]["wallet"]["balance"] == 4200

    elsewhere: list[str] = []
    problems: list[str] = []

    def only_this_server(route: Route) -> None:
        if route.request.url.startswith(f"{server.url}/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_this_server)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on(
                "console",
                lambda message: (
                    problems.append(message.text)
                    if "integrity" in message.text or "Content Security Policy" in message.text
                    else None
                ),
            )
            page.goto(f"{server.url}/graphql")
            expect(page.locator("#auth-hint")).to_contain_text("Authorization")
            page.locator(".graphiql-container").wait_for(timeout=20_000)

            page.get_by_role("button", name="Headers").click()
            headers_editor = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden)")
            headers_editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(json.dumps({"Authorization": f"Bearer {key}"}))
            # With the key in place the schema loads too: the docs list the API's types.
            page.get_by_role("button", name="Show Documentation Explorer").click()
            expect(page.locator(".graphiql-doc-explorer")).to_contain_text(
                "CustomerWallet", timeout=20_000
            )

            page.locator(".graphiql-query-editor .CodeMirror").click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(
                '{ customerWallet(customerId: "cus_browser", currency: "usd") { balance } }'
            )
            page.locator(".graphiql-execute-button").click()
            result = page.locator(".result-window")
            expect(result).to_contain_text('"balance": 4200', timeout=20_000)
            page.screenshot(path=str(tmp_path / "graphiql.png"))
        finally:
            browser.close()
    assert elsewhere == []
    assert problems == []
