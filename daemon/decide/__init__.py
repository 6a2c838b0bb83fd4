"""Deciding: text this caller or not, and why; with which words, and when.

Owns the policy (`decide`: a pure function of a finished call, facts from the store and
the config, returning send or suppress with one reason word), caller numbers (E.164,
number types), business hours and holidays, and the templates with their merge fields.

May import: the leaves (model, config, errors, clock) and gsm's pure SMS encoders (to
count parts). No I/O, no storage, no asyncio.
"""
