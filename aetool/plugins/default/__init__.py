"""aetool's built-in plugins: ordinary plugin modules, registered like any third-party one."""
