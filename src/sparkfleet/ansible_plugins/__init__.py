"""Ansible plugins the wrapper enables for its runs (see :mod:`sparkfleet.fleet`)."""
