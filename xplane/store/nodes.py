"""Nodes, their latest state and metric samples (owned by the nodes API work)."""
