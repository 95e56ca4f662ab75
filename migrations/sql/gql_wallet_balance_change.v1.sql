CREATE OR REPLACE FUNCTION gql_wallet_balance_change(
  p_organization_id uuid,
  p_idempotency_key text,
  p_request text,
  p_customer_id text,
  p_currency text,
  p_type text,
  p_delta bigint,
  p_description text,
  p_reference text,
  p_create_missing boolean,
  p_wallet_id uuid,
  p_entry_id uuid,
  p_now timestamptz,
  p_channel text,
  p_missing_code text,
  p_missing_message text,
  p_refused_code text,
  p_refused_message text,
  OUT outcome text,
  OUT refusal_code text,
  OUT wallet wallets,
  OUT entry wallet_transactions
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  claimed text;
BEGIN
  INSERT INTO idempotency_keys AS k (organization_id, key, request, created_at)
  VALUES (p_organization_id, p_idempotency_key, p_request, p_now)
  ON CONFLICT (organization_id, key) DO NOTHING
  RETURNING k.key INTO claimed;
  IF claimed IS NULL THEN
    outcome := 'taken';
    RETURN;
  END IF;

  UPDATE wallets AS w SET balance = w.balance + p_delta, modified_at = p_now
  WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
    AND w.currency = p_currency AND w.balance + p_delta BETWEEN 0 AND 9007199254740991
  RETURNING w.* INTO wallet;
  IF NOT FOUND AND p_create_missing THEN
    INSERT INTO wallets AS w (id, organization_id, customer_id, currency, balance, created_at,
                              modified_at)
    VALUES (p_wallet_id, p_organization_id, p_customer_id, p_currency, 0, p_now, p_now)
    ON CONFLICT (organization_id, customer_id, currency) DO NOTHING;
    UPDATE wallets AS w SET balance = w.balance + p_delta, modified_at = p_now
    WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
      AND w.currency = p_currency AND w.balance + p_delta BETWEEN 0 AND 9007199254740991
    RETURNING w.* INTO wallet;
  END IF;

  IF wallet.seq IS NULL THEN
    SELECT w.* INTO wallet FROM wallets AS w
    WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
      AND w.currency = p_currency;
    outcome := 'refused';
    IF wallet.seq IS NULL THEN
      refusal_code := p_missing_code;
      UPDATE idempotency_keys AS k SET error_code = p_missing_code, error_message = p_missing_message
      WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
    ELSE
      refusal_code := p_refused_code;
      UPDATE idempotency_keys AS k SET error_code = p_refused_code, error_message = p_refused_message
      WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
    END IF;
    RETURN;
  END IF;

  INSERT INTO wallet_transactions AS t (id, organization_id, wallet_seq, type, amount,
                                        balance_after, description, reference, idempotency_key,
                                        created_at)
  VALUES (p_entry_id, p_organization_id, wallet.seq, p_type, p_delta, wallet.balance,
          p_description, p_reference, p_idempotency_key, p_now)
  RETURNING t.* INTO entry;
  UPDATE idempotency_keys AS k SET transaction_seq = entry.seq
  WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
  PERFORM pg_notify(
    p_channel,
    json_build_object('o', p_organization_id::text, 'c', p_customer_id, 'w', wallet.seq)::text
  );
  outcome := 'applied';
END
$$
