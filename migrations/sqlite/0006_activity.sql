-- DAU/MAU in embedded mode: the HyperLogLog registers of each UTC day, stored sparsely
-- (a row only for a register above zero). Redis holds these in production.
CREATE TABLE activity_registers (
    day  TEXT    NOT NULL, -- yyyy-mm-dd
    idx  INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    PRIMARY KEY (day, idx)
) WITHOUT ROWID;
