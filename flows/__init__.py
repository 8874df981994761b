"""Lifecycle flows: one module per action, each one @flow taking one typed spec."""
