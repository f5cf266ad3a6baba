"""What crosses a process boundary between the operator, the gateway, the router and
``penstock dev``: wire names (ports, headers, labels, environment prefixes) and the documents
one side writes and the other reads. Each is spelled here once; both sides import it.

Layering: the contract imports only ``penstock.api``; every other part may import it.
"""
