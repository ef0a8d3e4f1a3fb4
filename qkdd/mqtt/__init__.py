"""MQTT: telemetry, alarms and sealed key delivery."""
