"""The instrument layer: interfaces, transports, the driver registry and simulated twins.

The link engine talks to instruments only through the interfaces in
:mod:`qkdd.instruments.interfaces`; concrete drivers (``qkdd.drivers``) and
third-party packages are found by name through the registry.
"""
