"""The PySide6 desktop app. It uses the launcher core (app.core) and the engine through
app.core.runtime, and holds no model math or download logic of its own."""
