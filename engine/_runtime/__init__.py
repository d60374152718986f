"""How a pipeline runs: segments between bounded channels, acks, routing, the sink feed.

It builds on :mod:`riprap._core` and publishes what it does through
:mod:`riprap.observability`; nothing below it imports it.
"""
