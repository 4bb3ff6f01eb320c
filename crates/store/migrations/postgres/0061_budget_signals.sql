-- Budget signals sent: each (tenant, signal) once per month, marked in the transaction that writes
-- its operators' event and its outbox event.
CREATE TABLE budget_signals (
    tenant        TEXT NOT NULL,
    signal        TEXT NOT NULL,
    period_start  BIGINT NOT NULL,
    at            BIGINT NOT NULL,
    PRIMARY KEY (tenant, signal, period_start)
);
