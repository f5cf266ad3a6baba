"""Penstock: fast, cheap, observable AI inference pipelines on Kubernetes."""

__version__ = "0.1.0"
