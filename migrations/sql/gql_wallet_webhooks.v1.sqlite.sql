-- Webhooks' transactional outbox on SQLite (revision 0010): the triggers of
-- gql_wallet_webhooks.v1.sql (read its header), in SQLite's form. Each trigger is one
-- statement, its body on its last line.

CREATE TRIGGER webhook_outbox_entry AFTER INSERT ON wallet_transactions
WHEN EXISTS (SELECT 1 FROM webhook_endpoints AS e WHERE e.organization_id = NEW.organization_id)
BEGIN INSERT INTO webhook_outbox (organization_id, wallet_seq, kind, entry_seq, created_at) VALUES (NEW.organization_id, NEW.wallet_seq, 'entry', NEW.seq, NEW.created_at); END;

CREATE TRIGGER webhook_outbox_wallet AFTER UPDATE ON wallets
WHEN (OLD.balance <> NEW.balance OR OLD.held_balance <> NEW.held_balance
      OR OLD.low_balance_threshold IS NOT NEW.low_balance_threshold)
  AND EXISTS (SELECT 1 FROM webhook_endpoints AS e WHERE e.organization_id = NEW.organization_id)
BEGIN INSERT INTO webhook_outbox (organization_id, wallet_seq, kind, balance, held_balance, threshold, created_at) VALUES (NEW.organization_id, NEW.seq, 'wallet', NEW.balance, NEW.held_balance, NEW.low_balance_threshold, NEW.modified_at); END;

CREATE TRIGGER webhook_outbox_hold AFTER UPDATE ON wallet_holds
WHEN NEW.status = 'EXPIRED' AND OLD.status <> 'EXPIRED'
  AND EXISTS (SELECT 1 FROM webhook_endpoints AS e WHERE e.organization_id = NEW.organization_id)
BEGIN INSERT INTO webhook_outbox (organization_id, wallet_seq, kind, hold_seq, created_at) VALUES (NEW.organization_id, NEW.wallet_seq, 'hold', NEW.seq, NEW.resolved_at); END;
