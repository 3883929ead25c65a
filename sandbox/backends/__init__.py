"""The execution backends behind one protocol (base.py): Monty (monty/) and containers
(container/). A backend gets an already-planned RunSpec and returns a result; it knows
nothing of gRPC, policies, tenants or the journal."""
