-- The PostgreSQL ledger store (revision 0011): every write to a wallet's balance or holds, each
-- one call and one transaction. The ledger service decides what a write means (delta, bounds,
-- block, which code each refusal records); these functions carry it out under the wallet's row
-- lock and answer with codes. SQLite runs the same steps from Python (gql_wallet/ledger/store.py).
--
-- The clock is the database's: every expiry is decided by clock_timestamp() under the lock.
--
-- Since v3: every write that makes an entry or a hold stores the caller's metadata with it
-- (p_metadata, canonical JSON); a capture given none takes its hold's.
--
-- Since v2: wallets.next_expiry_at is a bound: no expiry of the wallet is due before it, and it
-- may be earlier than the soonest (a spent block or a resolved hold is not taken out of it). A
-- write keeps it, or lowers it to what it adds; gql_wallet_expire_due makes it exact when it
-- comes. So a charge or a hold's change leaves the column, which ix_wallets_next_expiry_at
-- indexes, as it was, and the row's update is HOT (no new index entries). A new hold takes a
-- charge's one-statement path; a capture's guarded update finds its hold by primary key.

-- Takes the feed gate (migration 0004) and tells whether to announce: first, before any row lock.
CREATE FUNCTION gql_wallet_feed_gate() RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(7344512002);
  -- One expression: the probe is released in the same evaluation that took it.
  RETURN CASE WHEN pg_try_advisory_lock(7344512003)
              THEN NOT pg_advisory_unlock(7344512003) ELSE true END;
END
$$;

CREATE FUNCTION gql_wallet_announce(p_channel text, p_wallet wallets) RETURNS void
LANGUAGE sql VOLATILE
AS $$
  SELECT pg_notify(
    p_channel,
    json_build_object('o', p_wallet.organization_id::text, 'c', p_wallet.customer_id,
                      'w', p_wallet.seq)::text
  );
$$;

