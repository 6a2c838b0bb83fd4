"""Replies: what callers text back, kept, linked to what they answer, and obeyed.

Owns the keyword matching (keywords: STOP, START, HELP and the office's own words, folded
for case, width, accents and punctuation) and the inbox (inbox: one transaction per
inbound text: the reply, its link to the text and call it answers, an opt-out or opt-in
with its audit line, the cancelling of texts still waiting, and the one confirmation or
help answer, written into the outbox).

May import: the leaves, decide (numbers, rules, caps, templates), outbox (to write an
answer in the same transaction), store, gsm (to count an answer's parts).
"""
