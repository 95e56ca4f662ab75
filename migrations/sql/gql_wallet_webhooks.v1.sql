-- Webhooks' transactional outbox on PostgreSQL (revision 0010): triggers that record, in the
-- transaction that made it, each change webhooks may announce: a ledger entry, a change of a
-- wallet's balance, held balance or low-balance threshold (the wallet after it), a hold's
-- expiry. Only for organizations with an endpoint (an
-- index probe otherwise). They record facts; which events each makes is decided once, by the
-- dispatcher (gql_wallet/webhooks/dispatch.py). gql_wallet_webhooks.v1.sqlite.sql: the same.

CREATE FUNCTION gql_wallet_outbox_entry() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF EXISTS (SELECT FROM webhook_endpoints AS e WHERE e.organization_id = NEW.organization_id) THEN
    INSERT INTO webhook_outbox (organization_id, wallet_seq, kind, entry_seq, created_at)
    VALUES (NEW.organization_id, NEW.wallet_seq, 'entry', NEW.seq, NEW.created_at);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER webhook_outbox_entry AFTER INSERT ON wallet_transactions
FOR EACH ROW EXECUTE FUNCTION gql_wallet_outbox_entry();

CREATE FUNCTION gql_wallet_outbox_wallet() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF EXISTS (SELECT FROM webhook_endpoints AS e WHERE e.organization_id = NEW.organization_id) THEN
    INSERT INTO webhook_outbox (organization_id, wallet_seq, kind, balance, held_balance,
                                threshold, created_at)
    VALUES (NEW.organization_id, NEW.seq, 'wallet', NEW.balance, NEW.held_balance,
            NEW.low_balance_threshold, NEW.modified_at);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER webhook_outbox_wallet AFTER UPDATE ON wallets
FOR EACH ROW
WHEN (OLD.balance <> NEW.balance OR OLD.held_balance <> NEW.held_balance
      OR OLD.low_balance_threshold IS DISTINCT FROM NEW.low_balance_threshold)
EXECUTE FUNCTION gql_wallet_outbox_wallet();

CREATE FUNCTION gql_wallet_outbox_hold() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF EXISTS (SELECT FROM webhook_endpoints AS e WHERE e.organization_id = NEW.organization_id) THEN
    INSERT INTO webhook_outbox (organization_id, wallet_seq, kind, hold_seq, created_at)
    VALUES (NEW.organization_id, NEW.wallet_seq, 'hold', NEW.seq, NEW.resolved_at);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER webhook_outbox_hold AFTER UPDATE ON wallet_holds
FOR EACH ROW
WHEN (NEW.status = 'EXPIRED' AND OLD.status <> 'EXPIRED')
EXECUTE FUNCTION gql_wallet_outbox_hold();
