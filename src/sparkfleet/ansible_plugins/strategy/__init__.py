"""Strategy plugins (loaded by Ansible from this directory through ANSIBLE_STRATEGY_PLUGINS)."""
