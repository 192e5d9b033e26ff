"""Replaying the reference fixtures of the original SUPIR through this engine (used by ``verify``).

Kept apart from the production code it checks: the samplers and the pipeline never import it.
"""
