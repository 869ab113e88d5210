-- When a device's door last opened or closed. The sweeper settles a shopping session whose
-- cabinet closed its door without reporting the weights after; it used to measure that wait from
-- the device's last event, so any later event (the cabinet going offline, a fault) restarted the
-- wait and the session could stay open. NULL on rows written before this column: the sweeper falls
-- back to last_event_at for them, and a rebuild fills it.
ALTER TABLE device_status ADD COLUMN door_changed_at timestamptz;
