"""The scenario files the routing store must decide like the file: the shared routing and trunks
folders and our own trunks folder."""

from __future__ import annotations

from pathlib import Path

OWN = Path(__file__).parent / "scenarios"


def store_scenarios(shared_dir: Path) -> list[Path]:
    folders = (shared_dir / "scenarios" / "routing", shared_dir / "scenarios" / "trunks", OWN / "trunks")
    return [p for folder in folders for p in sorted(folder.glob("*.yaml"))]
