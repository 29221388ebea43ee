"""Raft: durable storage (:mod:`keyval.raft.storage`) and consensus built on it."""
