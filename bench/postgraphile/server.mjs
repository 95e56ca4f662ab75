// PostGraphile v5 over the gql_wallet tables, the peer of the benchmark.
//
// Run: node server.mjs  (DATABASE_URL, PORT and POOL_SIZE from the environment).
// The Amber preset as a user gets it, with the development aids turned off: no GraphiQL, no
// schema watching, no query plans in responses.
import { createServer } from "node:http";

import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";
import { postgraphile } from "postgraphile";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";

const host = "127.0.0.1";
const port = Number(process.env.PORT ?? 8701);

const preset = {
  extends: [PostGraphileAmberPreset],
  pgServices: [
    makePgService({
      connectionString: process.env.DATABASE_URL,
      schemas: ["public"],
      poolConfig: { max: Number(process.env.POOL_SIZE ?? 32) },
    }),
  ],
  grafserv: { host, port, graphiql: false, watch: false },
  grafast: { explain: false },
};

const serv = postgraphile(preset).createServ(grafserv);
const server = createServer();
server.on("error", (error) => {
  console.error(error);
  process.exit(1);
});
await serv.addTo(server);
server.listen(port, host, () => console.log(`PostGraphile on http://${host}:${port}/graphql`));
