// Tops up a wallet and reads it back, with types generated from schema.graphql.
//   GQL_WALLET_URL=http://127.0.0.1:8000/graphql GQL_WALLET_API_KEY=gqlw_sk_... node dist/client.js
import { readFileSync } from "node:fs";
import type {
  CustomerWalletQuery,
  CustomerWalletQueryVariables,
  TopUpMutation,
  TopUpMutationVariables,
} from "./generated/operations.js";

const url = process.env.GQL_WALLET_URL ?? "http://127.0.0.1:8000/graphql";
const apiKey = process.env.GQL_WALLET_API_KEY;
if (!apiKey) throw new Error("set GQL_WALLET_API_KEY to a key from gql-wallet api-keys create");

// The same operations file the types were generated from; each request names its operation.
const document = readFileSync(new URL("../../operations.graphql", import.meta.url), "utf8");

async function execute<Data, Variables>(operationName: string, variables: Variables): Promise<Data> {
  const response = await fetch(url, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${apiKey}`,
      "Content-Type": "application/json",
      Accept: "application/graphql-response+json, application/json;q=0.9",
    },
    body: JSON.stringify({ query: document, operationName, variables }),
  });
  const body = (await response.json()) as { data?: Data | null; errors?: { message: string }[] };
  if (body.errors?.length || body.data == null) {
    throw new Error(`${operationName}: HTTP ${response.status}: ${JSON.stringify(body.errors)}`);
  }
  return body.data;
}

const customerId = "cus_ts_example";
const topUp = await execute<TopUpMutation, TopUpMutationVariables>("TopUp", {
  customerId,
  currency: "usd",
  amount: 2500, // SafeInt: a plain number, exact up to 2^53-1
  idempotencyKey: "ts-example-payment-1", // a retry with this key tops up only once
});
if (topUp.topUpWallet.userErrors.length > 0) {
  throw new Error(`top-up refused: ${JSON.stringify(topUp.topUpWallet.userErrors)}`);
}

const read = await execute<CustomerWalletQuery, CustomerWalletQueryVariables>("CustomerWallet", {
  customerId,
  currency: "usd",
});
const wallet = read.customerWallet;
if (wallet === null) throw new Error("the wallet should exist after its top-up");
const balance: number = wallet.balance;
const modifiedAt: string = wallet.modifiedAt; // DateTime: ISO 8601 text
console.log(`${wallet.customerId} ${wallet.currency} balance=${balance} modifiedAt=${modifiedAt}`);
