"""Sending webhooks: one sender, signatures, the address guard and its transport, secrets at
rest, users' endpoints."""
