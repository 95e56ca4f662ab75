// Starts GraphiQL from the vendored React, ReactDOM and GraphiQL bundles: no network but this
// server. The Headers tab is open and holds the Authorization header to fill in; nothing is
// sent (not even the schema's introspection) until it holds a key.
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
  var PLACEHOLDER = "gqlw_sk_...";
  var DEFAULT_HEADERS = '{\n  "Authorization": "Bearer ' + PLACEHOLDER + '"\n}';
  var NO_KEY = "Put your API key in the Headers tab first: " + DEFAULT_HEADERS.replace(/\s+/g, " ");

  var root = document.getElementById("graphiql");
  var hint = document.getElementById("auth-hint");
  var endpoint = root.getAttribute("data-endpoint");
  // Subscriptions run over WebSocket (graphql-transport-ws) on the same path; the headers go
  // in connection_init, where the server reads the key.
  var subscriptionUrl =
    (location.protocol === "https:" ? "wss://" : "ws://") + location.host + endpoint;

  // Whether headers (an object, or their JSON text) hold a key other than the placeholder.
  function hasKey(headers) {
    if (typeof headers === "string") {
      try {
        headers = JSON.parse(headers);
      } catch (notJson) {
        return false;
      }
    }
    if (!headers || typeof headers !== "object") {
      return false;
    }
    for (var name in headers) {
      if (name.toLowerCase() === "authorization" && typeof headers[name] === "string") {
        var token = headers[name].replace(/^\s*bearer\s+/i, "").trim();
        return token !== "" && token !== PLACEHOLDER && token !== headers[name].trim();
      }
    }
    return false;
  }

  function newFetcher() {
    var fetcher = GraphiQL.createFetcher({ url: endpoint, subscriptionUrl: subscriptionUrl });
    return function (params, options) {
      if (!hasKey(options && options.headers)) {
        return Promise.resolve({ errors: [{ message: NO_KEY }] });
      }
      // createFetcher sends an operation over WebSocket when its document is a subscription;
      // GraphiQL's own parse of the editor can lag behind a quick run, so parse it here.
      var parsed = {};
      try {
        parsed.documentAST = GraphiQL.GraphQL.parse(params.query);
      } catch (syntaxError) {
        parsed = {};
      }
      return fetcher(params, Object.assign({}, options, parsed));
    };
  }

  function App() {
    var fetcher = React.useState(newFetcher);
    var keyed = React.useState(false);
    var pending = React.useRef(undefined);
    React.useEffect(
      function () {
        hint.classList.toggle("waiting", !keyed[0]);
      },
      [keyed[0]]
    );
    // The schema (for completion and the docs) needs the key too: until there is one GraphiQL
    // gets no schema to fetch, then a new fetcher after each edit of the headers fetches it.
    function onEditHeaders(text) {
      clearTimeout(pending.current);
      pending.current = setTimeout(function () {
        try {
          JSON.parse(text);
        } catch (notYetJson) {
          return;
        }
        keyed[1](hasKey(text));
        fetcher[1](function () {
          return newFetcher();
        });
      }, 400);
    }
    return React.createElement(GraphiQL, {
      fetcher: fetcher[0],
      schema: keyed[0] ? undefined : null,
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
