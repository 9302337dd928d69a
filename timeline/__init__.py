"""The core: normalised events, contacts, identities, tickets, their models and store.

Imports nothing else of Switchboard's; every other package builds on it.
"""
