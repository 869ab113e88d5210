-- Locker doors: each compartment's door is opened by a device of kind 'locker' at its site,
-- wired at installation (CompartmentInstalled.door) or later (CompartmentDoorWired).
-- Compartments installed before this have no door until an operator wires one.
ALTER TABLE locker_compartments
    ADD COLUMN door_device uuid;

COMMENT ON COLUMN locker_compartments.door_device IS
    'the locker device that opens this compartment''s door (device_status.device_id), if wired';
