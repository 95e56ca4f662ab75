-- Drops what gql_wallet_ledger.v4.sql created (revision 0011's downgrade).
DROP FUNCTION gql_wallet_resolve_hold(uuid, text, text, uuid, boolean, bigint, text, text, uuid,
                                      text, text, text, text, text, text, text, text, text);
DROP FUNCTION gql_wallet_create_hold(uuid, text, text, text, text, bigint, integer, text, text,
                                     text, uuid, text, text, text, text, text);
DROP FUNCTION gql_wallet_expire(bigint[], boolean, text, text, text);
DROP FUNCTION gql_wallet_undo(uuid, text, text, text, boolean, uuid, bigint, text[], bigint, text,
                              text, uuid, text, text, text, text, text, text, text);
DROP FUNCTION gql_wallet_balance_change(uuid, text, text, text, text, text, bigint, bigint, bigint,
                                        text, text, text, boolean, uuid, uuid, text, text, text, uuid,
                                        text, integer, timestamptz, text, text, text);
DROP FUNCTION gql_wallet_draw(bigint, bigint, bigint, bigint);
DROP FUNCTION gql_wallet_expire_due(wallets, timestamptz, text, text);
DROP FUNCTION gql_wallet_release(bigint);
DROP FUNCTION gql_wallet_next_expiry(bigint);
DROP FUNCTION gql_wallet_claim(uuid, text, text);
DROP FUNCTION gql_wallet_announce(text, wallets);
DROP FUNCTION gql_wallet_feed_gate();
