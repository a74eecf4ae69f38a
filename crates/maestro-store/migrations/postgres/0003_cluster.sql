-- Cluster mode (DESIGN.md "Scale-out"): an execution lease is either queued (a
-- pending execution waiting for a slot on its node) or active (one of the
-- cluster's maxConcurrentWorkflows slots). Leases named maestro:* (leader
-- election, the single-server guard) stay inactive.
ALTER TABLE leases ADD COLUMN active BOOLEAN NOT NULL DEFAULT false;
-- Renewal, fencing and release work on one node's leases.
CREATE INDEX leases_node ON leases (node_id, execution_id);
