// A gql_wallet webhook receiver in TypeScript: verifies every delivery with the npm
// standardwebhooks package and handles each event once.
//
// Deliveries are at least once: a retry (after a timeout, say) repeats an event with the same
// `webhook-id`, so a receiver drops the ids it has handled. Here they are kept in memory; a real
// one records them in its database, in the transaction that applies the event.
//
//     WEBHOOK_SECRET=whsec_... PORT=8766 node dist/receiver.js
import { createServer, type IncomingMessage } from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

interface WalletEvent {
  id: string;
  type: string;
  sequence: number;
  createdAt: string;
  data: {
    wallet: { customerId: string; currency: string; availableBalance: number };
    transaction: { id: string; type: string; amount: number } | null;
    hold: { id: string; status: string } | null;
  };
}

const secret = process.env.WEBHOOK_SECRET;
if (!secret) throw new Error("set WEBHOOK_SECRET to the endpoint's whsec_... secret");
const webhook = new Webhook(secret); // whsec_ and the base64 secret, as createWebhookEndpoint gave it
const handled = new Set<string>();

function handle(event: WalletEvent): void {
  const wallet = event.data.wallet;
  console.log(
    `${event.type} sequence=${event.sequence} customer=${wallet.customerId} ` +
      `available=${wallet.availableBalance} ${wallet.currency}`,
  );
}

async function body(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

const server = createServer(async (request, response) => {
  const payload = await body(request);
  const headers: Record<string, string> = {};
  for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
    headers[name] = String(request.headers[name] ?? "");
  }
  let event: WalletEvent;
  try {
    event = webhook.verify(payload, headers) as WalletEvent;
  } catch (error) {
    const reason = error instanceof WebhookVerificationError ? error.message : String(error);
    console.log(`rejected: ${reason}`);
    response.writeHead(400).end();
    return;
  }
  const id = headers["webhook-id"];
  if (handled.has(id)) {
    console.log(`duplicate ${id} dropped`);
  } else {
    handled.add(id);
    handle(event);
  }
  response.writeHead(204).end(); // any 2xx: delivered
});

const port = Number(process.env.PORT ?? "8766");
server.listen(port, "127.0.0.1", () => console.log(JSON.stringify({ listening: port })));
