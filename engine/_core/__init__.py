"""What a pipeline is: its definition, records, plug-in protocols, errors and clock.

Nothing here runs anything; :mod:`riprap._runtime` executes what is defined here.
"""
