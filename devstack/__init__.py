"""Embedded development/test stack: private Postgres, Asterisk in a Debian sid chroot, sipp."""
