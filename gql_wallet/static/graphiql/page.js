// Starts GraphiQL from the vendored React, ReactDOM and GraphiQL bundles: no network but this
// server. The Headers tab is open and holds the Authorization header to fill in.
(function () {
  "use strict";
  var DEFAULT_QUERY = [
    "# Put your API key in the Headers tab below, then run this with Ctrl-Enter.",
    "{",
    "  wallets(first: 10) {",
    "    edges { node { customerId currency balance modifiedAt } }",
    "  }",
    "}",
    "",
  ].join("\n");
  var DEFAULT_HEADERS = '{\n  "Authorization": "Bearer gqlw_sk_..."\n}';

  var root = document.getElementById("graphiql");
  var endpoint = root.getAttribute("data-endpoint");
  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher: GraphiQL.createFetcher({ url: endpoint }),
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      // Keys stay out of localStorage: paste the key again after a reload.
      shouldPersistHeaders: false,
    })
  );
})();
