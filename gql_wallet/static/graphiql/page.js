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

  function newFetcher() {
    return GraphiQL.createFetcher({ url: endpoint });
  }

  // The schema (for completion and the docs) needs the key too: GraphiQL fetches it again
  // whenever its fetcher changes, so a new fetcher follows each edit of the headers.
  function App() {
    var state = React.useState(newFetcher);
    var pending = React.useRef(undefined);
    function onEditHeaders(text) {
      clearTimeout(pending.current);
      pending.current = setTimeout(function () {
        try {
          JSON.parse(text);
        } catch (notYetJson) {
          return;
        }
        state[1](function () {
          return newFetcher();
        });
      }, 400);
    }
    return React.createElement(GraphiQL, {
      fetcher: state[0],
      onEditHeaders: onEditHeaders,
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      // Keys stay out of localStorage: paste the key again after a reload.
      shouldPersistHeaders: false,
    });
  }

  ReactDOM.createRoot(root).render(React.createElement(App));
})();
