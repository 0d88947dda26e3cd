"""The launcher's Qt-free core: machine probe, model advice, downloads. Usable from the CLI and GUI."""
