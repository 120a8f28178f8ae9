"""The Prometheus alert rules shipped with qkd-hil (package data)."""

from pathlib import Path

RULES_FILE = Path(__file__).with_name("qkd-hil.rules.yml")
