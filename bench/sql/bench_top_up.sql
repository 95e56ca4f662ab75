-- The top-up of gql_wallet (gql_wallet/ledger.py + repository.py) as one SQL function, for the
-- peers that have no application layer: PostGraphile exposes it as the mutation `benchTopUp`,
-- and pgbench calls it directly (the database's own limit for the same transaction).
--
-- The same statements in the same order as gql_wallet's write transaction: claim the
-- idempotency key (INSERT ... ON CONFLICT DO NOTHING), one conditional balance UPDATE ...
-- RETURNING (creating the wallet on its first top-up), the ledger INSERT, then record the
-- outcome on the key. A replay of a key returns the original ledger entry; a refusal returns
-- NULL.
CREATE OR REPLACE FUNCTION bench_top_up(
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
  currency_code text := lower(bench_top_up.currency);
  canonical text := json_build_object(
    'amount', bench_top_up.amount,
    'currency', currency_code,
    'customerId', bench_top_up.customer_id,
    'description', bench_top_up.description,
    'reference', bench_top_up.reference,
    'type', 'TOP_UP'
  )::text;
  claimed text;
  changed wallets;
  entry wallet_transactions;
BEGIN
  IF bench_top_up.amount < 1 OR bench_top_up.amount > 9007199254740991 THEN
    RAISE EXCEPTION 'INVALID_AMOUNT';
  END IF;

  INSERT INTO idempotency_keys (organization_id, key, request, created_at)
  VALUES (bench_top_up.organization_id, bench_top_up.idempotency_key, canonical, now())
  ON CONFLICT (organization_id, key) DO NOTHING
  RETURNING key INTO claimed;
  IF claimed IS NULL THEN
    SELECT t.* INTO entry
    FROM idempotency_keys k JOIN wallet_transactions t ON t.seq = k.transaction_seq
    WHERE k.organization_id = bench_top_up.organization_id
      AND k.key = bench_top_up.idempotency_key
      AND k.request = canonical;
    RETURN entry;
  END IF;

  UPDATE wallets w SET balance = w.balance + bench_top_up.amount, modified_at = now()
  WHERE w.organization_id = bench_top_up.organization_id
    AND w.customer_id = bench_top_up.customer_id
    AND w.currency = currency_code
    AND w.balance <= 9007199254740991 - bench_top_up.amount
  RETURNING w.* INTO changed;
  IF NOT FOUND THEN
    INSERT INTO wallets (id, organization_id, customer_id, currency, balance, created_at, modified_at)
    VALUES (gen_random_uuid(), bench_top_up.organization_id, bench_top_up.customer_id, currency_code, 0,
            now(), now())
    ON CONFLICT (organization_id, customer_id, currency) DO NOTHING;
    UPDATE wallets w SET balance = w.balance + bench_top_up.amount, modified_at = now()
    WHERE w.organization_id = bench_top_up.organization_id
      AND w.customer_id = bench_top_up.customer_id
      AND w.currency = currency_code
      AND w.balance <= 9007199254740991 - bench_top_up.amount
    RETURNING w.* INTO changed;
    IF NOT FOUND THEN
      UPDATE idempotency_keys k
      SET error_code = 'BALANCE_LIMIT_EXCEEDED'
      WHERE k.organization_id = bench_top_up.organization_id
        AND k.key = bench_top_up.idempotency_key;
      RETURN NULL;
    END IF;
  END IF;

  INSERT INTO wallet_transactions (id, organization_id, wallet_seq, type, amount, balance_after,
                                   description, reference, idempotency_key, created_at)
  VALUES (gen_random_uuid(), bench_top_up.organization_id, changed.seq, 'TOP_UP',
          bench_top_up.amount, changed.balance, bench_top_up.description,
          bench_top_up.reference, bench_top_up.idempotency_key, now())
  RETURNING * INTO entry;

  UPDATE idempotency_keys k SET transaction_seq = entry.seq
  WHERE k.organization_id = bench_top_up.organization_id
    AND k.key = bench_top_up.idempotency_key;
  RETURN entry;
END
$$;
