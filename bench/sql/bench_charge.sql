-- The charge of gql_wallet (gql_wallet/ledger.py + repository.py) as one SQL function, the
-- counterpart of bench_top_up.sql: PostGraphile exposes it as the mutation `benchCharge`, and
-- pgbench calls it directly.
--
-- The same statements in the same order as gql_wallet's charge transaction: claim the
-- idempotency key (INSERT ... ON CONFLICT DO NOTHING), one conditional balance UPDATE ...
-- RETURNING (the balance must cover the charge; a charge never creates a wallet), the ledger
-- INSERT of the negative amount, then record the outcome on the key. A replay of a key returns
-- the original ledger entry; a refusal (no wallet, or a balance that does not cover the charge)
-- is recorded on the key, as gql_wallet records it, and returns NULL.
CREATE OR REPLACE FUNCTION bench_charge(
  organization_id uuid,
  customer_id text,
  currency text,
  amount bigint,
  idempotency_key text,
  description text DEFAULT NULL,
  reference text DEFAULT NULL
) RETURNS wallet_transactions
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  currency_code text := lower(bench_charge.currency);
  canonical text := json_build_object(
    'amount', bench_charge.amount,
    'currency', currency_code,
    'customerId', bench_charge.customer_id,
    'description', bench_charge.description,
    'reference', bench_charge.reference,
    'type', 'CHARGE'
  )::text;
  claimed text;
  changed wallets;
  entry wallet_transactions;
BEGIN
  IF bench_charge.amount < 1 OR bench_charge.amount > 9007199254740991 THEN
    RAISE EXCEPTION 'INVALID_AMOUNT';
  END IF;

  INSERT INTO idempotency_keys (organization_id, key, request, created_at)
  VALUES (bench_charge.organization_id, bench_charge.idempotency_key, canonical, now())
  ON CONFLICT (organization_id, key) DO NOTHING
  RETURNING key INTO claimed;
  IF claimed IS NULL THEN
    SELECT t.* INTO entry
    FROM idempotency_keys k JOIN wallet_transactions t ON t.seq = k.transaction_seq
    WHERE k.organization_id = bench_charge.organization_id
      AND k.key = bench_charge.idempotency_key
      AND k.request = canonical;
    RETURN entry;
  END IF;

  UPDATE wallets w SET balance = w.balance - bench_charge.amount, modified_at = now()
  WHERE w.organization_id = bench_charge.organization_id
    AND w.customer_id = bench_charge.customer_id
    AND w.currency = currency_code
    AND w.balance >= bench_charge.amount
  RETURNING w.* INTO changed;
  IF NOT FOUND THEN
    IF EXISTS (
      SELECT 1 FROM wallets w
      WHERE w.organization_id = bench_charge.organization_id
        AND w.customer_id = bench_charge.customer_id
        AND w.currency = currency_code
    ) THEN
      UPDATE idempotency_keys k
      SET error_code = 'INSUFFICIENT_FUNDS'
      WHERE k.organization_id = bench_charge.organization_id
        AND k.key = bench_charge.idempotency_key;
    ELSE
      UPDATE idempotency_keys k
      SET error_code = 'WALLET_NOT_FOUND'
      WHERE k.organization_id = bench_charge.organization_id
        AND k.key = bench_charge.idempotency_key;
    END IF;
    RETURN NULL;
  END IF;

  INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                   description, reference, idempotency_key, created_at)
  VALUES (gen_random_uuid(), bench_charge.organization_id, changed.seq, 'CHARGE',
          -bench_charge.amount, changed.balance, bench_charge.description,
          bench_charge.reference, bench_charge.idempotency_key, now())
  RETURNING * INTO entry;

  UPDATE idempotency_keys k SET transaction_seq = entry.seq
  WHERE k.organization_id = bench_charge.organization_id
    AND k.key = bench_charge.idempotency_key;
  RETURN entry;
END
$$;
