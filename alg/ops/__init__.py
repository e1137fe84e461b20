"""What the admin configures and sees: settings, rules, metrics, HTTP endpoints, logs.

Handed what it reports on; imports nothing from alg.gateway.
"""
