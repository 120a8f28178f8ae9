"""pytest plugin for qkd-hil (thin: options, markers, hooks; logic lives in hil/)."""
