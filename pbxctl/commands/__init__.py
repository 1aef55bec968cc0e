"""pbxctl command groups, one module each."""
