"""The GraphQL layer: types, resolvers, schema, and the HTTP endpoint that serves them."""
