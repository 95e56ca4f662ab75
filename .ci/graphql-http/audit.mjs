// graphql-http's GraphQL-over-HTTP server audits against a running gql-wallet.
//
//   node audit.mjs http://127.0.0.1:8000/graphql gqlw_sk_...
//
// Every audit sends its own request; fetchFn adds the API key, without which every one would be
// a 401. Exits 1 if any MUST or SHOULD audit fails. MAY audits are reported and must pass too,
// since the server implements all of them.
import { serverAudits } from "graphql-http";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node audit.mjs URL API_KEY");
  process.exit(2);
}

const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${key}`);
  return fetch(input, { ...init, headers });
};

let failed = 0;
const counts = { MUST: 0, SHOULD: 0, MAY: 0 };
for (const { id, name, fn } of serverAudits({ url, fetchFn })) {
  const result = await fn();
  const level = name.split(" ")[0];
  counts[level] = (counts[level] ?? 0) + 1;
  if (result.status === "ok") {
    console.log(`ok    ${id} ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL  ${id} ${name}: ${result.reason}`);
    if (result.response) {
      console.log(`      -> ${result.response.status} ${await result.response.text()}`);
    }
  }
}
const total = Object.values(counts).reduce((a, b) => a + b, 0);
console.log(
  `graphql-http audits: ${total - failed} passed, ${failed} failed ` +
    `(${counts.MUST} MUST, ${counts.SHOULD} SHOULD, ${counts.MAY} MAY)`
);
process.exit(failed ? 1 : 0);
