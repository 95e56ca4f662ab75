// Subscribes with the npm graphql-ws client, prints each walletUpdated event as a JSON line,
// and exits after the given number of events. Usage: node subscribe.mjs WS_URL TOKEN CUSTOMER N
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [url, token, customerId, count] = process.argv.slice(2);
const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${token}` },
  retryAttempts: 0,
});
const query = `subscription($c: String!) { walletUpdated(customerId: $c) {
  wallet { id customerId currency balance } transaction { idempotencyKey amount balanceAfter } } }`;

let seen = 0;
const events = client.iterate({ query, variables: { c: customerId } });
try {
  for await (const result of events) {
    if (result.errors) throw new Error(JSON.stringify(result.errors));
    console.log(JSON.stringify(result.data.walletUpdated));
    if (++seen >= Number(count)) break;
  }
} finally {
  await client.dispose();
}
