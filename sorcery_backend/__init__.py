"""Sorcery realtime backend: schema service, apply/plan/export, change pusher."""