-- Claims the write's idempotency key: false when an earlier write holds it (a concurrent
-- claim of the same key waits here until the first commits or rolls back).
CREATE FUNCTION gql_wallet_claim(p_organization_id uuid, p_key text, p_request text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  claimed text;
BEGIN
  INSERT INTO idempotency_keys AS k (organization_id, key, request, created_at)
  VALUES (p_organization_id, p_key, p_request, clock_timestamp())
  ON CONFLICT (organization_id, key) DO NOTHING
  RETURNING k.key INTO claimed;
  RETURN claimed IS NOT NULL;
END
$$;

-- The soonest expiry among the wallet's blocks with unreserved credits left and its open holds.
-- PL/pgSQL, not SQL: a session plans its statements once (an SQL function's body is planned
-- again on every call).
CREATE FUNCTION gql_wallet_next_expiry(p_wallet_seq bigint) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RETURN least(
    (SELECT min(b.expires_at) FROM credit_blocks AS b
     WHERE b.wallet_seq = p_wallet_seq AND b.remaining > 0 AND b.remaining > b.held
       AND b.expires_at IS NOT NULL),
    (SELECT min(h.expires_at) FROM wallet_holds AS h
     WHERE h.wallet_seq = p_wallet_seq AND h.status = 'OPEN'));
END
$$;

-- Gives back to their blocks what the hold p_hold_seq reserved.
CREATE FUNCTION gql_wallet_release(p_hold_seq bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  UPDATE credit_blocks AS b SET held = b.held - r.amount
  FROM hold_reservations AS r
  WHERE r.hold_seq = p_hold_seq AND b.seq = r.block_seq;
END
$$;

-- Expires the (locked) wallet's open holds whose expiry has come (their reservations released),
-- then writes an EXPIRATION entry for each block whose expiry has come and that has unreserved
-- credits left, oldest expiry first; returns the wallet as it is after them, its next_expiry_at
-- exact. The entry type and
-- the prefix of the entries' idempotency keys are the ledger service's.
CREATE FUNCTION gql_wallet_expire_due(p_wallet wallets, p_now timestamptz, p_type text,
                                      p_key_prefix text)
RETURNS wallets
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  w wallets := p_wallet;
  b credit_blocks;
  h wallet_holds;
  v_left bigint;
  v_entry_id uuid;
  v_changed boolean := false;
  v_entry_seq bigint;
BEGIN
  IF w.next_expiry_at IS NULL OR w.next_expiry_at > p_now THEN
    RETURN w;
  END IF;
  FOR h IN
    SELECT * FROM wallet_holds AS x
    WHERE x.wallet_seq = w.seq AND x.status = 'OPEN' AND x.expires_at <= p_now
    ORDER BY x.expires_at, x.seq
  LOOP
    PERFORM gql_wallet_release(h.seq);
    UPDATE wallet_holds SET status = 'EXPIRED', resolved_at = h.expires_at WHERE seq = h.seq;
    w.held_balance := w.held_balance - h.amount;
    v_changed := true;
  END LOOP;
  FOR b IN
    SELECT * FROM credit_blocks AS c
    WHERE c.wallet_seq = w.seq AND c.remaining > 0 AND c.remaining > c.held
      AND c.expires_at <= p_now
    ORDER BY c.expires_at, c.seq
  LOOP
    v_left := b.remaining - b.held;
    w.balance := w.balance - v_left;
    v_entry_id := gen_random_uuid();
    INSERT INTO wallet_transactions AS t (id, organization_id, wallet_seq, type, amount,
                                          balance_after, held_after, description, reference,
                                          idempotency_key, created_at)
    VALUES (v_entry_id, w.organization_id, w.seq, p_type, -v_left, w.balance, w.held_balance,
            NULL, NULL, p_key_prefix || v_entry_id::text, p_now)
    RETURNING t.seq INTO v_entry_seq;
    INSERT INTO credit_allocations (entry_seq, ordinal, block_seq, amount)
    VALUES (v_entry_seq, 0, b.seq, -v_left);
    UPDATE credit_blocks SET remaining = held WHERE seq = b.seq;
    v_changed := true;
  END LOOP;
  -- Nothing due (the bound was early): the bound is made exact, and the wallet is unchanged.
  UPDATE wallets SET balance = w.balance, held_balance = w.held_balance,
                     modified_at = CASE WHEN v_changed THEN p_now ELSE modified_at END,
                     next_expiry_at = gql_wallet_next_expiry(w.seq)
  WHERE seq = w.seq
  RETURNING * INTO w;
  RETURN w;
END
$$;

-- Takes p_amount of the (locked) wallet's unreserved credits in burn-down order: spent by the
-- entry p_entry_seq (its allocations), or reserved for the hold p_hold_seq. The caller has checked
-- that the available balance covers it; the blocks always sum to the balance, and what they hold
-- to the held balance.
CREATE FUNCTION gql_wallet_draw(p_wallet_seq bigint, p_amount bigint, p_entry_seq bigint,
                                p_hold_seq bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  b record;
  left_to_take bigint := p_amount;
  taken bigint;
  v_ordinal integer := 0;
BEGIN
  FOR b IN
    SELECT c.seq, c.remaining - c.held AS free FROM credit_blocks AS c
    WHERE c.wallet_seq = p_wallet_seq AND c.remaining > 0 AND c.remaining > c.held
    ORDER BY c.burn_key, c.seq
  LOOP
    taken := least(b.free, left_to_take);
    IF p_hold_seq IS NOT NULL THEN
      UPDATE credit_blocks SET held = held + taken WHERE seq = b.seq;
      INSERT INTO hold_reservations (hold_seq, ordinal, block_seq, amount)
      VALUES (p_hold_seq, v_ordinal, b.seq, taken);
    ELSE
      UPDATE credit_blocks SET remaining = remaining - taken WHERE seq = b.seq;
      INSERT INTO credit_allocations (entry_seq, ordinal, block_seq, amount)
      VALUES (p_entry_seq, v_ordinal, b.seq, -taken);
    END IF;
    v_ordinal := v_ordinal + 1;
    left_to_take := left_to_take - taken;
    EXIT WHEN left_to_take = 0;
  END LOOP;
  IF left_to_take > 0 THEN
    RAISE EXCEPTION 'wallet % has less in its credit blocks than its available balance',
      p_wallet_seq;
  END IF;
END
$$;

-- A top-up, a grant or a charge. A credit (p_block_id given) creates its block; a debit spends
-- unreserved credits in burn-down order. Due expiries of the wallet are written first. The
-- floor bounds the available balance (balance - held_balance), the ceiling the balance.
CREATE FUNCTION gql_wallet_balance_change(
  p_organization_id uuid,
  p_idempotency_key text,
  p_request text,
  p_customer_id text,
  p_currency text,
  p_type text,
  p_delta bigint,
  p_floor bigint,
  p_ceiling bigint,
  p_description text,
  p_reference text,
  p_metadata text,
  p_create_missing boolean,
  p_wallet_id uuid,
  p_entry_id uuid,
  p_channel text,
  p_missing_code text,
  p_refused_code text,
  p_block_id uuid,
  p_category text,
  p_priority integer,
  p_expires_at timestamptz,
  p_burn_key text,
  p_expiration_type text,
  p_expiration_key_prefix text,
  OUT outcome text,
  OUT refusal_code text,
  OUT wallet wallets,
  OUT entry wallet_transactions
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  announce boolean := gql_wallet_feed_gate();
  v_now timestamptz;
  modified_before timestamptz;
  v_found wallets;
BEGIN
  IF NOT gql_wallet_claim(p_organization_id, p_idempotency_key, p_request) THEN
    outcome := 'taken';
    RETURN;
  END IF;

  v_now := clock_timestamp();
  -- The common case in one statement: the wallet exists, none of its expiries is due, and the
  -- new balance is in range (the same conditional update as the SQLite store's).
  UPDATE wallets AS w SET balance = w.balance + p_delta, modified_at = v_now,
    next_expiry_at = CASE WHEN p_expires_at IS NOT NULL
                               AND (w.next_expiry_at IS NULL OR p_expires_at < w.next_expiry_at)
                          THEN p_expires_at ELSE w.next_expiry_at END
  WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
    AND w.currency = p_currency AND w.balance - w.held_balance + p_delta >= p_floor
    AND w.balance + p_delta <= p_ceiling
    AND (w.next_expiry_at IS NULL OR w.next_expiry_at > v_now)
  RETURNING w.* INTO wallet;
  IF wallet.seq IS NULL THEN
    -- Which condition failed: no wallet (create it if told to), a due expiry (write it, then
    -- try again), or the range.
    SELECT w.* INTO v_found FROM wallets AS w
    WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
      AND w.currency = p_currency
    FOR UPDATE;
    IF v_found.seq IS NULL AND p_create_missing THEN
      INSERT INTO wallets AS w (id, organization_id, customer_id, currency, balance, created_at,
                                modified_at)
      VALUES (p_wallet_id, p_organization_id, p_customer_id, p_currency, 0, v_now, v_now)
      ON CONFLICT (organization_id, customer_id, currency) DO NOTHING;
      SELECT w.* INTO v_found FROM wallets AS w
      WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
        AND w.currency = p_currency
      FOR UPDATE;
    END IF;
    IF v_found.seq IS NULL THEN
      outcome := 'refused';
      refusal_code := p_missing_code;
      UPDATE idempotency_keys AS k SET error_code = p_missing_code
      WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
      RETURN;
    END IF;
    modified_before := v_found.modified_at;
    v_found := gql_wallet_expire_due(v_found, v_now, p_expiration_type, p_expiration_key_prefix);
    UPDATE wallets AS w SET balance = w.balance + p_delta, modified_at = v_now,
      next_expiry_at = CASE WHEN p_expires_at IS NOT NULL
                                 AND (w.next_expiry_at IS NULL OR p_expires_at < w.next_expiry_at)
                            THEN p_expires_at ELSE w.next_expiry_at END
    WHERE w.seq = v_found.seq AND w.balance - w.held_balance + p_delta >= p_floor
      AND w.balance + p_delta <= p_ceiling
    RETURNING w.* INTO wallet;
    IF wallet.seq IS NULL THEN
      outcome := 'refused';
      refusal_code := p_refused_code;
      wallet := v_found;
      UPDATE idempotency_keys AS k SET error_code = p_refused_code
      WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
      IF announce AND v_found.modified_at <> modified_before THEN
        PERFORM gql_wallet_announce(p_channel, v_found);
      END IF;
      RETURN;
    END IF;
  END IF;

  INSERT INTO wallet_transactions AS t (id, organization_id, wallet_seq, type, amount,
                                        balance_after, held_after, description, reference,
                                        idempotency_key, created_at, metadata)
  VALUES (p_entry_id, p_organization_id, wallet.seq, p_type, p_delta, wallet.balance,
          wallet.held_balance, p_description, p_reference, p_idempotency_key, v_now, p_metadata)
  RETURNING t.* INTO entry;
  IF p_block_id IS NOT NULL THEN
    INSERT INTO credit_blocks (id, organization_id, wallet_seq, source_seq, category, priority,
                               expires_at, burn_key, amount, remaining, created_at)
    VALUES (p_block_id, p_organization_id, wallet.seq, entry.seq, p_category, p_priority,
            p_expires_at, p_burn_key, p_delta, p_delta, v_now);
  ELSE
    -- What it spent can only make the soonest expiry later: the bound stays.
    PERFORM gql_wallet_draw(wallet.seq, -p_delta, entry.seq, NULL);
  END IF;
  UPDATE idempotency_keys AS k SET transaction_seq = entry.seq
  WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
  IF announce THEN
    PERFORM gql_wallet_announce(p_channel, wallet);
  END IF;
  outcome := 'applied';
END
$$;

-- Undoes (part of) the entry p_original_id with an entry of p_type: with p_restore (a refund),
-- credits back to the blocks it spent, the last one first; without (a reversal), credits taken
-- back from the block it created. p_amount null: all that is left to undo.
CREATE FUNCTION gql_wallet_undo(
  p_organization_id uuid,
  p_idempotency_key text,
  p_request text,
  p_type text,
  p_restore boolean,
  p_original_id uuid,
  p_amount bigint,
  p_undoable_types text[],
  p_ceiling bigint,
  p_description text,
  p_metadata text,
  p_entry_id uuid,
  p_channel text,
  p_not_found_code text,
  p_wrong_type_code text,
  p_exceeds_code text,
  p_limit_code text,
  p_expiration_type text,
  p_expiration_key_prefix text,
  OUT outcome text,
  OUT refusal_code text,
  OUT wallet wallets,
  OUT entry wallet_transactions
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  announce boolean := gql_wallet_feed_gate();
  v_now timestamptz;
  modified_before timestamptz;
  original wallet_transactions;
  v_block credit_blocks;
  undone bigint;
  cap bigint;
  v_amount bigint;
  a record;
  room bigint;
  taken bigint;
  left_to_give bigint;
  v_ordinal integer := 0;
BEGIN
  -- An unknown entry, or one of a type this cannot undo, stays so: refused before the key is
  -- claimed, writing nothing.
  SELECT t.* INTO original FROM wallet_transactions AS t
  WHERE t.id = p_original_id AND t.organization_id = p_organization_id;
  outcome := 'refused';
  IF original.seq IS NULL THEN
    refusal_code := p_not_found_code;
    RETURN;
  ELSIF NOT original.type = ANY (p_undoable_types) THEN
    refusal_code := p_wrong_type_code;
    RETURN;
  END IF;

  IF NOT gql_wallet_claim(p_organization_id, p_idempotency_key, p_request) THEN
    outcome := 'taken';
    RETURN;
  END IF;
  SELECT w.* INTO wallet FROM wallets AS w WHERE w.seq = original.wallet_seq FOR UPDATE;
  v_now := clock_timestamp();
  modified_before := wallet.modified_at;
  wallet := gql_wallet_expire_due(wallet, v_now, p_expiration_type, p_expiration_key_prefix);
  SELECT coalesce(sum(t.amount), 0) INTO undone FROM wallet_transactions AS t
  WHERE t.reverses_seq = original.seq;
  IF p_restore THEN
    cap := -original.amount - undone;
  ELSE
    -- The block the entry created; an entry older than the blocks: the wallet's oldest block.
    SELECT c.* INTO v_block FROM credit_blocks AS c WHERE c.source_seq = original.seq;
    IF v_block.seq IS NULL THEN
      SELECT c.* INTO v_block FROM credit_blocks AS c WHERE c.wallet_seq = wallet.seq
      ORDER BY c.seq LIMIT 1;
    END IF;
    -- Never what open holds reserve from it.
    cap := least(original.amount + undone, coalesce(v_block.remaining - v_block.held, 0));
  END IF;
  v_amount := coalesce(p_amount, cap);
  IF v_amount < 1 OR v_amount > cap THEN
    refusal_code := p_exceeds_code;
  ELSIF p_restore AND wallet.balance + v_amount > p_ceiling THEN
    refusal_code := p_limit_code;
  END IF;
  IF refusal_code IS NOT NULL THEN
    UPDATE idempotency_keys AS k SET error_code = refusal_code
    WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
    IF announce AND wallet.modified_at <> modified_before THEN
      PERFORM gql_wallet_announce(p_channel, wallet);
    END IF;
    RETURN;
  END IF;

  IF p_restore THEN
    INSERT INTO wallet_transactions AS t (id, organization_id, wallet_seq, type, amount,
                                          balance_after, held_after, description, reference,
                                          idempotency_key, created_at, reverses_seq, metadata)
    VALUES (p_entry_id, p_organization_id, wallet.seq, p_type, v_amount, wallet.balance + v_amount,
            wallet.held_balance, p_description, NULL, p_idempotency_key, v_now, original.seq,
            p_metadata)
    RETURNING t.* INTO entry;
    left_to_give := v_amount;
    -- What the charge took from each block, minus what its refunds gave back, the last first.
    FOR a IN
      SELECT s.block_seq, -s.amount - coalesce((
        SELECT sum(r.amount) FROM credit_allocations AS r
        JOIN wallet_transactions AS t ON t.seq = r.entry_seq
        WHERE t.reverses_seq = original.seq AND r.block_seq = s.block_seq
          AND r.entry_seq <> entry.seq), 0) AS room
      FROM credit_allocations AS s WHERE s.entry_seq = original.seq
      ORDER BY s.ordinal DESC
    LOOP
      EXIT WHEN left_to_give = 0;
      taken := least(a.room, left_to_give);
      CONTINUE WHEN taken <= 0;
      UPDATE credit_blocks SET remaining = remaining + taken WHERE seq = a.block_seq;
      INSERT INTO credit_allocations (entry_seq, ordinal, block_seq, amount)
      VALUES (entry.seq, v_ordinal, a.block_seq, taken);
      v_ordinal := v_ordinal + 1;
      left_to_give := left_to_give - taken;
    END LOOP;
    IF left_to_give > 0 THEN
      -- A charge older than the blocks: its credits go back to the wallet's oldest block.
      SELECT c.* INTO v_block FROM credit_blocks AS c WHERE c.wallet_seq = wallet.seq
      ORDER BY c.seq LIMIT 1;
      UPDATE credit_blocks SET remaining = remaining + left_to_give WHERE seq = v_block.seq;
      INSERT INTO credit_allocations (entry_seq, ordinal, block_seq, amount)
      VALUES (entry.seq, v_ordinal, v_block.seq, left_to_give);
    END IF;
    UPDATE wallets AS w SET balance = w.balance + v_amount, modified_at = v_now,
      next_expiry_at = gql_wallet_next_expiry(w.seq)
    WHERE w.seq = wallet.seq
    RETURNING w.* INTO wallet;
    -- Credits given back to a block that has expired since expire at once.
    wallet := gql_wallet_expire_due(wallet, v_now, p_expiration_type, p_expiration_key_prefix);
  ELSE
    INSERT INTO wallet_transactions AS t (id, organization_id, wallet_seq, type, amount,
                                          balance_after, held_after, description, reference,
                                          idempotency_key, created_at, reverses_seq, metadata)
    VALUES (p_entry_id, p_organization_id, wallet.seq, p_type, -v_amount,
            wallet.balance - v_amount, wallet.held_balance, p_description, NULL,
            p_idempotency_key, v_now, original.seq, p_metadata)
    RETURNING t.* INTO entry;
    UPDATE credit_blocks SET remaining = remaining - v_amount WHERE seq = v_block.seq;
    INSERT INTO credit_allocations (entry_seq, ordinal, block_seq, amount)
    VALUES (entry.seq, 0, v_block.seq, -v_amount);
    UPDATE wallets AS w SET balance = w.balance - v_amount, modified_at = v_now,
      next_expiry_at = gql_wallet_next_expiry(w.seq)
    WHERE w.seq = wallet.seq
    RETURNING w.* INTO wallet;
  END IF;
  UPDATE idempotency_keys AS k SET transaction_seq = entry.seq
  WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
  IF announce THEN
    PERFORM gql_wallet_announce(p_channel, wallet);
  END IF;
  outcome := 'applied';
END
$$;

-- Writes the due expiries of the given wallets, each under its row lock, locking them in the
-- array's order (the caller's: the order group commits lock wallets in); with p_skip_locked a
-- wallet that another transaction holds is skipped (the sweeper: that one writes them). Returns
-- the wallets it locked, as they are after.
CREATE FUNCTION gql_wallet_expire(p_wallet_seqs bigint[], p_skip_locked boolean, p_channel text,
                                  p_expiration_type text, p_expiration_key_prefix text)
RETURNS SETOF wallets
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  announce boolean := gql_wallet_feed_gate();
  w wallets;
  after wallets;
BEGIN
  FOR w IN
    SELECT x.* FROM unnest(p_wallet_seqs) WITH ORDINALITY AS u(seq, i)
    JOIN wallets AS x ON x.seq = u.seq
    ORDER BY u.i
  LOOP
    IF p_skip_locked THEN
      SELECT x.* INTO w FROM wallets AS x WHERE x.seq = w.seq FOR UPDATE SKIP LOCKED;
      CONTINUE WHEN NOT FOUND;
    ELSE
      SELECT x.* INTO w FROM wallets AS x WHERE x.seq = w.seq FOR UPDATE;
    END IF;
    after := gql_wallet_expire_due(w, clock_timestamp(), p_expiration_type,
                                   p_expiration_key_prefix);
    IF announce AND after.modified_at <> w.modified_at THEN
      PERFORM gql_wallet_announce(p_channel, after);
    END IF;
    RETURN NEXT after;
  END LOOP;
END
$$;

-- Reserves p_amount of the wallet's available credits for a new hold, in burn-down order, until
-- p_seconds from now by the database's clock. Refused when there is no wallet or the available
-- balance does not cover it. Due expiries of the wallet are written first.
CREATE FUNCTION gql_wallet_create_hold(
  p_organization_id uuid,
  p_idempotency_key text,
  p_request text,
  p_customer_id text,
  p_currency text,
  p_amount bigint,
  p_seconds integer,
  p_description text,
  p_reference text,
  p_metadata text,
  p_hold_id uuid,
  p_channel text,
  p_missing_code text,
  p_refused_code text,
  p_expiration_type text,
  p_expiration_key_prefix text,
  OUT outcome text,
  OUT refusal_code text,
  OUT wallet wallets,
  OUT entry wallet_transactions, -- none: a hold writes no ledger entry
  OUT hold wallet_holds
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  announce boolean := gql_wallet_feed_gate();
  v_now timestamptz;
  modified_before timestamptz;
  v_found wallets;
BEGIN
  IF NOT gql_wallet_claim(p_organization_id, p_idempotency_key, p_request) THEN
    outcome := 'taken';
    RETURN;
  END IF;

  v_now := clock_timestamp();
  -- The common case in one statement, as a charge's: the wallet exists, none of its expiries is
  -- due, and its available balance covers the hold. modifiedAt moves strictly forward, even if
  -- another change took the lock after this clock was read: subscribers order changes that
  -- carry no entry by it.
  UPDATE wallets AS w SET held_balance = w.held_balance + p_amount,
    modified_at = greatest(v_now, w.modified_at + interval '1 microsecond'),
    next_expiry_at = least(w.next_expiry_at, v_now + make_interval(secs => p_seconds))
  WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
    AND w.currency = p_currency AND w.balance - w.held_balance >= p_amount
    AND (w.next_expiry_at IS NULL OR w.next_expiry_at > v_now)
  RETURNING w.* INTO wallet;
  IF wallet.seq IS NULL THEN
    -- Which condition failed: no wallet, a due expiry (write it, then try again), or the
    -- available balance. The lock first, then the clock.
    SELECT w.* INTO v_found FROM wallets AS w
    WHERE w.organization_id = p_organization_id AND w.customer_id = p_customer_id
      AND w.currency = p_currency
    FOR UPDATE;
    outcome := 'refused';
    IF v_found.seq IS NULL THEN
      refusal_code := p_missing_code;
      UPDATE idempotency_keys AS k SET error_code = p_missing_code
      WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
      RETURN;
    END IF;
    v_now := clock_timestamp();
    modified_before := v_found.modified_at;
    v_found := gql_wallet_expire_due(v_found, v_now, p_expiration_type, p_expiration_key_prefix);
    UPDATE wallets AS w SET held_balance = w.held_balance + p_amount, modified_at = v_now,
      next_expiry_at = least(w.next_expiry_at, v_now + make_interval(secs => p_seconds))
    WHERE w.seq = v_found.seq AND w.balance - w.held_balance >= p_amount
    RETURNING w.* INTO wallet;
    IF wallet.seq IS NULL THEN
      refusal_code := p_refused_code;
      wallet := v_found;
      UPDATE idempotency_keys AS k SET error_code = p_refused_code
      WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
      IF announce AND v_found.modified_at <> modified_before THEN
        PERFORM gql_wallet_announce(p_channel, v_found);
      END IF;
      RETURN;
    END IF;
  END IF;

  INSERT INTO wallet_holds AS x (id, organization_id, wallet_seq, amount, captured_amount, status,
                                 expires_at, description, reference, idempotency_key, created_at,
                                 metadata)
  VALUES (p_hold_id, p_organization_id, wallet.seq, p_amount, 0, 'OPEN',
          v_now + make_interval(secs => p_seconds), p_description, p_reference,
          p_idempotency_key, v_now, p_metadata)
  RETURNING x.* INTO hold;
  PERFORM gql_wallet_draw(wallet.seq, p_amount, NULL, hold.seq);
  UPDATE idempotency_keys AS k SET hold_seq = hold.seq
  WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
  IF announce THEN
    PERFORM gql_wallet_announce(p_channel, wallet);
  END IF;
  outcome := 'applied';
END
$$;

-- Resolves the open hold p_hold_id: with p_capture, a CAPTURE entry of p_amount (null: the whole
-- hold) spent from the blocks it reserved in burn-down order, the rest released; without, a void
-- that releases it all. A hold resolved already, or expired by the database's clock, is refused
-- with the code of its state. Due expiries of the wallet are written first, and credits released
-- from blocks that have expired since expire at once.
CREATE FUNCTION gql_wallet_resolve_hold(
  p_organization_id uuid,
  p_idempotency_key text,
  p_request text,
  p_hold_id uuid,
  p_capture boolean,
  p_amount bigint,
  p_description text,
  p_metadata text,
  p_entry_id uuid,
  p_channel text,
  p_capture_type text,
  p_not_found_code text,
  p_captured_code text,
  p_voided_code text,
  p_expired_code text,
  p_exceeds_code text,
  p_expiration_type text,
  p_expiration_key_prefix text,
  OUT outcome text,
  OUT refusal_code text,
  OUT wallet wallets,
  OUT entry wallet_transactions,
  OUT hold wallet_holds
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  announce boolean := gql_wallet_feed_gate();
  v_now timestamptz;
  modified_before timestamptz;
  v_amount bigint := 0;
  r record;
  left_to_take bigint;
  taken bigint;
  v_ordinal integer := 0;
  v_soonest timestamptz; -- the soonest expiry among the blocks that got credits back
BEGIN
  -- An unknown hold stays so: refused before the key is claimed, writing nothing.
  SELECT x.* INTO hold FROM wallet_holds AS x
  WHERE x.id = p_hold_id AND x.organization_id = p_organization_id;
  outcome := 'refused';
  IF hold.seq IS NULL THEN
    refusal_code := p_not_found_code;
    hold := NULL;
    RETURN;
  END IF;
  IF NOT gql_wallet_claim(p_organization_id, p_idempotency_key, p_request) THEN
    outcome := 'taken';
    RETURN;
  END IF;
  SELECT w.* INTO wallet FROM wallets AS w WHERE w.seq = hold.wallet_seq FOR UPDATE;
  v_now := clock_timestamp();
  modified_before := wallet.modified_at;
  wallet := gql_wallet_expire_due(wallet, v_now, p_expiration_type, p_expiration_key_prefix);
  -- Read again under the wallet's lock, which every change of a hold takes: the first read was
  -- before it, and another transaction may have resolved or expired the hold since.
  SELECT x.* INTO hold FROM wallet_holds AS x WHERE x.seq = hold.seq;
  IF hold.status = 'CAPTURED' THEN
    refusal_code := p_captured_code;
  ELSIF hold.status = 'VOIDED' THEN
    refusal_code := p_voided_code;
  ELSIF hold.status <> 'OPEN' THEN
    refusal_code := p_expired_code;
  ELSIF p_capture THEN
    v_amount := coalesce(p_amount, hold.amount);
    IF v_amount > hold.amount THEN
      refusal_code := p_exceeds_code;
    END IF;
  END IF;
  IF refusal_code IS NOT NULL THEN
    UPDATE idempotency_keys AS k SET error_code = refusal_code, hold_seq = hold.seq
    WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
    IF announce AND wallet.modified_at <> modified_before THEN
      PERFORM gql_wallet_announce(p_channel, wallet);
    END IF;
    RETURN;
  END IF;

  IF p_capture THEN
    INSERT INTO wallet_transactions AS t (id, organization_id, wallet_seq, type, amount,
                                          balance_after, held_after, description, reference,
                                          idempotency_key, created_at, metadata)
    VALUES (p_entry_id, p_organization_id, wallet.seq, p_capture_type, -v_amount,
            wallet.balance - v_amount, wallet.held_balance - hold.amount, p_description,
            hold.reference, p_idempotency_key, v_now, coalesce(p_metadata, hold.metadata))
    RETURNING t.* INTO entry;
    left_to_take := v_amount;
    FOR r IN
      SELECT s.block_seq, s.amount, c.expires_at FROM hold_reservations AS s
      JOIN credit_blocks AS c ON c.seq = s.block_seq
      WHERE s.hold_seq = hold.seq
      ORDER BY c.burn_key, c.seq
    LOOP
      taken := least(r.amount, left_to_take);
      IF taken < r.amount THEN
        v_soonest := least(v_soonest, r.expires_at);
      END IF;
      UPDATE credit_blocks SET held = held - r.amount, remaining = remaining - taken
      WHERE seq = r.block_seq;
      IF taken > 0 THEN
        INSERT INTO credit_allocations (entry_seq, ordinal, block_seq, amount)
        VALUES (entry.seq, v_ordinal, r.block_seq, -taken);
        v_ordinal := v_ordinal + 1;
        left_to_take := left_to_take - taken;
      END IF;
    END LOOP;
  ELSE
    SELECT min(c.expires_at) INTO v_soonest FROM hold_reservations AS s
    JOIN credit_blocks AS c ON c.seq = s.block_seq
    WHERE s.hold_seq = hold.seq;
    PERFORM gql_wallet_release(hold.seq);
  END IF;
  -- Unresolved, not status = 'OPEN': that would let the planner walk the partial index of open
  -- holds, and all the entries it still has for holds resolved since its last vacuum.
  UPDATE wallet_holds AS x
  SET status = CASE WHEN p_capture THEN 'CAPTURED' ELSE 'VOIDED' END,
      captured_amount = v_amount, resolved_at = v_now, capture_seq = entry.seq
  WHERE x.seq = hold.seq AND x.resolved_at IS NULL
  RETURNING x.* INTO hold;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'hold % was not open under its wallet''s lock', p_hold_id;
  END IF;
  UPDATE wallets AS w SET balance = w.balance - v_amount,
    held_balance = w.held_balance - hold.amount, modified_at = v_now,
    next_expiry_at = least(w.next_expiry_at, v_soonest)
  WHERE w.seq = wallet.seq
  RETURNING w.* INTO wallet;
  -- Credits released from a block that has expired since expire at once.
  wallet := gql_wallet_expire_due(wallet, v_now, p_expiration_type, p_expiration_key_prefix);
  UPDATE idempotency_keys AS k SET transaction_seq = entry.seq, hold_seq = hold.seq
  WHERE k.organization_id = p_organization_id AND k.key = p_idempotency_key;
  IF announce THEN
    PERFORM gql_wallet_announce(p_channel, wallet);
  END IF;
  outcome := 'applied';
END
$$;
