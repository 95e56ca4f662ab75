-- Drops what gql_wallet_webhooks.v1.sql created (revision 0010's downgrade).
DROP TRIGGER webhook_outbox_hold ON wallet_holds;
DROP TRIGGER webhook_outbox_wallet ON wallets;
DROP TRIGGER webhook_outbox_entry ON wallet_transactions;
DROP FUNCTION gql_wallet_outbox_hold();
DROP FUNCTION gql_wallet_outbox_wallet();
DROP FUNCTION gql_wallet_outbox_entry();
