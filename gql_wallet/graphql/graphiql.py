"""The GraphiQL page, built only from assets shipped inside the package.

Strawberry's stock page loads React and GraphiQL from a CDN and never renders offline. This one
loads the copies vendored in gql_wallet/static/graphiql/ (pinned versions, see
.ci/vendor_graphiql.py), each with the SRI hash recorded in its manifest.json, and its
Content-Security-Policy lets the page load and fetch nothing but this server.
"""

from __future__ import annotations

import json
from functools import cache
from html import escape
from importlib.resources import files

ASSETS_URL = "/static/graphiql"

STYLESHEETS = ["graphiql.min.css", "page.css"]
SCRIPTS = ["react.production.min.js", "react-dom.production.min.js", "graphiql.min.js", "page.js"]

# GraphiQL styles elements inline (hence 'unsafe-inline' for styles only) and embeds its fonts
# and icons as data: URLs. Scripts and requests go to this server alone.
GRAPHIQL_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gql_wallet GraphiQL</title>
<link rel="icon" href="data:,">
{stylesheets}
</head>
<body>
<div id="auth-hint" class="waiting">Every operation needs your API key: open the <strong>Headers</strong> tab
below GraphiQL's editor and set <code>{{"Authorization": "Bearer gqlw_sk_..."}}</code>.
Create a key with <code>gql-wallet api-keys create --organization NAME</code>.
<span class="when-waiting">Nothing is sent until the key is there; then the schema loads (completion,
<strong>Docs</strong>).</span></div>
<div id="graphiql" data-endpoint="{endpoint}">Loading GraphiQL…</div>
{scripts}
</body>
</html>
"""


def asset_integrity() -> dict[str, str]:
    """The SRI hash of every asset the page loads, as recorded when the assets were vendored."""
    manifest = files("gql_wallet").joinpath("static/graphiql/manifest.json").read_text()
    integrity: dict[str, str] = json.loads(manifest)["assets"]
    return integrity


@cache
def graphiql_html(endpoint: str = "/graphql") -> str:
    integrity = asset_integrity()
    stylesheets = "\n".join(
        f'<link rel="stylesheet" href="{ASSETS_URL}/{name}" integrity="{integrity[name]}">'
        for name in STYLESHEETS
    )
    scripts = "\n".join(
        f'<script src="{ASSETS_URL}/{name}" integrity="{integrity[name]}"></script>'
        for name in SCRIPTS
    )
    return PAGE.format(stylesheets=stylesheets, scripts=scripts, endpoint=escape(endpoint))
