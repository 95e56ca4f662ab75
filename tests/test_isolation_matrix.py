"""Tenant isolation matrix: 2 organizations x (1 API key + 2 customer tokens) x every operation
that takes an id or a customerId x objects owned by every other principal.

Nobody sees or changes another principal's data, and "not yours" answers exactly like "does not
exist" (the same JSON, byte for byte, as asking for a made-up id or customer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from tests.conftest import Api, Env

ORGS = ("A", "B")
CUSTOMERS = ("cus_1", "cus_2")
GHOST_ID = "00000000-0000-4000-8000-00000000dead"
GHOST_CUSTOMER = "cus_ghost"


@dataclass(frozen=True)
class Principal:
    name: str
    org: str
    customer: str | None  # None: the organization's API key
    api: Api

    def sees(self, org: str, customer: str) -> bool:
        return self.org == org and self.customer in (None, customer)


READS = {
    "wallet": lambda w: (
        f'{{ wallet(id: "{w["id"]}") {{ id balance }} }}',
        f'{{ wallet(id: "{GHOST_ID}") {{ id balance }} }}',
    ),
    "customerWallets": lambda w: (
        f'{{ customerWallets(customerId: "{w["customerId"]}") {{ id balance }} }}',
        f'{{ customerWallets(customerId: "{GHOST_CUSTOMER}") {{ id balance }} }}',
    ),
    "customerWallet": lambda w: (
        f'{{ customerWallet(customerId: "{w["customerId"]}", currency: "usd") {{ id balance }} }}',
        f'{{ customerWallet(customerId: "{GHOST_CUSTOMER}", currency: "usd") {{ id balance }} }}',
    ),
    "wallets(customerId)": lambda w: (
        f'{{ wallets(customerId: "{w["customerId"]}") {{ edges {{ node {{ id balance }} }} }} }}',
        f'{{ wallets(customerId: "{GHOST_CUSTOMER}") {{ edges {{ node {{ id balance }} }} }} }}',
    ),
}


async def test_isolation_matrix(env: Env) -> None:
    keys = {"A": env.api, "B": env.other}
    wallets: dict[tuple[str, str], dict] = {}
    sessions: dict[tuple[str, str], str] = {}
    principals: list[Principal] = []
    for org, customer in itertools.product(ORGS, CUSTOMERS):
        amount = 1000 * (ORGS.index(org) + 1) + CUSTOMERS.index(customer)
        wallets[org, customer] = (
            await keys[org].top_up(customer, amount, f"seed-{org}-{customer}")
        )["wallet"]
        data = await keys[org](
            f'mutation {{ createCustomerSession(input: {{customerId: "{customer}"}}) {{ token customerSession {{ id }} }} }}'
        )
        sessions[org, customer] = data["createCustomerSession"]["customerSession"]["id"]
        principals.append(
            Principal(
                f"{org}/{customer}",
                org,
                customer,
                Api(env.client, data["createCustomerSession"]["token"]),
            )
        )
    principals += [Principal(f"{org}/key", org, None, keys[org]) for org in ORGS]

    checked = 0
    for principal, ((org, customer), wallet) in itertools.product(principals, wallets.items()):
        for name, build in READS.items():
            query, ghost = build(wallet)
            answer = (await principal.api.post(query)).json()
            found = wallet["id"] in str(answer)
            if principal.sees(org, customer):
                assert found, (principal.name, name, org, customer)
            else:
                assert not found, (principal.name, name, org, customer)
                # Customer ids are per organization: the same id may name the principal's own
                # customer, which it rightly sees. Otherwise the answer is exactly "missing".
                namesake = name != "wallet" and principal.sees(principal.org, customer)
                if not namesake:
                    assert answer == (await principal.api.post(ghost)).json(), (
                        principal.name,
                        name,
                    )
            checked += 1

        # The whole list shows exactly the visible wallets.
        listing = await principal.api("{ wallets(first: 100) { edges { node { id } } } }")
        ids = {e["node"]["id"] for e in listing["wallets"]["edges"]}
        assert ids == {w["id"] for (o, c), w in wallets.items() if principal.sees(o, c)}

    # Writes: every principal tries every write on every customer id and every session.
    for principal in principals:
        for customer in CUSTOMERS:
            tag = f"{principal.name}-{customer}"
            for mutation in (
                f'topUpWallet(input: {{customerId: "{customer}", currency: "usd", amount: 7, idempotencyKey: "t-{tag}"}})',
                f'chargeWallet(input: {{customerId: "{customer}", currency: "usd", amount: 3, idempotencyKey: "c-{tag}"}})',
                f'createWallet(input: {{customerId: "{customer}", currency: "eur"}})',
            ):
                response = (
                    await principal.api.post(
                        f"mutation {{ {mutation} {{ wallet {{ id }} userErrors {{ code }} }} }}"
                    )
                ).json()
                if principal.customer is not None:
                    assert response["errors"][0]["extensions"]["code"] == "FORBIDDEN"
                else:
                    # An API key only ever reaches its own organization's wallets.
                    payload = next(iter(response["data"].values()))
                    own = {w["id"] for (o, _), w in wallets.items() if o == principal.org}
                    others = {w["id"] for (o, _), w in wallets.items() if o != principal.org}
                    assert payload["wallet"]["id"] not in others
                    if "usd" in mutation:
                        assert payload["wallet"]["id"] in own
        for (org, _customer), session_id in sessions.items():
            if principal.customer is not None or org == principal.org:
                continue
            response = await principal.api(
                f'mutation {{ revokeCustomerSession(input: {{id: "{session_id}"}}) {{ customerSession {{ id }} userErrors {{ code }} }} }}'
            )
            ghost = await principal.api(
                f'mutation {{ revokeCustomerSession(input: {{id: "{GHOST_ID}"}}) {{ customerSession {{ id }} userErrors {{ code }} }} }}'
            )
            assert response == ghost

    # Each wallet's ledger holds only its own organization's writes, and its sessions still work.
    for (org, customer), wallet in wallets.items():
        data = await keys[org](
            f'{{ wallet(id: "{wallet["id"]}") {{ transactions(first: 100) {{ edges {{ node {{ idempotencyKey }} }} }} }} }}'
        )
        writers = {e["node"]["idempotencyKey"] for e in data["wallet"]["transactions"]["edges"]}
        assert writers == {
            f"seed-{org}-{customer}",
            f"t-{org}/key-{customer}",
            f"c-{org}/key-{customer}",
        }
    for principal in principals:
        assert (await principal.api.post("{ __typename }")).status_code == 200
    assert checked == len(principals) * len(wallets) * len(READS)
