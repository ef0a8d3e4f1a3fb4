"""Concrete instrument drivers, installed as ``qkdd.drivers``.

Drivers speak their instrument's command set and implement the interfaces of
``qkdd.instruments.interfaces``; they know nothing of the QKD protocol.
"""
