"""The five graph nodes: plan, approve, act, observe, halt."""
