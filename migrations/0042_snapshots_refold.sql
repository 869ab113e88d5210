-- Until this migration, a snapshot taken as a command committed held that command's events twice:
-- cqrs-es's EventSink had already applied them to the state the command decided on, and the
-- commit applied them again before writing it (domain/src/store/snapshot.rs). Most events set
-- fields, so applying one twice changed nothing, but an event that adds to a list (a failed
-- payment, a pending refund, a compartment's window) was in such a snapshot twice.
--
-- Snapshots are a cache (migration 0013): emptying the table makes the next load of each
-- aggregate fold its events and write a correct snapshot. Nothing else reads this table.
DELETE FROM snapshots;
