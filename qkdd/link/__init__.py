"""The link engine: protocol parameters, state machine, peer channel, calibration, alarms."""
