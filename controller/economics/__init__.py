"""The owner's economics: tariffs and pushed prices, battery wear cost, the planner, receipts.

A pure room beside the core (docs/architecture.md): no IO, no clock reads, no imports from the
links, the wiring or the core. The wiring (controller/planning.py) feeds it snapshots and passes
the plan's power for now to the core as the ``optimize`` fallback's request: the planner
proposes, the core decides.
"""
