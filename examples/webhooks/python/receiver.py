"""A gql_wallet webhook receiver in Python: verifies every delivery with the standardwebhooks
package and handles each event once.

Deliveries are at least once: a retry (after a timeout, say) repeats an event with the same
`webhook-id`, so a receiver drops the ids it has handled. Here they are kept in memory; a real
one records them in its database, in the transaction that applies the event.

    WEBHOOK_SECRET=whsec_... PORT=8765 python receiver.py
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

WEBHOOK = Webhook(os.environ["WEBHOOK_SECRET"])
handled: set[str] = set()
lock = Lock()


def handle(event: dict) -> None:
    """What your backend does with an event: here, print it."""
    wallet = event["data"]["wallet"]
    print(
        f"{event['type']} sequence={event['sequence']} customer={wallet['customerId']} "
        f"available={wallet['availableBalance']} {wallet['currency']}",
        flush=True,
    )


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            event = WEBHOOK.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as error:
            print(f"rejected: {error}", flush=True)
            self.send_response(400)
            self.end_headers()
            return
        event_id = self.headers["webhook-id"]
        with lock:
            first = event_id not in handled
            handled.add(event_id)
        if first:
            handle(event)
        else:
            print(f"duplicate {event_id} dropped", flush=True)
        self.send_response(204)  # any 2xx: delivered
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8765"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(json.dumps({"listening": port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
