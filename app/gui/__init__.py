"""The PySide6 desktop app. It uses the launcher core (roost.core) and the engine through
roost.core.runtime, and holds no model math or download logic of its own."""
